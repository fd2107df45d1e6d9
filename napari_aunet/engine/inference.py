"""Inference: a numpy volume in, labels + probabilities + per-level attention maps (with geometry) out.

Two modes:
- ``2d``: a 2D model applied slice by slice along a chosen axis, slices batched; with ``views=3`` also along the
  other two axes and the three probability maps averaged (view aggregation, as FastSurfer does).
- ``3d``: a 3D model applied in overlapping windows blended with a Gaussian weight (probabilities at the
  input grid, attention maps at each level's own grid).
Attention maps stay at their level's native resolution (float16), never upsampled.

Labels: the most likely class, or, for a model whose config says ``decision="foreground"`` (the brain model), the
most likely non-background class wherever background is less likely than all other classes together: a voxel whose
probability is split between, say, grey matter and CSF does not fall to background (the binary "is it brain?"
decision a brain mask makes). With two classes both rules agree.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from . import int8
from .checkpoint import Checkpoint
from .config import ModelConfig
from .geometry import GridGeometry
from .intensity import BadVolumeError, check_volume, fill_non_finite, normalizer, sample_values
from .model import AttentionUNet, fused_for_inference

ProgressCallback = Callable[[int, int], None]
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
MIN_VIEW_SLICES = 32  # a 3D volume thinner than this along any axis is segmented along the chosen axis only
CancelFlag = Callable[[], bool] | threading.Event | None


class Cancelled(RuntimeError):
    """Raised inside long work when the caller's cancel flag is set."""


def is_cancelled(cancel: CancelFlag) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when this CPU does bf16 arithmetic natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo, Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = info.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable explicit device is an error."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU here; use 'auto' or 'cpu'")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for, but Apple MPS is not available here; use 'auto' or 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from error


@dataclass
class AttentionMap:
    """One gate's attention coefficients at its level's own grid."""

    level: int
    data: np.ndarray  # float16 in [0, 1], shape ceil(input_shape / geometry.scale)
    geometry: GridGeometry

    @property
    def factor(self) -> int:
        """How many times coarser than the model's input grid this level is (2**(level-1))."""
        return 2 ** (self.level - 1)

    def on_slice(self, axis: int, index: int) -> AttentionMap:
        """This 2D map placed on slice ``index`` along ``axis`` of a volume: one slice thick there."""
        scale, offset = list(self.geometry.scale), list(self.geometry.offset)
        scale.insert(axis, 1.0)
        offset.insert(axis, float(index))
        return AttentionMap(self.level, np.expand_dims(self.data, axis), GridGeometry(tuple(scale), tuple(offset)))


@dataclass
class SegmentationResult:
    """Outputs of one segmentation, all in the input array's axis order."""

    labels: np.ndarray  # integer class per voxel, input shape
    class_names: tuple[str, ...]
    probabilities: np.ndarray | None = None  # float32 (classes, *input_shape), sums to 1 over classes
    attention: dict[int, AttentionMap] = field(default_factory=dict)  # level -> map, level 1 = finest
    mode: str = "2d"
    axis: int | None = None
    resampled_shape: tuple[int, ...] | None = None  # the grid the model ran on, when the spacing was adapted
    views: int = 1  # slicing directions averaged (2D mode)
    non_finite: int = 0  # NaN or infinite voxels of the input, segmented as the scan's minimum


def decide(probabilities: np.ndarray, class_axis: int = 0, rule: str = "argmax") -> np.ndarray:
    """Labels from class probabilities (class 0 = background) by ``rule``: see the module's docstring."""
    probabilities = np.moveaxis(probabilities, class_axis, 0)
    classes = probabilities.shape[0]
    dtype = np.uint8 if classes <= 256 else np.uint16
    if classes <= 2 or rule == "argmax":
        return probabilities.argmax(axis=0).astype(dtype)
    labels = (probabilities[1:].argmax(axis=0) + 1).astype(dtype)
    labels[probabilities[0] > 0.5] = 0
    return labels


