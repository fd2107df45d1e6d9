"""Fine-tuning on corrected labels with partial annotation, and evaluation on annotated slices.

A slice counts as annotated when it holds any non-zero label or was marked reviewed; on an annotated slice
every voxel (background included) is a training target, on the others no voxel is. Part of the annotated
slices is held out; Dice/IoU per class on them are reported before and after.

A click-guided model (engine.clickmodel) fine-tunes on the objects of the annotated slices: every connected
region of every label id is an object, clicks are simulated on it against the model being trained (first at
its deepest point, then on the largest error), and the scores are the objects' Dice/IoU after 1 and 3
simulated clicks.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .checkpoint import Checkpoint
from .clickmodel import CLICK_WINDOW, is_click_model, object_masks, simulated_click_batches, window_around
from .config import ModelConfig
from .heads import HeadChange, class_names_for_labels, with_classes
from .inference import CancelFlag, Segmenter, adapted_shape, cpu_has_bf16, decide, is_cancelled, resample
from .intensity import check_volume, fill_non_finite, normalize
from .model import AttentionUNet
from .training import IGNORE, augment, masked_loss, seed_everything


@dataclass
class TrainingPair:
    """One image with its (partial) labels, both in file order, sliced along ``axis``."""

    image: np.ndarray
    labels: np.ndarray
    axis: int = 0
    reviewed: tuple[int, ...] = ()  # slices marked reviewed even if empty
    name: str = ""
    spacing: tuple[float, ...] | None = None  # voxel size in mm (file order); None: taken as the model's

    def at_model_spacing(self, config) -> TrainingPair:
        """This pair resampled in-plane to the model's training spacing, as :class:`Segmenter` resamples a scan
        before segmenting it (so a model fine-tuned on a 1.5 mm scan learns what it will be shown); the slicing
        axis and so every slice index stay as they are."""
        shape = adapted_shape(config, self.image.shape, self.spacing, self.axis if self.image.ndim == 3 else None)
        if shape is None:
            return self
        image = resample(np.asarray(self.image, np.float32), shape, mode="linear")
        labels = resample(np.asarray(self.labels), shape, mode="nearest").astype(np.int64)
        return dataclasses.replace(self, image=image, labels=labels, spacing=None)

    def annotated_slices(self) -> list[int]:
        return annotated_slices(self.labels, self.axis, self.reviewed)


def annotated_slices(labels: np.ndarray, axis: int = 0, reviewed: Sequence[int] = ()) -> list[int]:
    """Indices along ``axis`` of slices with any non-zero label, plus the reviewed ones (sorted)."""
    if labels.ndim == 2:
        return [0] if labels.any() or reviewed else []
    other = tuple(a for a in range(labels.ndim) if a != axis)
    painted = np.flatnonzero(np.any(labels != 0, axis=other))
    return sorted({int(i) for i in painted} | {int(i) for i in reviewed if 0 <= i < labels.shape[axis]})


@dataclass
class FineTuneSettings:
    """How to train. ``None`` picks the default measured on held-out real data (docs/finetune.md):

    - ``learning_rate``: 3e-3 for a new head or a network from scratch (``from_scratch``), 1e-3 when
      correcting the model's own classes;
    - ``freeze_batchnorm``: frozen running statistics when correcting the model's own classes, updated for a
      new head (measured: 0.44 frozen vs 0.82 updated, held-out Dice at 60 s, brain model onto four deep grey
      structures of an unseen head);
    - ``batch_size`` / ``patch_size``: 4 patches of 96 px in 2D (the most held-out Dice per second on 2 CPU
      cores), 8 cubes of 64 voxels in 3D.
    """

    steps: int | None = 200
    time_budget: float | None = None  # seconds; training stops at whichever of steps/time comes first
    learning_rate: float | None = None
    batch_size: int | None = None
    val_fraction: float = 0.1  # 1 of 10 annotated slices: more held out costs more Dice than it selects
    seed: int = 0
    freeze_batchnorm: bool | None = None
    patch_size: int | None = None  # square (2D) or cubic (3D) patches
    # share of each batch centred on annotated foreground of a class drawn uniformly among those present
    foreground_share: float = 1.0
    # keep the weights that scored best on the held-out slices, checked this many times during a run
    validations: int = 10
    # a freshly initialised network: trained like a new head (3e-3, BatchNorm statistics updated)
    from_scratch: bool = False
    # auto: bf16 autocast where the device computes bf16 natively (a CPU with AVX512-BF16/AMX, a bf16 GPU),
    # else fp32; the loss and the optimiser state stay fp32.
    precision: str = "auto"

    def resolved(self, spatial_dims: int, new_classes: bool, clicks: bool = False) -> FineTuneSettings:
        """A copy with every ``None`` replaced by its default for this network and task."""
        new_classes = new_classes or self.from_scratch
        return dataclasses.replace(
            self,
            learning_rate=self.learning_rate or (3e-3 if new_classes else 1e-3),
            freeze_batchnorm=(not new_classes) if self.freeze_batchnorm is None else self.freeze_batchnorm,
            batch_size=self.batch_size or (4 if spatial_dims == 2 and not clicks else 8),
            patch_size=self.patch_size or (96 if spatial_dims == 2 else 64),
        )

    def __post_init__(self) -> None:
        if self.steps is None and self.time_budget is None:
            raise ValueError("give a number of steps or a time budget")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"the validation fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.foreground_share <= 1.0:
            raise ValueError(f"the foreground share must be in [0, 1], got {self.foreground_share}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}; use auto, fp32 or bf16")


@dataclass
class FineTuneResult:
    model: AttentionUNet
    cancelled: bool
    steps: int
    seconds: float
    loss: list[float] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)  # running mean Dice on training batches
    logged_steps: list[int] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    train_slices: dict[str, list[int]] = field(default_factory=dict)
    val_slices: dict[str, list[int]] = field(default_factory=dict)
    head: HeadChange | None = None  # the classes before and after (a new head when they differ)
    validation: list[tuple[int, float, float]] = field(default_factory=list)  # (step, seconds, held-out Dice)
    best_step: int | None = None  # the step whose weights were kept (best held-out Dice); None: the last
    settings: FineTuneSettings | None = None  # as run, every default resolved
    ranks: int = 1  # processes that trained together (torchrun, DistributedDataParallel)

    def history(self, settings: FineTuneSettings | None = None) -> dict:
        settings = self.settings or settings
        return {
            "kind": "fine-tune",
            "steps": self.logged_steps,
            "loss": self.loss,
            "dice": self.dice,
            "total_steps": self.steps,
            "seconds": round(self.seconds, 2),
            "cancelled": self.cancelled,
            "before": self.before,
            "after": self.after,
            "validation": [list(v) for v in self.validation],
            "best_step": self.best_step,
            "head": self.head.message() if self.head is not None else None,
            "settings": {k: v for k, v in settings.__dict__.items()},
            "ranks": self.ranks,
        }


@dataclass(frozen=True)
class RunStart:
    """What a run trains, as a :class:`TrainingObserver` sees it just before the first step."""

    model: AttentionUNet  # the network being trained (never its DistributedDataParallel wrapper): read it only
    pairs: list[TrainingPair]  # at the model's spacing, as trained on
    normalized: list[np.ndarray] | None  # each pair's image as the network sees it; None for a click model
    train_slices: dict[int, list[int]]  # pair index -> slices trained on (every rank's, before sharing)
    val_slices: dict[int, list[int]]  # pair index -> held-out slices
    settings: FineTuneSettings  # every default resolved
    before: dict  # held-out scores of the model before training (``evaluate``'s, merged over the pairs)


@dataclass(frozen=True)
class StepRecord:
    """One training step, as a :class:`TrainingObserver` sees it."""

    step: int
    total: int | None  # the steps asked for; None with a time budget only
    loss: float  # this step's batch loss
    running_loss: float  # smoothed, as the checkpoint's history and ``progress`` report it
    running_dice: float  # smoothed Dice on the training batches (NaN until a class was seen)
    learning_rate: float  # the rate this step was taken with
    seconds: float  # training time so far


@dataclass(frozen=True)
class HeldOutCheck:
    """A check of the network on the held-out slices during a run (2D segmentation models)."""

    step: int
    seconds: float
    scores: dict  # {"dice": {class: v}, "iou": {class: v}, "mean_dice": x}, this rank's
    model: AttentionUNet  # the network at this step: read it only (eval mode, no gradients), never train it


class TrainingObserver:
    """Receives a run's events beyond ``progress``: subclass it and override what you need (each is a no-op here).

    Called in the training thread, on every rank of a distributed run, between steps: the time taken counts
    against a time budget.
    """

    def started(self, start: RunStart) -> None:
        """Before the first step."""

    def stepped(self, record: StepRecord) -> None:
        """After each step."""

    def checked(self, check: HeldOutCheck) -> None:
        """After each held-out check."""

    def finished(self, result: FineTuneResult) -> None:
        """When the run has ended, cancelled or not (not when its generator is closed)."""


def split_slices(slices: list[int], val_fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Hold out ``val_fraction`` of the slices (at least one when two or more and the fraction > 0)."""
    if val_fraction <= 0 or len(slices) < 2:
        return list(slices), []
    count = min(len(slices) - 1, max(1, int(round(val_fraction * len(slices)))))
    order = rng.permutation(len(slices))
    held = sorted(slices[i] for i in order[:count])
    return [s for s in slices if s not in held], held


