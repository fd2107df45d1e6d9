"""Checkpoints: one ``.safetensors`` file holding the weights plus JSON metadata.

The metadata holds the model config (architecture, class names, normalisation, training spacing), the
training history, data provenance, a model card and the library versions that wrote it. Loading never
unpickles anything: a file that is not a valid checkpoint raises :class:`CheckpointError` naming the file
and what is wrong. Saving writes a temporary file next to the target and renames it (atomic).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from .._files import write_atomic as _write_atomic
from .config import ModelConfig
from .model import AttentionUNet

FORMAT = "napari-aunet/1"


class CheckpointError(ValueError):
    """A file that cannot be used as a napari-aunet checkpoint."""


@dataclass
class Checkpoint:
    """Everything a checkpoint file holds."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    history: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    model_card: str = ""
    versions: dict = field(default_factory=dict)
    path: Path | None = None

    def build_model(self) -> AttentionUNet:
        model = AttentionUNet(self.config)
        model.load_state_dict(self.state_dict, strict=True)
        model.eval()
        return model

    def describe(self) -> dict:
        """JSON-ready summary (what ``aunet info`` prints)."""
        from .model import count_parameters

        return {
            "path": str(self.path) if self.path else None,
            "format": FORMAT,
            "config": json.loads(self.config.to_json()),
            "parameters": count_parameters(self.build_model()),
            "model_card": self.model_card,
            "history": self.history,
            "provenance": self.provenance,
            "versions": self.versions,
        }


def _versions() -> dict:
    from .. import __version__

    return {"napari_aunet": __version__, "torch": torch.__version__}


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    config: ModelConfig | None = None,
    *,
    history: dict | None = None,
    provenance: dict | None = None,
    model_card: str = "",
) -> Path:
    """Write ``model``'s weights and metadata to ``path`` atomically; returns the path."""
    path = Path(path)
    config = config or model.config
    # Contiguous, CPU, unfused copies: the file must load into a fresh model on any device.
    tensors = {
        name: value.detach().to("cpu").contiguous().clone() for name, value in model.state_dict().items()
    }
    metadata = {
        "format": FORMAT,
        "config": config.to_json(),
        "history": json.dumps(history or {}),
        "provenance": json.dumps(provenance or {}),
        "model_card": model_card,
        "versions": json.dumps(_versions()),
    }
    payload = safetensors_bytes(tensors, metadata=metadata)
    write_atomic(path, payload)
    return path


def write_atomic(path: Path, payload: bytes) -> None:
    """Write bytes atomically (temporary file + rename); a missing folder is a :class:`CheckpointError`."""
    try:
        _write_atomic(path, payload)
    except FileNotFoundError as error:
        raise CheckpointError(str(error)) from error


def _sniff(path: Path) -> str:
    with open(path, "rb") as stream:
        head = stream.read(9)
    if head[:2] == b"PK":
        return "it is a zip archive (a pickled PyTorch file?); napari-aunet never unpickles files"
    if len(head) == 9 and head[8:9] == b"{":  # an 8-byte header length, then the JSON header
        return "it is a damaged or truncated safetensors file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it is a Python pickle; napari-aunet never unpickles files"
    if len(head) < 8:
        return "it is empty or truncated"
    return "it is not a safetensors file"


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` without unpickling anything."""
    path = Path(path)
    name = f"'{path}'"
    if not path.is_file():
        raise CheckpointError(f"cannot load checkpoint {name}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            metadata = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot load checkpoint {name}: {_sniff(path)}") from error

    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"cannot load checkpoint {name}: a safetensors file, but not a napari-aunet checkpoint "
            f"(metadata 'format' is {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        config = ModelConfig.from_json(metadata["config"])
        history = json.loads(metadata.get("history", "{}"))
        provenance = json.loads(metadata.get("provenance", "{}"))
        versions = json.loads(metadata.get("versions", "{}"))
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"cannot load checkpoint {name}: its config metadata is invalid ({error})") from error

    expected = AttentionUNet(config).state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"cannot load checkpoint {name}: weights do not match its config ({detail})")
    for key, reference in expected.items():
        tensor = tensors[key]
        if tensor.shape != reference.shape:
            raise CheckpointError(
                f"cannot load checkpoint {name}: weight '{key}' has shape {tuple(tensor.shape)}, "
                f"its config needs {tuple(reference.shape)}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"cannot load checkpoint {name}: weight '{key}' holds NaN or infinite values")
        tensors[key] = tensor.to(reference.dtype)
    return Checkpoint(
        config=config,
        state_dict=tensors,
        history=history if isinstance(history, dict) else {},
        provenance=provenance if isinstance(provenance, dict) else {},
        model_card=metadata.get("model_card", ""),
        versions=versions if isinstance(versions, dict) else {},
        path=path,
    )