def adapted_shape(
    config: ModelConfig, shape: tuple[int, ...], spacing: tuple[float, ...] | None, axis: int | None
) -> tuple[int, ...] | None:
    """The grid to run ``config``'s model on when ``spacing`` differs from its training spacing by more than 20 %,
    else None. A 2D model (``axis`` given) is adapted in-plane only; the slicing axis keeps its slices."""
    trained = config.spacing
    if spacing is None or trained is None:
        return None
    spacing = tuple(float(s) for s in spacing[: len(shape)])
    if config.spatial_dims == 2:
        target = [float(np.median(trained))] * len(shape)
    else:
        target = list(trained[: len(shape)])
    if axis is not None and len(shape) == 3:
        target[axis % 3] = spacing[axis % 3]
    ratios = [s / t for s, t in zip(spacing, target, strict=True)]
    if all(abs(r - 1.0) <= 0.2 for r in ratios):
        return None
    return tuple(max(1, int(round(n * r))) for n, r in zip(shape, ratios, strict=True))


def resample(array: np.ndarray, shape: tuple[int, ...], mode: str = "linear", leading: int = 0) -> np.ndarray:
    """Resize the spatial axes of ``array`` (after ``leading`` channel axes) to ``shape``.

    ``linear`` is bilinear/trilinear with half-pixel centres (align_corners=False); ``nearest`` for labels.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    spatial = tensor.shape[leading:]
    tensor = tensor.reshape(1, -1, *spatial)
    if mode == "linear":
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
        out = F.interpolate(tensor, size=tuple(shape), mode=mode, align_corners=False)
    else:
        out = F.interpolate(tensor, size=tuple(shape), mode="nearest-exact")
    return out.reshape(*array.shape[:leading], *shape).numpy()


def gaussian_weight(size: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian importance map for window blending, peak 1, never zero."""
    weight = np.ones((), dtype=np.float32)
    for length in size:
        centre = (length - 1) / 2.0
        sigma = max(length * sigma_scale, 1e-3)
        profile = np.exp(-0.5 * ((np.arange(length) - centre) / sigma) ** 2).astype(np.float32)
        weight = np.multiply.outer(weight, profile)
    return np.maximum(weight / weight.max(), 1e-3).astype(np.float32)


def _window_starts(length: int, window: int, step: int) -> list[int]:
    last = length - window
    starts = list(range(0, last + 1, step))
    if starts[-1] != last:
        starts.append(last)
    return starts


#: voxels above the scan's minimum plus this share of its range (to the 99.5th percentile) are the scanned object
FOREGROUND_SHARE = 0.05
#: voxels of air kept around the object when the scan is cropped to it
CROP_MARGIN = 16
#: a plane holds some of the object when at least 1 in this many of its voxels (pairs of neighbours) does
OCCUPIED_SHARE = 10_000
#: a box that keeps more than this share of the volume is not worth cropping to
CROP_WORTH = 0.9


