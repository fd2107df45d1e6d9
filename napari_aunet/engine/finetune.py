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
import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .clickmodel import CLICK_WINDOW, is_click_model, object_masks, simulated_click_batches, window_around
from .config import ModelConfig
from .inference import CancelFlag, Segmenter, cpu_has_bf16, is_cancelled
from .intensity import check_volume, normalize
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
    steps: int | None = 200
    time_budget: float | None = None  # seconds; training stops at whichever of steps/time comes first
    learning_rate: float = 1e-3
    batch_size: int = 8
    val_fraction: float = 0.2
    seed: int = 0
    freeze_batchnorm: bool = True
    patch_size: int = 64  # 3D models: cubic patches centred on annotated slices
    # auto: bf16 autocast where the device computes bf16 natively (a CPU with AVX512-BF16/AMX, a bf16 GPU),
    # else fp32; the loss and the optimiser state stay fp32.
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.steps is None and self.time_budget is None:
            raise ValueError("give a number of steps or a time budget")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"the validation fraction must be in [0, 1), got {self.val_fraction}")
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

    def history(self, settings: FineTuneSettings) -> dict:
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
            "settings": {k: v for k, v in settings.__dict__.items()},
        }


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
        labels.append(probabilities.argmax(axis=1))
    return np.moveaxis(np.concatenate(labels).astype(np.uint8), 0, axis)


class _SliceSampler:
    """Endless augmented batches of annotated 2D slices (or 3D patches) with IGNORE where unannotated."""

    def __init__(self, pairs: list[TrainingPair], slices: dict[int, list[int]], config: ModelConfig,
                 settings: FineTuneSettings, rng: np.random.Generator) -> None:
        self.items = []  # (normalized image, target with IGNORE, axis, slice index)
        for index, pair in enumerate(pairs):
            normalized = normalize(pair.image, config.normalization)
            target = np.full(pair.labels.shape, IGNORE, dtype=np.int64)
            chosen = slices.get(index, [])
            if pair.labels.ndim == 2:
                if chosen:
                    target = pair.labels.astype(np.int64)
            else:
                region = [slice(None)] * pair.labels.ndim
                for s in chosen:
                    region[pair.axis] = s
                    target[tuple(region)] = pair.labels[tuple(region)]
            for s in chosen:
                self.items.append((normalized, target, pair.axis, s))
        if not self.items:
            raise ValueError("no annotated slice to train on: paint some labels or mark slices reviewed")
        self.config, self.settings, self.rng = config, settings, rng

    def _item(self):
        normalized, target, axis, index = self.items[int(self.rng.integers(len(self.items)))]
        if self.config.spatial_dims == 2:
            if normalized.ndim == 2:
                return normalized, target
            return np.take(normalized, index, axis=axis), np.take(target, index, axis=axis)
        size = self.settings.patch_size
        corner = []
        for a, length in enumerate(normalized.shape):
            window = min(size, length)
            centre = index if a == axis else int(self.rng.integers(length))
            corner.append(int(np.clip(centre - window // 2, 0, length - window)))
        region = tuple(slice(c, c + min(size, n)) for c, n in zip(corner, normalized.shape, strict=True))
        return normalized[region], target[region]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            images, targets = [], []
            while len(images) < self.settings.batch_size:
                image, target = self._item()
                if not (target != IGNORE).any():
                    continue  # nothing annotated in this draw: draw again, never a NaN loss
                image, target = augment(image, target, self.rng)
                images.append(image[None])
                targets.append(target)
            shapes = {i.shape for i in images}
            if len(shapes) > 1:  # rotations of non-square patches: keep the common shape only
                keep = max(shapes, key=lambda s: sum(i.shape == s for i in images))
                pairs = [(i, t) for i, t in zip(images, targets, strict=True) if i.shape == keep]
                images, targets = [p[0] for p in pairs], [p[1] for p in pairs]
            yield np.stack(images).astype(np.float32), np.stack(targets).astype(np.int64)


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
) -> FineTuneResult:
    """Train a copy of ``model`` on the annotated slices of ``pairs``; ``model`` itself is never changed.

    ``progress(step, total_steps or None, loss, running_dice)`` after each step. On cancel the result's
    ``model`` is the original one (the old weights are kept) and ``cancelled`` is True.
    """
    steps = iter_fine_tune(model, pairs, settings, device=device, cancel=cancel)
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
) -> Generator[tuple[int, int | None, float, float], None, FineTuneResult]:
    """Generator form of :func:`fine_tune`: yields ``(step, total, loss, dice)`` after each step.

    Closing the generator (a GUI worker's cancel) stops training; ``model`` is never modified, so the old
    weights are kept whatever happens.
    """
    pairs = list(pairs)
    clicks = is_click_model(model.config)
    for pair in pairs:
        check_volume(np.asarray(pair.image))
        if pair.image.shape != pair.labels.shape:
            raise ValueError(f"image shape {pair.image.shape} and labels shape {pair.labels.shape} differ")
        if not clicks and pair.labels.max() >= model.config.out_channels:
            raise ValueError(
                f"labels hold value {int(pair.labels.max())} but the model has only {model.config.out_channels} "
                f"classes ({', '.join(model.config.class_names)})"
            )
    seed_everything(settings.seed)
    rng = np.random.default_rng(settings.seed)
    train_slices, val_slices = {}, {}
    for index, pair in enumerate(pairs):
        train_slices[index], val_slices[index] = split_slices(pair.annotated_slices(), settings.val_fraction, rng)

    def scores(candidate) -> dict:
        per_pair = [
            evaluate(candidate, p.image, p.labels, val_slices[i], p.axis, device)
            for i, p in enumerate(pairs) if val_slices[i]
        ]
        return _merge_scores(per_pair)

    before = scores(model)
    trained = copy.deepcopy(model).to(device)
    if clicks:  # clicks simulated against the model being trained, as when it was built
        sampler = simulated_click_batches(_ClickObjects(pairs, train_slices, model.config), trained,
                                          settings.batch_size, settings.seed)
    else:
        sampler = iter(_SliceSampler(pairs, train_slices, model.config, settings, rng))
    optimizer = torch.optim.AdamW(trained.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    result = FineTuneResult(model=model, cancelled=False, steps=0, seconds=0.0, before=before)
    started = time.perf_counter()
    step = 0
    running_loss = running_dice = None
    while True:
        elapsed = time.perf_counter() - started
        fraction = max(
            step / settings.steps if settings.steps else 0.0,
            elapsed / settings.time_budget if settings.time_budget else 0.0,
        )
        if fraction >= 1.0:
            break
        if is_cancelled(cancel):
            result.cancelled = True
            break
        warmup = min(1.0, (step + 1) / 10)
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * warmup * 0.5 * (1 + math.cos(math.pi * fraction))
        images, targets = next(sampler)
        _set_training_mode(trained, settings.freeze_batchnorm)
        images_t, targets_t = torch.from_numpy(images).to(device), torch.from_numpy(targets).to(device)
        with _training_autocast(settings.precision, images_t.device):
            logits = trained(images_t)
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
        yield step, settings.steps, running_loss, running_dice if running_dice is not None else float("nan")
    result.steps, result.seconds = step, time.perf_counter() - started
    result.train_slices = {pairs[i].name or str(i): v for i, v in train_slices.items()}
    result.val_slices = {pairs[i].name or str(i): v for i, v in val_slices.items()}
    if result.cancelled:
        return result
    trained.eval()
    result.model = trained
    result.after = scores(trained)
    return result


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