def _dice_iou(prediction: np.ndarray, target: np.ndarray, class_names: Sequence[str]) -> dict:
    dice, iou = {}, {}
    for index, name in enumerate(class_names):
        if index == 0:
            continue
        p, t = prediction == index, target == index
        if not t.any() and not p.any():
            continue  # class absent from both: no score
        intersection = float(np.logical_and(p, t).sum())
        union = float(np.logical_or(p, t).sum())
        dice[name] = 2 * intersection / (float(p.sum()) + float(t.sum()))
        iou[name] = intersection / union
    mean = float(np.mean(list(dice.values()))) if dice else float("nan")
    return {"dice": dice, "iou": iou, "mean_dice": mean}


def evaluate(
    model: AttentionUNet,
    image: np.ndarray,
    labels: np.ndarray,
    slices: Sequence[int] | None = None,
    axis: int = 0,
    device: str = "cpu",
) -> dict:
    """Dice and IoU per foreground class on annotated slices (``slices``, default: all annotated).

    Returns ``{"dice": {class: v}, "iou": {class: v}, "mean_dice": x, "slices": [...]}``.
    """
    if image.shape != labels.shape:
        raise ValueError(f"image shape {image.shape} and labels shape {labels.shape} differ")
    slices = list(annotated_slices(labels, axis) if slices is None else slices)
    if image.ndim == 3:
        bad = [s for s in slices if not 0 <= s < image.shape[axis]]
        if bad:
            raise ValueError(f"slices {bad} do not exist along axis {axis} (size {image.shape[axis]})")
    if not slices:
        return {"dice": {}, "iou": {}, "mean_dice": float("nan"), "slices": []}
    segmenter = Segmenter(model, device=device)
    if is_click_model(model.config):
        return _click_scores(segmenter, image, labels, slices, axis)
    if image.ndim == 2 or model.config.spatial_dims == 3:
        result = segmenter.segment(image, return_attention=False)
        prediction = result.labels
        if image.ndim == 3:
            prediction, target = np.take(prediction, slices, axis), np.take(labels, slices, axis)
        else:
            target = labels
    else:
        prediction, target = _segment_slices_of(segmenter, image, slices, axis), np.take(labels, slices, axis)
    scores = _dice_iou(prediction, target, model.config.class_names)
    scores["slices"] = [int(s) for s in slices]
    return scores