def foreground_box(volume: np.ndarray, multiple: int = 1, margin: int | None = None,
                   slicing_axis: int | None = None) -> tuple[slice, ...] | None:
    """The box around the scanned object, ``margin`` voxels wider, starting on a multiple of ``multiple`` (so every
    attention level's cells line up with the whole scan's), or None when it keeps most of the scan. Along
    ``slicing_axis`` (2D models run slice by slice, each slice alone) the box keeps exactly the slices that hold
    some of the object: the others are skipped. In-plane the margin keeps the network's view of the object's
    surroundings: with 16 voxels the labels of the MNI T1 agree to Dice 0.999 with the uncropped run's.

    The object is every voxel above the scan's minimum plus :data:`FOREGROUND_SHARE` of its range: the head in an
    MRI, the body in a CT (air is about -1000 HU), in pairs of neighbours (a lone voxel of noise is not), in planes
    where they make 1 in :data:`OCCUPIED_SHARE` of the voxels or more. nnU-Net crops to the non-zero region the
    same way; a scan with noise everywhere above that level keeps its whole field of view."""
    margin = CROP_MARGIN if margin is None else margin
    low, high = float(volume.min()), float(np.percentile(sample_values(volume), 99.5))
    if high <= low:
        return None
    inside = volume > low + FOREGROUND_SHARE * (high - low)
    inside[..., :-1] &= inside[..., 1:]  # a voxel of noise alone is not an object: keep pairs of neighbours
    box = []
    for axis in range(volume.ndim):
        counts = np.count_nonzero(inside, axis=tuple(a for a in range(volume.ndim) if a != axis))
        occupied = np.flatnonzero(counts >= max(1, (volume.size // volume.shape[axis]) // OCCUPIED_SHARE))
        if occupied.size == 0:
            return None
        around, step = (0, 1) if axis == slicing_axis else (margin, multiple)
        start = max(0, int(occupied[0]) - around) // step * step
        box.append(slice(start, min(volume.shape[axis], int(occupied[-1]) + 1 + around)))
    kept = math.prod(b.stop - b.start for b in box)
    return tuple(box) if kept <= CROP_WORTH * volume.size else None


def _placed(result: SegmentationResult, shape: tuple[int, ...], box: tuple[slice, ...]) -> SegmentationResult:
    """A result computed on ``volume[box]`` put back on the whole scan: air outside the box is background
    (probability 1), its attention 0 (the network never ran there)."""
    labels = np.zeros(shape, dtype=result.labels.dtype)
    labels[box] = result.labels
    probabilities = None
    if result.probabilities is not None:
        probabilities = np.zeros((result.probabilities.shape[0], *shape), dtype=np.float32)
        probabilities[0] = 1.0
        probabilities[(slice(None), *box)] = result.probabilities
    starts = tuple(float(b.start) for b in box)
    attention = {}
    for level, found in result.attention.items():
        scale = found.geometry.scale
        cells = [float(b.start) / c for b, c in zip(box, scale, strict=True)]
        if result.resampled_shape is None and all(c.is_integer() for c in cells):
            grid = tuple(-(-n // int(c)) for n, c in zip(shape, scale, strict=True))
            data = np.zeros(grid, dtype=found.data.dtype)
            data[tuple(slice(int(c), int(c) + n) for c, n in zip(cells, found.data.shape, strict=True))] = found.data
            attention[level] = AttentionMap(level, data, found.geometry)
        else:  # a map on a resampled grid keeps its own cells, moved to where the box sits
            moved = GridGeometry(found.geometry.scale,
                                 tuple(o + s for o, s in zip(found.geometry.offset, starts, strict=True)))
            attention[level] = AttentionMap(level, found.data, moved)
    return replace(result, labels=labels, probabilities=probabilities, attention=attention)


_ALLOCATOR_TUNED = False
#: set to 1 to keep glibc's own malloc settings (the tuning below is then skipped)
KEEP_MALLOC_ENV = "AUNET_KEEP_MALLOC"


def tune_allocator() -> None:
    """Keep glibc from handing every large activation back to the system (once per process; Linux/glibc only).

    glibc serves allocations above its mmap threshold with a fresh mmap each time (page faults on every batch) and
    trims the heap early; fixing the mmap threshold at 32 MB and the trim threshold at 128 MB measured 0.85 s against
    1.06 s for the brain model on the 1.5 mm head in one process, and it undoes Dask's ``MALLOC_TRIM_THRESHOLD_=65536``
    (2.26 s; docs/scale.md). ``AUNET_KEEP_MALLOC=1`` keeps glibc's settings."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get(KEEP_MALLOC_ENV) == "1":
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 128 * 1024 * 1024)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to tune
        pass


class Segmenter:
    """Runs a model on numpy volumes.

    ``precision``: ``auto`` (fp16 autocast on CUDA, bf16 autocast on a CPU with native bf16, fp32 elsewhere),
    ``fp32``, ``bf16``, ``fp16`` or ``int8`` (CPU only, through ONNX Runtime, the optional extra ``[int8]``:
    :mod:`~napari_aunet.engine.int8`; the activation ranges are calibrated on the first scan segmented after the
    model last changed). A test holds bf16 within 0.005 Dice of fp32 on the sample scans.
    """

    def __init__(
        self,
        model: AttentionUNet | Checkpoint,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int = 8,
    ) -> None:
        if isinstance(model, Checkpoint):
            self.checkpoint: Checkpoint | None = model
            model = model.build_model()
        else:
            self.checkpoint = None
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config: ModelConfig = model.config
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
        if precision == "int8":
            if self.device.type != "cpu":
                raise ValueError("int8 runs on the CPU only (ONNX Runtime); on a GPU use fp16 or auto")
            int8.require()
        if precision == "auto":
            if self.device.type == "cuda":
                precision = "fp16"
            else:
                precision = "bf16" if self.device.type == "cpu" and cpu_has_bf16() else "fp32"
        self.precision = precision
        self.batch_size = max(1, int(batch_size))
        if self.device.type == "cpu":
            tune_allocator()
        # Inference runs on a copy with BatchNorm folded into the convolutions (the model keeps its weights), NHWC
        # on CPUs and CUDA GPUs (oneDNN and cuDNN both run NHWC convolutions faster; docs/benchmarks.md).
        self.fuse = True
        self.channels_last = self.device.type in ("cpu", "cuda")
        self._fused: tuple | None = None
        self._int8: tuple | None = None

    def _autocast(self):
        if self.precision in ("fp32", "int8"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _network(self) -> torch.nn.Module:
        """The model as it runs here: BatchNorm folded into the convolutions, channels-last where that pays.

        Rebuilt whenever the model changed since the last call (a fine-tuning step, loaded weights, a gate forced
        open or closed by :func:`~napari_aunet.engine.importance.forced_gate`): the key is every parameter's and
        buffer's version counter and every module's own ``forward`` override."""
        key = self._model_key()
        if self._fused is None or self._fused[0] != key:
            fused = fused_for_inference(self.model, channels_last=self.channels_last) if self.fuse else self.model
            self._fused = (key, fused)
        return self._fused[1]

    def _model_key(self) -> tuple:
        model = self.model
        return (
            tuple(t._version for t in model.parameters()),
            tuple(t._version for t in model.buffers()),
            tuple(id(m.__dict__.get("forward")) for m in model.modules()),
            model.training,
        )

    def _int8_network(self, calibration: Callable[[], np.ndarray]) -> int8.Int8Network:
        """The quantized network (:func:`~napari_aunet.engine.int8.cached_network`: from the cache folder, or
        calibrated on ``calibration()``'s samples), made again whenever the model changed (the key of
        :meth:`_network`)."""
        key = self._model_key()
        if self._int8 is None or self._int8[0] != key:
            self._int8 = (key, int8.cached_network(self.model, calibration, threads=torch.get_num_threads()))
        return self._int8[1]

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Probabilities ``(N, C, *spatial)`` float32 and attention ``{level: (N, *grid)}`` float32."""
        if self.precision == "int8":  # a caller that did not calibrate on its scan first calibrates on this batch
            network = self._int8_network(lambda: int8.padded(batch, self.config.size_multiple))
            return network.run(batch)
        inputs = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        network = self._network()
        if self.fuse and self.channels_last:
            inputs = inputs.contiguous(
                memory_format=torch.channels_last if inputs.ndim == 4 else torch.channels_last_3d
            )
        with torch.inference_mode(), self._autocast():
            logits, attention = network(inputs, return_attention=True)
            probabilities = torch.softmax(logits.float(), dim=1)
        return (
            probabilities.cpu().numpy(),
            {level: psi[:, 0].float().cpu().numpy() for level, psi in attention.items()},
        )

    def segment(
        self,
        volume: np.ndarray,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelFlag = None,
        **options,
    ) -> SegmentationResult:
        """Segment a 2D ``(Y, X)`` or 3D array (any numeric dtype, file axis order); see :meth:`iter_segment`.

        ``progress(done, total)`` is called after each batch/window; when ``cancel`` is set the run stops
        with :class:`Cancelled`.
        """
        steps = self.iter_segment(volume, **options)
        try:
            while True:
                if is_cancelled(cancel):
                    steps.close()
                    raise Cancelled("segmentation cancelled")
                done, total = next(steps)
                if progress is not None:
                    progress(done, total)
        except StopIteration as finished:
            return finished.value

    def iter_segment(
        self,
        volume: np.ndarray,
        *,
        mode: str | None = None,
        axis: int = 0,
        roi_size: tuple[int, ...] | int = 96,
        overlap: float = 0.25,
        return_probabilities: bool = False,
        return_attention: bool = True,
        spacing: tuple[float, ...] | None = None,
        views: int | None = None,
        nan: str = "background",
        crop: bool = True,
    ) -> Generator[tuple[int, int], None, SegmentationResult]:
        """Generator form: yields ``(done, total)`` after each batch and returns the result.

        Stop early by closing the generator (or simply not resuming it): this is how a GUI worker
        cancels between batches. ``mode`` defaults to the model's own dimensionality; ``axis`` is the
        slicing axis in ``2d`` mode; ``roi_size`` and ``overlap`` (fraction of the window shared by
        neighbours) apply to ``3d`` mode. ``views`` (2D mode, 3D volumes; default: the model's own) = 3 also
        segments along the other two axes and averages the probabilities; attention maps come from ``axis``;
        a volume thinner than ``MIN_VIEW_SLICES`` along any axis gets one view. ``nan``: NaN and infinite voxels
        become the scan's minimum (``background``, counted in the result) or are refused (``refuse``).
        ``crop``: the network runs only on the box around the scanned object (:func:`foreground_box`; the air
        around a head or a body is background, its attention 0), normalised with the whole scan's statistics.
        """
        volume, non_finite = fill_non_finite(np.asarray(volume), nan)
        result = yield from self._iter_segment(volume, mode, axis, roi_size, overlap, return_probabilities,
                                               return_attention, spacing, views, crop)
        return replace(result, non_finite=non_finite) if non_finite else result

    def _iter_segment(self, volume, mode, axis, roi_size, overlap, return_probabilities, return_attention, spacing,
                      views, crop):
        check_volume(volume)
        if self.config.in_channels != 1:
            raise BadVolumeError(
                f"this model expects {self.config.in_channels} input channels; it cannot segment a plain scan"
            )
        mode = mode or f"{self.config.spatial_dims}d"
        if mode not in ("2d", "3d"):
            raise ValueError(f"unknown mode {mode!r}; use 2d or 3d")
        if mode == "3d" and self.config.spatial_dims != 3:
            raise ValueError("this is a 2D model: use mode 2d (slice by slice)")
        if mode == "2d" and self.config.spatial_dims != 2:
            raise ValueError("this is a 3D model: use mode 3d (sliding window)")
        if mode == "3d" and volume.ndim != 3:
            raise BadVolumeError(f"a 3D model needs a 3D volume, got shape {volume.shape}")
        views = self.config.views if views is None else views
        if views not in (1, 3):
            raise ValueError(f"views must be 1 or 3, got {views}")
        # a slab only a few slices thick has no usable coronal or sagittal slices: one view there
        several = mode == "2d" and views == 3 and volume.ndim == 3 and min(volume.shape) >= MIN_VIEW_SLICES
        if mode == "2d" and not -volume.ndim <= axis < volume.ndim:
            raise ValueError(f"axis {axis} does not exist in a volume of shape {volume.shape}")
        # statistics of the whole scan, applied to the part the network sees (the box, one batch of slices)
        transform = normalizer(volume, self.config.normalization)
        one_axis = axis % volume.ndim if mode == "2d" and not several and volume.ndim == 3 else None
        box = foreground_box(volume, self.config.size_multiple, slicing_axis=one_axis) if crop else None
        if self.precision == "int8":  # calibrated on the part the network will see
            part = volume if box is None else volume[box]
            roi = (roi_size,) * part.ndim if isinstance(roi_size, int) else tuple(roi_size)
            self._int8_network(lambda: int8.calibration_inputs(part, transform, mode=mode, axis=axis,
                                                               multiple=self.config.size_multiple, roi_size=roi))
        if box is not None:
            result = yield from self._segment_part(volume[box], transform, mode, axis, roi_size, overlap,
                                                   return_probabilities, return_attention, spacing, several)
            return _placed(result, volume.shape, box)
        return (yield from self._segment_part(volume, transform, mode, axis, roi_size, overlap, return_probabilities,
                                              return_attention, spacing, several))

    def _segment_part(self, volume, transform, mode, axis, roi_size, overlap, return_probabilities, return_attention,
                      spacing, several):
        # Several views need one grid for all three axes, so every axis is adapted to the model's spacing.
        target_shape = self.adapted_shape(volume.shape, spacing, axis if mode == "2d" and not several else None)
        if several:
            grid = transform(volume)
            grid = grid if target_shape is None else resample(grid, target_shape, mode="linear")
            result = yield from self._segment_views(grid, axis % 3, return_attention,
                                                    return_probabilities or target_shape is not None)
            if target_shape is not None:
                return self._back_to_input(result, volume.shape, return_probabilities)
            return result
        if target_shape is not None:
            normalized = resample(transform(volume), target_shape, mode="linear")
            axis_after = axis % volume.ndim if mode == "2d" else axis
            # Labels follow the probabilities, so they are always needed on the model's grid.
            if mode == "2d":
                result = yield from self._segment_slices(normalized, axis_after, True, return_attention)
            else:
                result = yield from self._segment_windows(normalized, roi_size, overlap, True, return_attention)
            return self._back_to_input(result, volume.shape, return_probabilities)
        if mode == "2d":
            # raw slices, normalised a batch at a time: no float32 copy of the whole scan
            return (yield from self._segment_slices(volume, axis, return_probabilities, return_attention,
                                                    transform=transform))
        return (yield from self._segment_windows(transform(volume), roi_size, overlap, return_probabilities,
                                                 return_attention))

    def adapted_shape(
        self, shape: tuple[int, ...], spacing: tuple[float, ...] | None, axis: int | None
    ) -> tuple[int, ...] | None:
        """See :func:`adapted_shape` (this model's config)."""
        return adapted_shape(self.config, shape, spacing, axis)

    def _back_to_input(self, result: SegmentationResult, shape: tuple[int, ...], keep_probabilities: bool):
        """Map a result on the adapted grid back to the input grid (probabilities linear, maps re-placed)."""
        model_shape = result.labels.shape
        probabilities = resample(result.probabilities, shape, mode="linear", leading=1)
        probabilities /= np.maximum(probabilities.sum(axis=0, keepdims=True), 1e-8)
        labels = decide(probabilities, rule=self.config.decision)
        to_input = GridGeometry(
            tuple(n_in / n_model for n_in, n_model in zip(shape, model_shape, strict=True)),
            tuple(0.5 * n_in / n_model - 0.5 for n_in, n_model in zip(shape, model_shape, strict=True)),
        )
        attention = {
            level: AttentionMap(level, m.data, m.geometry.then(to_input)) for level, m in result.attention.items()
        }
        return SegmentationResult(
            labels=labels, class_names=result.class_names,
            probabilities=probabilities.astype(np.float32) if keep_probabilities else None, attention=attention,
            mode=result.mode, axis=result.axis, resampled_shape=model_shape, views=result.views,
        )

    def _segment_slices(self, volume, axis, return_probabilities, return_attention, transform=None, summed=None):
        """The model on every slice along ``axis``, ``batch_size`` slices at a time. ``transform`` normalises each
        batch (``volume`` is then the raw scan); labels are decided per batch, so the class probabilities of the
        whole volume exist only when asked for; ``summed`` (``(C, *volume.shape)``) instead adds them there (the
        views of :meth:`_segment_views`) and the labels are left to the caller."""
        single = volume.ndim == 2
        if single:
            volume, axis = volume[None], 0
        if not -volume.ndim <= axis < volume.ndim:
            raise ValueError(f"axis {axis} does not exist in a volume of shape {volume.shape}")
        axis %= volume.ndim
        slices = np.moveaxis(volume, axis, 0)
        count, plane = slices.shape[0], slices.shape[1:]
        classes = self.config.out_channels
        probabilities = np.empty((count, classes, *plane), dtype=np.float32) if return_probabilities else None
        target = None if summed is None else np.moveaxis(summed, axis + 1, 0)
        labels = np.empty((count, *plane), dtype=np.uint8 if classes <= 256 else np.uint16) if summed is None else None
        factors = {level: 2 ** (level - 1) for level in self.config.gated_levels} if return_attention else {}
        attention = {
            level: np.empty((count, *(-(-n // f) for n in plane)), dtype=np.float16) for level, f in factors.items()
        }
        total = math.ceil(count / self.batch_size)
        for batch_index, start in enumerate(range(0, count, self.batch_size)):
            stop = min(start + self.batch_size, count)
            batch = slices[start:stop]
            batch = transform(batch) if transform is not None else batch
            batch_probabilities, batch_attention = self._run(batch[:, None])
            if target is not None:
                target[start:stop] += batch_probabilities
            else:
                labels[start:stop] = decide(batch_probabilities, class_axis=1, rule=self.config.decision)
            if probabilities is not None:
                probabilities[start:stop] = batch_probabilities
            for level in factors:
                attention[level][start:stop] = batch_attention[level]
            yield batch_index + 1, total

        def restore(array: np.ndarray, leading: int = 0) -> np.ndarray:
            array = np.moveaxis(array, leading, axis + leading)
            return array[(slice(None),) * leading + (0,)] if single else array

        probabilities_out = None
        if probabilities is not None:
            probabilities_out = np.ascontiguousarray(restore(np.moveaxis(probabilities, 1, 0), leading=1))
            del probabilities
        maps = {}
        ndim = 2 if single else 3
        for level, factor in factors.items():
            in_plane = tuple(a for a in range(ndim) if single or a != axis)
            maps[level] = AttentionMap(
                level, np.ascontiguousarray(restore(attention.pop(level))), GridGeometry.pooled(ndim, factor, in_plane)
            )
        return SegmentationResult(
            labels=None if labels is None else np.ascontiguousarray(restore(labels)),
            class_names=self.config.class_names,
            probabilities=probabilities_out,
            attention=maps,
            mode="2d",
            axis=None if single else axis,
        )

    def _segment_views(self, volume, axis, return_attention, return_probabilities):
        """Slices along ``axis`` (attention from these), then along the other two axes; probabilities averaged in
        one array of the volume's size (no full copy per view)."""
        order = (axis, *(a for a in range(3) if a != axis))
        totals = [math.ceil(volume.shape[a] / self.batch_size) for a in order]
        summed = np.zeros((self.config.out_channels, *volume.shape), dtype=np.float32)
        first = None
        for view, view_axis in enumerate(order):
            steps = self._segment_slices(volume, view_axis, False, return_attention and view == 0, summed=summed)
            while True:
                try:
                    done, _ = next(steps)
                except StopIteration as finished:
                    result = finished.value
                    break
                yield sum(totals[:view]) + done, sum(totals)
            first = first or result
        summed /= len(order)
        return replace(first, labels=decide(summed, rule=self.config.decision),
                       probabilities=summed if return_probabilities else None, views=len(order))

    def _segment_windows(self, volume, roi_size, overlap, return_probabilities, return_attention):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        multiple = self.config.size_multiple
        roi = (roi_size,) * 3 if isinstance(roi_size, int) else tuple(roi_size)
        shape = volume.shape
        # Pad to a multiple of the coarsest grid and at least one window, so every window starts on a
        # cell boundary of every level and attention grids line up between windows.
        padded_shape = tuple(max(-(-n // multiple) * multiple, 1) for n in shape)
        roi = tuple(min(-(-r // multiple) * multiple, p) for r, p in zip(roi, padded_shape, strict=True))
        padded = np.pad(volume, [(0, p - n) for p, n in zip(padded_shape, shape, strict=True)], mode="edge")
        steps = tuple(max(multiple, int(r * (1 - overlap)) // multiple * multiple) for r in roi)
        starts = [
            _window_starts(length, window, step)
            for length, window, step in zip(padded_shape, roi, steps, strict=True)
        ]
        corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]

        classes = self.config.out_channels
        weight = gaussian_weight(roi)
        probability_sum = np.zeros((classes, *padded_shape), dtype=np.float32)
        weight_sum = np.zeros(padded_shape, dtype=np.float32)
        factors = {level: 2 ** (level - 1) for level in self.config.gated_levels} if return_attention else {}
        level_weights = {level: gaussian_weight(tuple(r // f for r in roi)) for level, f in factors.items()}
        attention_sum = {level: np.zeros(tuple(p // f for p in padded_shape), np.float32) for level, f in factors.items()}
        attention_weight = {level: np.zeros_like(attention_sum[level]) for level in factors}

        total = math.ceil(len(corners) / self.batch_size)
        for batch_index, first in enumerate(range(0, len(corners), self.batch_size)):
            batch_corners = corners[first : first + self.batch_size]
            windows = [tuple(slice(c, c + r) for c, r in zip(corner, roi, strict=True)) for corner in batch_corners]
            batch = np.stack([padded[window] for window in windows])[:, None]
            batch_probabilities, batch_attention = self._run(batch)
            for index, (corner, window) in enumerate(zip(batch_corners, windows, strict=True)):
                probability_sum[(slice(None), *window)] += batch_probabilities[index] * weight
                weight_sum[window] += weight
                for level, factor in factors.items():
                    cells = tuple(slice(c // factor, (c + r) // factor) for c, r in zip(corner, roi, strict=True))
                    attention_sum[level][cells] += batch_attention[level][index] * level_weights[level]
                    attention_weight[level][cells] += level_weights[level]
            yield batch_index + 1, total

        crop = tuple(slice(0, n) for n in shape)
        probabilities = (probability_sum / weight_sum)[(slice(None), *crop)]
        labels = decide(probabilities, rule=self.config.decision)
        maps = {}
        for level, factor in factors.items():
            blended = attention_sum[level] / attention_weight[level]
            cells = tuple(slice(0, -(-n // factor)) for n in shape)
            maps[level] = AttentionMap(
                level, np.ascontiguousarray(blended[cells].astype(np.float16)), GridGeometry.pooled(3, factor)
            )
        return SegmentationResult(
            labels=np.ascontiguousarray(labels),
            class_names=self.config.class_names,
            probabilities=np.ascontiguousarray(probabilities) if return_probabilities else None,
            attention=maps,
            mode="3d",
            axis=None,
        )
