"""Bundled models, addressed by name, and the recipes that rebuild them.

Models ship as single ``.safetensors`` files under ``resources/models`` inside the installed package.
Nothing is downloaded at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint

BUNDLED_MODELS = {"brain": "brain.safetensors", "click": "click.safetensors", "phantom": "phantom.safetensors"}
ALIASES = {"default": "brain"}

def resources_dir() -> Path:
    """The ``resources`` folder inside the installed package."""
    return Path(__file__).resolve().parent.parent / "resources"


def model_names() -> tuple[str, ...]:
    return tuple(BUNDLED_MODELS) + tuple(ALIASES)


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """Path of a bundled model (by name or alias) or of a checkpoint file."""
    name = str(name_or_path)
    canonical = ALIASES.get(name, name)
    if canonical in BUNDLED_MODELS:
        path = resources_dir() / "models" / BUNDLED_MODELS[canonical]
        if not path.is_file():
            raise CheckpointError(
                f"bundled model '{name}' is missing from the installation ({path}); rebuild it with "
                f"`aunet build-model {canonical}`"
            )
        return path
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    raise CheckpointError(
        f"unknown model '{name}': not a bundled model ({', '.join(model_names())}) and no such file"
    )


def load_model(name_or_path: str | os.PathLike) -> Checkpoint:
    """Load a bundled model by name (``brain``, ``phantom``, ``default``) or a checkpoint file by path."""
    return load_checkpoint(resolve_model_path(name_or_path))