CLICK_COUNTS = (1, 3)


def _click_scores(segmenter: Segmenter, image: np.ndarray, labels: np.ndarray, slices: Sequence[int],
                  axis: int) -> dict:
    """A click model's Dice/IoU over the objects of ``slices`` after 1 and 3 simulated clicks."""
    from .clicks import simulated_click_scores

    values: dict[int, list[tuple[float, float]]] = {count: [] for count in CLICK_COUNTS}
    for index in slices:
        plane = image if image.ndim == 2 else np.take(image, index, axis=axis)
        plane_labels = labels if labels.ndim == 2 else np.take(labels, index, axis=axis)
        for target in object_masks(plane_labels):
            for count, score in simulated_click_scores(segmenter, plane, target, CLICK_COUNTS).items():
                values[count].append(score)
    names = {count: f"object, {count} click{'s' if count > 1 else ''}" for count in CLICK_COUNTS}
    scores = {
        "dice": {names[c]: float(np.mean([v[0] for v in values[c]])) for c in CLICK_COUNTS if values[c]},
        "iou": {names[c]: float(np.mean([v[1] for v in values[c]])) for c in CLICK_COUNTS if values[c]},
        "slices": [int(s) for s in slices],
    }
    scores["mean_dice"] = float(np.mean(list(scores["dice"].values()))) if scores["dice"] else float("nan")
    return scores


