"""int8 inference on CPUs through ONNX Runtime (the optional extra ``[int8]``: onnxruntime + onnx).

The model (BatchNorm folded, :func:`~napari_aunet.engine.model.fused_for_inference`) is exported to ONNX with its
softmax and every attention map as outputs, then quantized statically: weights int8 per output channel, activations
uint8 with ranges calibrated on slices (2D) or windows (3D) of the scan about to be segmented, already normalised,
so the ranges are this scan's. ONNX Runtime runs the int8 convolutions with AVX-512 VNNI (or AMX) where the CPU has
them. Measured against fp32 (docs/benchmarks.md) — labels, held-out Dice and time; nothing here is the default.

Calibrating (export, a pass over the samples, quantization) takes about as long as the int8 network saves on one
brain scan, so the quantized model is kept in the user's cache folder (``AUNET_CACHE_DIR``, else the platform's:
``~/.cache/napari-aunet/int8`` on Linux), one file per model (key: the weights, the configuration and the ONNX
Runtime version): the first scan segmented with a model calibrates it, later scans and processes reuse it. Delete
the file (or the folder) to calibrate again. The weights on disk never change.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .._files import write_atomic
from .model import AttentionUNet, fused_for_inference

#: slices (2D) or windows (3D) of the scan the activation ranges are calibrated on, evenly spaced through it
CALIBRATION_SAMPLES = {2: 12, 3: 4}
#: at most this many voxels along each axis of a sample (its centre): the calibrator holds every layer's output for
#: all samples at once (16 whole 184x224 slices: 1.7 GB)
CALIBRATION_SIDE = {2: 160, 3: 64}
CALIBRATION_BATCH = 4
#: bump when the export or the quantization recipe changes: older cached files are then not used
RECIPE = 3
CACHE_ENV = "AUNET_CACHE_DIR"
EXTRA_HINT = "int8 needs ONNX Runtime: pip install 'napari-aunet[int8]' (onnxruntime and onnx)"


class Int8Unavailable(RuntimeError):
    """ONNX Runtime (or onnx) is not installed: the message says what to install."""


def available() -> bool:
    """Whether the [int8] extra is installed (found, not imported: cheap enough for a widget's choices)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def require() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise Int8Unavailable(EXTRA_HINT) from error


class _Outputs(torch.nn.Module):
    """The network as ONNX sees it: class probabilities, then the attention map of each gated level in order."""

    def __init__(self, network: AttentionUNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor):
        logits, attention = self.network(x, return_attention=True)
        return (torch.softmax(logits, dim=1), *(attention[level] for level in sorted(attention)))


class _Batches:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of input arrays."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"x": batch}


def quantized_onnx(model: AttentionUNet, calibration: np.ndarray) -> bytes:
    """The int8 ONNX model of ``model`` (BatchNorm folded, QDQ format, weights int8 per output channel, activations
    uint8 with ranges from ``calibration``: ``(N, C, *spatial)`` float32 network inputs, each spatial size a multiple
    of the model's ``size_multiple``). The ranges keep the 0.001-99.999th percentiles of each activation, and the
    first convolution (raw intensities in) and the head (class scores out) stay float: measured on the MNI T1, labels
    agreement with fp32 0.9943 (grey/white 0.9965/0.9972) against 0.9921 with min/max ranges and everything
    quantized, at the same speed (0.48x ONNX Runtime's fp32)."""
    require()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    network = _Outputs(fused_for_inference(model).cpu()).eval()
    names = {0: "batch", **{2 + k: f"size{k}" for k in range(model.config.spatial_dims)}}
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    exported = io.BytesIO()
    with torch.inference_mode(), _quiet():
        torch.onnx.export(network, (torch.from_numpy(calibration[:1]),), exported, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": names}, opset_version=17)
    batches = [calibration[i : i + CALIBRATION_BATCH] for i in range(0, len(calibration), CALIBRATION_BATCH)]
    convolutions = [node.name for node in onnx.load_from_string(exported.getvalue()).graph.node
                    if node.op_type == "Conv"]
    with tempfile.TemporaryDirectory(prefix="aunet-int8-") as folder, _quiet():
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(exported.getvalue())
        quantize_static(str(source), str(target), _Batches(batches), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.Percentile,
                        nodes_to_exclude=[convolutions[0], convolutions[-1]])
        return target.read_bytes()


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's tracer warnings (the model's shape checks, traced once), the quantizer's advice to
    pre-process the graph and the calibrator's progress prints while they run."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


class Int8Network:
    """An int8 ONNX model (:func:`quantized_onnx`) run by ONNX Runtime on ``threads`` threads. :meth:`run` pads
    its input the way the torch model does (edge values, far end) and crops the outputs back, so it takes the
    same batches as the torch model."""

    def __init__(self, onnx_bytes: bytes, config, threads: int = 1) -> None:
        require()
        import onnxruntime

        self.config = config
        self.levels = tuple(sorted(config.gated_levels))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Probabilities ``(N, C, *spatial)`` float32 and attention ``{level: (N, *grid)}`` float32."""
        spatial = batch.shape[2:]
        outputs = self.session.run(None, {"x": padded(batch, self.config.size_multiple)})
        probabilities = outputs[0][(slice(None), slice(None), *(slice(0, n) for n in spatial))]
        attention = {}
        for level, psi in zip(self.levels, outputs[1:], strict=True):
            factor = 2 ** (level - 1)
            attention[level] = psi[(slice(None), 0, *(slice(0, -(-n // factor)) for n in spatial))]
        return np.ascontiguousarray(probabilities), attention


def cache_folder() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured) / "int8"
    import platformdirs

    return platformdirs.user_cache_path("napari-aunet", appauthor=False) / "int8"


def model_key(model: AttentionUNet) -> str:
    """What the quantized file depends on: every weight and buffer, the configuration, this module's recipe and
    the ONNX Runtime version."""
    import onnxruntime

    digest = hashlib.sha256()
    digest.update(f"{RECIPE}|{onnxruntime.__version__}|{model.config.to_json()}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def cached_network(model: AttentionUNet, calibration: Callable[[], np.ndarray], threads: int = 1) -> Int8Network:
    """The int8 network of ``model``: read from the cache folder, or quantized with ``calibration()``'s samples and
    stored there (atomically; a folder that cannot be written only loses the cache). A model with a module's
    ``forward`` replaced (a gate forced open or closed) is quantized afresh and never cached."""
    require()
    forced = any("forward" in module.__dict__ for module in model.modules())
    path = None if forced else cache_folder() / f"{model_key(model)}.onnx"
    if path is not None and path.is_file():
        try:
            return Int8Network(path.read_bytes(), model.config, threads)
        except Exception:  # a damaged cache file: quantize again below and replace it
            pass
    payload = quantized_onnx(model, calibration())
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, payload)
        except OSError:
            pass
    return Int8Network(payload, model.config, threads)


def calibration_inputs(volume: np.ndarray, transform, *, mode: str, axis: int, multiple: int,
                       roi_size: tuple[int, ...] | None = None) -> np.ndarray:
    """Evenly spaced samples of ``volume`` (raw scan; ``transform`` normalises) for calibration: the central part
    (:data:`CALIBRATION_SIDE`) of 2D slices along ``axis``, or 3D windows of ``roi_size`` (at most that side) along
    the volume's diagonal; padded (edge) to ``multiple``."""
    if mode == "2d":
        if volume.ndim == 2:
            volume, axis = volume[None], 0
        axis %= volume.ndim
        count = min(CALIBRATION_SAMPLES[2], volume.shape[axis])
        picks = np.linspace(0, volume.shape[axis] - 1, count).round().astype(int)
        slices = np.moveaxis(volume, axis, 0)
        central = tuple(_central(n, CALIBRATION_SIDE[2]) for n in slices.shape[1:])
        samples = transform(slices[(picks, *central)])[:, None]
    else:
        roi = tuple(min(r, n, CALIBRATION_SIDE[3]) for r, n in zip(roi_size, volume.shape, strict=True))
        samples = []
        for t in np.linspace(0.0, 1.0, CALIBRATION_SAMPLES[3]):
            start = tuple(int(round(t * (n - r))) for n, r in zip(volume.shape, roi, strict=True))
            window = tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True))
            samples.append(transform(volume[window])[None])
        samples = np.stack(samples)
    return padded(samples, multiple)


def _central(length: int, side: int) -> slice:
    start = max(0, (length - side) // 2)
    return slice(start, start + min(length, side))


def padded(batch: np.ndarray, multiple: int) -> np.ndarray:
    """``(N, C, *spatial)`` padded at the far end of each spatial axis (edge values) to a multiple of ``multiple``,
    as the model pads its input."""
    pads = [(-n) % multiple for n in batch.shape[2:]]
    if any(pads):
        batch = np.pad(batch, [(0, 0), (0, 0), *((0, p) for p in pads)], mode="edge")
    return np.ascontiguousarray(batch, dtype=np.float32)