class _ClickObjects:
    """Samples (normalised window, object mask) from the objects on the training slices, for a click model."""

    def __init__(self, pairs: list[TrainingPair], slices: dict[int, list[int]], config: ModelConfig) -> None:
        self.items = []
        for index, pair in enumerate(pairs):
            normalized = normalize(pair.image, config.normalization)
            for s in slices.get(index, []):
                plane = normalized if normalized.ndim == 2 else np.take(normalized, s, axis=pair.axis)
                plane_labels = pair.labels if pair.labels.ndim == 2 else np.take(pair.labels, s, axis=pair.axis)
                self.items.extend((plane, target) for target in object_masks(plane_labels))
        if not self.items:
            raise ValueError("no object on the annotated slices: paint or click some objects first")

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        plane, target = self.items[int(rng.integers(len(self.items)))]
        window, mask = window_around(plane, target, rng, CLICK_WINDOW)
        for axis in (0, 1):
            if rng.random() < 0.5:
                window, mask = np.flip(window, axis), np.flip(mask, axis)
        return np.ascontiguousarray(window), np.ascontiguousarray(mask)


def _training_autocast(precision: str, device: torch.device):
    """The autocast context of a training step (a no-op for fp32)."""
    if precision == "auto":
        native = cpu_has_bf16() if device.type == "cpu" else (
            device.type == "cuda" and torch.cuda.is_bf16_supported())
        precision = "bf16" if native else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _set_training_mode(model: AttentionUNet, freeze_batchnorm: bool) -> None:
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _segment_slices_of(segmenter: Segmenter, volume: np.ndarray, slices: Sequence[int], axis: int) -> np.ndarray:
    """Labels of the chosen slices only, normalised with the whole volume's statistics (as a full run)."""
    normalized = normalize(volume, segmenter.config.normalization)
    moved = np.moveaxis(np.take(normalized, list(slices), axis=axis), axis, 0)
    labels = []
    for start in range(0, moved.shape[0], segmenter.batch_size):
        probabilities, _ = segmenter._run(moved[start : start + segmenter.batch_size, None])
        labels.append(decide(probabilities, class_axis=1, rule=segmenter.config.decision))  # as Segment decides
    return np.moveaxis(np.concatenate(labels).astype(np.uint8), 0, axis)


def _crop(array: np.ndarray, centre: Sequence[int], shape: Sequence[int], fill) -> np.ndarray:
    """The ``shape`` box of ``array`` around ``centre``, moved inside the array where it fits (centred on the
    array where it does not); ``fill`` where the box leaves the array."""
    out = np.full(tuple(shape), fill, dtype=array.dtype)
    source, target = [], []
    for c, size, length in zip(centre, shape, array.shape, strict=True):
        start = int(c) - size // 2
        start = min(max(start, 0), length - size) if length >= size else (length - size) // 2
        lo, hi = max(start, 0), min(start + size, length)
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    out[tuple(target)] = array[tuple(source)]
    return out


class _PatchSampler:
    """Endless augmented batches of patches from the annotated slices, IGNORE where nothing is annotated.

    2D models take square crops of the annotated slices, 3D models cubes centred on an annotated slice. A share
    ``foreground_share`` of every batch (at least one patch) is centred, give or take a quarter patch, on an
    annotated voxel of a foreground class drawn uniformly among the classes present, so a 300-voxel structure
    is seen as often as a big one (nnU-Net's foreground oversampling); the other patches lie anywhere on the
    annotated slices. Patches lie inside the image where it is big enough, else are padded with its minimum and
    IGNORE.
    """

    def __init__(self, pairs: list[TrainingPair], normalized: list[np.ndarray], slices: dict[int, list[int]],
                 config: ModelConfig, settings: FineTuneSettings, rng: np.random.Generator) -> None:
        # items: (normalized image, target with IGNORE off the annotated slices, fixed axis or None, slice);
        # voxels[c]: (item numbers, voxel coordinates) of every annotated voxel of foreground class c
        self.items: list[tuple[np.ndarray, np.ndarray, int | None, int]] = []
        voxels: dict[int, tuple[list, list]] = {}

        def add(image: np.ndarray, target: np.ndarray, axis: int | None, chosen: list[int]) -> None:
            numbers = {s: len(self.items) + n for n, s in enumerate(chosen)}
            self.items.extend((image, target, axis, s) for s in chosen)
            for value in np.unique(target):
                if value in (0, IGNORE):
                    continue
                coordinates = np.argwhere(target == value)
                item_numbers = (np.full(len(coordinates), numbers[chosen[0]]) if axis is None
                                else np.array([numbers[int(s)] for s in coordinates[:, axis]]))
                voxels.setdefault(int(value), ([], []))[0].append(item_numbers)
                voxels[int(value)][1].append(coordinates)

        for index, pair in enumerate(pairs):
            chosen = slices.get(index, [])
            if not chosen:
                continue
            image = normalized[index]
            if pair.labels.ndim == 2:
                add(image, pair.labels.astype(np.uint8), None, [0])
            elif config.spatial_dims == 2:
                for s in chosen:
                    add(np.ascontiguousarray(np.take(image, s, axis=pair.axis)),
                        np.take(pair.labels, s, axis=pair.axis).astype(np.uint8), None, [s])
            else:
                target = np.full(pair.labels.shape, IGNORE, dtype=np.uint8)
                region = [slice(None)] * pair.labels.ndim
                for s in chosen:
                    region[pair.axis] = s
                    target[tuple(region)] = pair.labels[tuple(region)]
                add(image, target, pair.axis, list(chosen))
        if not self.items:
            raise ValueError("no annotated slice to train on: paint some labels or mark slices reviewed")
        self.foreground = {c: (np.concatenate(i), np.concatenate(v)) for c, (i, v) in sorted(voxels.items())}
        dims = config.spatial_dims
        size = settings.patch_size or (96 if dims == 2 else 64)
        self.shape = tuple(min(size, max(item[0].shape[a - dims] for item in self.items)) for a in range(dims))
        self.settings, self.rng = settings, rng

    def _patch(self, foreground: bool) -> tuple[np.ndarray, np.ndarray]:
        if foreground and self.foreground:
            classes = list(self.foreground)
            numbers, coordinates = self.foreground[classes[int(self.rng.integers(len(classes)))]]
            pick = int(self.rng.integers(len(numbers)))
            image, target, axis, s = self.items[int(numbers[pick])]
            jitter = [int(self.rng.integers(-(n // 4), n // 4 + 1)) for n in self.shape]
            centre = list(coordinates[pick])
            if axis is None:
                centre = [c + j for c, j in zip(centre, jitter, strict=True)]
            else:  # a 3D cube stays centred on the annotated slice along the slicing axis
                centre = [c if a == axis else c + j for a, (c, j) in enumerate(zip(centre, jitter, strict=True))]
        else:
            image, target, axis, s = self.items[int(self.rng.integers(len(self.items)))]
            centre = [s if a == axis else int(self.rng.integers(n)) for a, n in enumerate(image.shape)]
        return _crop(image, centre, self.shape, float(image.min())), _crop(target, centre, self.shape, IGNORE)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        batch = self.settings.batch_size
        share = self.settings.foreground_share if self.foreground else 0.0
        forced = max(1, int(math.ceil(share * batch))) if share > 0 else 0
        while True:
            images, targets = [], []
            while len(images) < batch:
                image, target = self._patch(foreground=len(images) < forced)
                if not (target != IGNORE).any():
                    continue  # nothing annotated in this draw: draw again, never a NaN loss
                image, target = augment(image, target, self.rng)
                images.append(image[None])
                targets.append(target)
            yield np.stack(images).astype(np.float32), np.stack(targets).astype(np.int64)


class _Ranks:
    """The torch.distributed process group a run trains in (torchrun), and the few values its ranks agree on."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist, self.rank, self.size = dist, dist.get_rank(), dist.get_world_size()

    def max(self, value: float) -> float:
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        self.dist.all_reduce(tensor, op=self.dist.ReduceOp.MAX)
        return float(tensor)

    def mean(self, value: float) -> float:
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        self.dist.all_reduce(tensor)
        return float(tensor) / self.size

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's BatchNorm running statistics everywhere: each rank's last forward updated its own (DDP copies
        rank 0's at the start of every forward, not after it; SyncBatchNorm needs GPUs)."""
        for buffer in model.buffers():
            self.dist.broadcast(buffer.data, src=0)

    def share(self, slices: dict[int, list[int]]) -> dict[int, list[int]]:
        """This rank's share of the training slices (every rank-th one; all of them when too few to share)."""
        mine = {index: chosen[self.rank :: self.size] for index, chosen in slices.items()}
        return mine if any(mine.values()) else slices


def _ranks() -> _Ranks | None:
    """The process group when this process trains with others (``torchrun``), else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _Ranks()
    return None


def _running_dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    prediction = logits.argmax(1)
    annotated = target != IGNORE
    scores = []
    for c in range(1, logits.shape[1]):
        p, t = (prediction == c) & annotated, (target == c)
        if t.any() or p.any():
            scores.append(float(2 * (p & t).sum()) / float(p.sum() + t.sum()))
    return float(np.mean(scores)) if scores else float("nan")


def fine_tune(
    model: AttentionUNet,
    pairs: Sequence[TrainingPair],
    settings: FineTuneSettings,
    *,
    device: str = "cpu",
    progress: Callable[[int, int | None, float, float], None] | None = None,
    cancel: CancelFlag = None,
    class_names: Sequence[str] | None = None,
    observer: TrainingObserver | None = None,
) -> FineTuneResult:
    """Train a copy of ``model`` on the annotated slices of ``pairs``; ``model`` itself is never changed.

    ``progress(step, total_steps or None, loss, running_dice)`` after each step; ``observer`` sees more (the
    learning rate, the held-out checks with the network: :class:`TrainingObserver`). On cancel the result's
    ``model`` is the original one (the old weights are kept) and ``cancelled`` is True.
    """
    steps = iter_fine_tune(model, pairs, settings, device=device, cancel=cancel, class_names=class_names,
                           observer=observer)
    try:
        while True:
            update = next(steps)
            if progress is not None:
                progress(*update)
    except StopIteration as finished:
        return finished.value


def iter_fine_tune(
    model: AttentionUNet,
    pairs: Sequence[TrainingPair],
    settings: FineTuneSettings,
    *,
    device: str = "cpu",
    cancel: CancelFlag = None,
    class_names: Sequence[str] | None = None,
    observer: TrainingObserver | None = None,
) -> Generator[tuple[int, int | None, float, float], None, FineTuneResult]:
    """Generator form of :func:`fine_tune`: yields ``(step, total, loss, dice)`` after each step.

    ``class_names`` (background first) are the classes the labels hold; where they differ from the model's,
    the trained model gets a new head for them (:func:`engine.heads.with_classes`). Without them, labels
    beyond the model's classes get names ``label N``. Closing the generator (a GUI worker's cancel) stops
    training; ``model`` is never modified, so the old weights are kept whatever happens. ``observer``: see
    :func:`fine_tune`.
    """
    pairs = list(pairs)
    clicks = is_click_model(model.config)
    for index, pair in enumerate(pairs):
        image, non_finite = fill_non_finite(np.asarray(pair.image))  # NaN/Inf: the scan's minimum, as in Segment
        if non_finite:
            pairs[index] = pair = dataclasses.replace(pair, image=image)
        check_volume(image)
        if pair.image.shape != pair.labels.shape:
            raise ValueError(f"image shape {pair.image.shape} and labels shape {pair.labels.shape} differ")
        if np.asarray(pair.labels).min() < 0:
            raise ValueError("the labels hold negative values")
    pairs = [pair.at_model_spacing(model.config) for pair in pairs]
    head = None
    if not clicks:
        highest = max(int(np.asarray(p.labels).max()) for p in pairs)
        names = tuple(class_names) if class_names else class_names_for_labels(highest, model.config.class_names)
        if highest >= len(names):
            raise ValueError(f"the labels hold value {highest} but only {len(names)} class names are given "
                             f"({', '.join(names)})")
        trained, head = with_classes(model, names)
    else:
        trained = copy.deepcopy(model)
    trained = trained.to(device)
    settings = settings.resolved(trained.config.spatial_dims, new_classes=head is not None and head.changed,
                                 clicks=clicks)
    seed_everything(settings.seed)
    rng = np.random.default_rng(settings.seed)
    train_slices, val_slices = {}, {}
    for index, pair in enumerate(pairs):
        train_slices[index], val_slices[index] = split_slices(pair.annotated_slices(), settings.val_fraction, rng)
    ranks = _ranks()
    drawn, sample_rng = train_slices, rng
    if ranks is not None:  # the same split everywhere, then each rank its own slices and its own draws
        drawn, sample_rng = ranks.share(train_slices), np.random.default_rng([settings.seed, ranks.rank])

    def scores(candidate) -> dict:
        per_pair = [
            evaluate(candidate, p.image, p.labels, val_slices[i], p.axis, device)
            for i, p in enumerate(pairs) if val_slices[i]
        ]
        return _merge_scores(per_pair)

    trained.eval()
    before = scores(model if clicks or not head.changed else trained)
    validator, normalized = None, None
    if not clicks:  # each scan normalised once, for the sampler and the held-out checks
        normalized = [normalize(p.image, trained.config.normalization) for p in pairs]
    if not clicks and trained.config.spatial_dims == 2 and settings.validations > 0:
        validator = _HeldOutSlices(pairs, normalized, val_slices, trained.config, settings.precision)
        validator = validator if validator.planes else None
    if clicks:  # clicks simulated against the model being trained, as when it was built
        sampler = simulated_click_batches(_ClickObjects(pairs, drawn, model.config), trained,
                                          settings.batch_size, settings.seed + (ranks.rank if ranks else 0))
    else:
        sampler = iter(_PatchSampler(pairs, normalized, drawn, trained.config, settings, sample_rng))
    # channels-last: 0.88x the time of a bf16 training step on 2 CPU cores (4 x 96 px, brain model widths)
    layout = None if clicks else (torch.channels_last if trained.config.spatial_dims == 2 else torch.channels_last_3d)
    if layout is not None:
        trained = trained.to(memory_format=layout)
    network = trained  # what the training steps run: the model, or its DistributedDataParallel wrapper
    if ranks is not None:  # gradients averaged over the ranks; rank 0's weights and buffers to start from
        network = torch.nn.parallel.DistributedDataParallel(trained)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    result = FineTuneResult(model=model, cancelled=False, steps=0, seconds=0.0, before=before, head=head,
                            settings=settings, ranks=ranks.size if ranks else 1)
    best_score, best_state = -1.0, None
    next_validation = 1
    if observer is not None:
        observer.started(RunStart(model=trained, pairs=pairs, normalized=normalized, train_slices=train_slices,
                                  val_slices=val_slices, settings=settings, before=before))
    started = time.perf_counter()
    step = 0
    running_loss = running_dice = None
    while True:
        elapsed = time.perf_counter() - started
        fraction = max(
            step / settings.steps if settings.steps else 0.0,
            elapsed / settings.time_budget if settings.time_budget else 0.0,
        )
        if ranks is not None:  # the slowest rank's clock decides, so every rank stops at the same step
            fraction = ranks.max(fraction)
        if validator is not None and step and (fraction >= next_validation / settings.validations or fraction >= 1):
            next_validation = int(fraction * settings.validations) + 1
            if ranks is not None:
                ranks.sync_buffers(trained)
            checked = validator.scores(trained)
            score = checked["mean_dice"]
            if ranks is not None:
                score = ranks.mean(score)  # one score, so every rank keeps the same best weights
            result.validation.append((step, round(elapsed, 2), round(score, 4)))
            if observer is not None:
                observer.checked(HeldOutCheck(step=step, seconds=elapsed, scores=checked, model=trained))
            if score > best_score:
                best_score, best_state = score, copy.deepcopy(trained.state_dict())
                result.best_step = step
        if fraction >= 1.0:
            break
        cancelled = is_cancelled(cancel)
        if ranks is not None:  # one rank cancelled: all stop
            cancelled = ranks.max(cancelled) > 0
        if cancelled:
            result.cancelled = True
            break
        warmup = min(1.0, (step + 1) / 10)
        learning_rate = settings.learning_rate * warmup * 0.5 * (1 + math.cos(math.pi * fraction))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        images, targets = next(sampler)
        _set_training_mode(trained, settings.freeze_batchnorm)
        images_t, targets_t = torch.from_numpy(images).to(device), torch.from_numpy(targets).to(device)
        if layout is not None:
            images_t = images_t.contiguous(memory_format=layout)
        with _training_autocast(settings.precision, images_t.device):
            logits = network(images_t)
        loss = masked_loss(logits.float(), targets_t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        value, dice = float(loss.detach()), _running_dice(logits.detach(), targets_t)
        running_loss = value if running_loss is None else 0.8 * running_loss + 0.2 * value
        if not math.isnan(dice):
            running_dice = dice if running_dice is None else 0.8 * running_dice + 0.2 * dice
        result.logged_steps.append(step)
        result.loss.append(round(running_loss, 5))
        result.dice.append(round(running_dice if running_dice is not None else float("nan"), 4))
        shown_dice = running_dice if running_dice is not None else float("nan")
        if observer is not None:
            observer.stepped(StepRecord(step=step, total=settings.steps, loss=value, running_loss=running_loss,
                                        running_dice=shown_dice, learning_rate=learning_rate,
                                        seconds=time.perf_counter() - started))
        yield step, settings.steps, running_loss, shown_dice
    result.steps, result.seconds = step, time.perf_counter() - started
    result.train_slices = {pairs[i].name or str(i): v for i, v in train_slices.items()}
    result.val_slices = {pairs[i].name or str(i): v for i, v in val_slices.items()}
    if not result.cancelled:
        if ranks is not None:
            ranks.sync_buffers(trained)
        if best_state is not None:
            trained.load_state_dict(best_state)
        trained = trained.to(memory_format=torch.contiguous_format).eval()
        result.model = trained
        result.after = scores(trained)
    if observer is not None:
        observer.finished(result)
    return result


class _HeldOutSlices:
    """Mean Dice of a 2D model on the held-out slices, normalised once (cheap enough to check often)."""

    def __init__(self, pairs: list[TrainingPair], normalized: list[np.ndarray], val_slices: dict[int, list[int]],
                 config: ModelConfig, precision: str) -> None:
        self.planes: list[tuple[np.ndarray, np.ndarray]] = []
        for index, pair in enumerate(pairs):
            image = normalized[index]
            for s in val_slices.get(index, []):
                if pair.image.ndim == 2:
                    self.planes.append((image, np.asarray(pair.labels)))
                else:
                    self.planes.append((np.take(image, s, axis=pair.axis), np.take(pair.labels, s, axis=pair.axis)))
        self.class_names, self.precision, self.decision = config.class_names, precision, config.decision

    def mean_dice(self, model: AttentionUNet) -> float:
        return self.scores(model)["mean_dice"]

    def scores(self, model: AttentionUNet) -> dict:
        """Dice and IoU per class over every held-out plane together, and their mean Dice."""
        if not self.planes:
            return {"dice": {}, "iou": {}, "mean_dice": float("nan")}
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        predictions, targets = [], []
        with torch.no_grad(), _training_autocast(self.precision, device):
            for plane, target in self.planes:
                logits = model(torch.from_numpy(np.ascontiguousarray(plane))[None, None].to(device))
                predictions.append(decide(torch.softmax(logits.float(), 1)[0].cpu().numpy(), rule=self.decision))
                targets.append(target)
        model.train(was_training)
        flat = np.concatenate([p.ravel() for p in predictions]), np.concatenate([t.ravel() for t in targets])
        return _dice_iou(*flat, self.class_names)


def fresh_checkpoint(template: Checkpoint, seed: int = 0) -> Checkpoint:
    """A freshly initialised network of ``template``'s architecture and normalisation (training from scratch)."""
    names = ("background", *(f"label {i}" for i in range(1, template.config.out_channels)))
    config = dataclasses.replace(template.config, class_names=names)
    torch.manual_seed(seed)
    fresh = AttentionUNet(config)
    return Checkpoint(config=config, state_dict=fresh.state_dict(), model_card="A new, untrained network.")


def _merge_scores(per_pair: list[dict]) -> dict:
    if not per_pair:
        return {}
    merged: dict = {"dice": {}, "iou": {}}
    for key in ("dice", "iou"):
        names = {name for scores in per_pair for name in scores[key]}
        for name in sorted(names):
            values = [scores[key][name] for scores in per_pair if name in scores[key]]
            merged[key][name] = float(np.mean(values))
    merged["mean_dice"] = float(np.mean(list(merged["dice"].values()))) if merged["dice"] else float("nan")
    return merged
