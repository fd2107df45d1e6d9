"""Which attention gate does the work, in numbers (issue 18).

For each gated level of a 2D model, on a set of slices of one scan:

- ``dice``: the model as it is against the reference;
- ``dice_open``: the same with that level's gate forced open (psi = 1 everywhere: every skip feature passes);
- ``dice_closed``: forced closed (psi = 0: the level's skip connection is cut);
- ``mean_psi``: the gate's mean coefficient inside each reference class and outside all of them (``outside``),
  at the level's own grid (the class masks averaged over each cell).

The reference is the user's labels on their annotated slices when given (then the scores are Dice against what
the user drew), else the model's own unforced output (then ``dice`` is 1 and a change says how much the
output moves). Dice is the mean over the foreground classes present in the reference or the prediction.
A gate whose closing costs much Dice does the work; one whose closing changes nothing passes or blocks
features the decoder does not need. These are interventions on the network, not a faithful explanation of
its decision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .inference import Segmenter, decide
from .intensity import fill_non_finite, normalize

MAX_SLICES = 16  # slices scored when none are given and nothing is annotated


@contextlib.contextmanager
def forced_gate(model: torch.nn.Module, level: int, value: float) -> Iterator[None]:
    """Inside the block, level ``level``'s gate returns ``x * value`` (psi = ``value`` everywhere)."""
    gate = model.decoders[level - 1].gate
    if gate is None:
        raise ValueError(f"level {level} has no attention gate")

    def forward(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        psi = torch.full((x.shape[0], 1, *x.shape[2:]), float(value), dtype=x.dtype, device=x.device)
        return x * psi, psi

    gate.forward = forward
    try:
        yield
    finally:
        del gate.forward  # the class's forward again


@dataclass(frozen=True)
class LevelImportance:
    level: int
    factor: int
    dice: float
    dice_open: float
    dice_closed: float
    mean_psi: dict[str, float]

    @property
    def change_closed(self) -> float:
        return self.dice_closed - self.dice

    @property
    def change_open(self) -> float:
        return self.dice_open - self.dice

    def to_dict(self) -> dict:
        return {**asdict(self), "change_open": round(self.change_open, 4), "change_closed": round(self.change_closed, 4)}


def _mean_dice(prediction: np.ndarray, reference: np.ndarray, classes: Sequence[int]) -> float:
    """Mean Dice over the foreground ``classes`` present in the prediction or the reference (finetune's scores)."""
    from .finetune import _dice_iou

    names = [f"label {c}" for c in range(max(classes, default=0) + 1)]  # classes absent from both are skipped there
    return _dice_iou(prediction, reference, names)["mean_dice"]


def _pooled(mask: np.ndarray, factor: int, shape: tuple[int, ...]) -> np.ndarray:
    """(N, H, W) bool -> the fraction of each ``factor`` x ``factor`` cell that is true, cropped to ``shape``."""
    n, h, w = mask.shape
    padded = np.zeros((n, -(-h // factor) * factor, -(-w // factor) * factor), np.float32)
    padded[:, :h, :w] = mask
    cells = padded.reshape(n, padded.shape[1] // factor, factor, padded.shape[2] // factor, factor).mean(axis=(2, 4))
    return cells[:, : shape[1], : shape[2]]


def choose_slices(normalized: np.ndarray, axis: int, labels: np.ndarray | None, count: int = MAX_SLICES) -> list[int]:
    """The annotated slices of ``labels`` (any non-zero voxel), else ``count`` evenly spaced slices holding the
    scan (not air)."""
    other = tuple(a for a in range(normalized.ndim) if a != axis)
    if labels is not None and labels.any():
        return [int(i) for i in np.flatnonzero(np.any(labels != 0, axis=other))]
    holding = np.flatnonzero((normalized > 0.05).mean(axis=other) > 0.05)
    if not holding.size:
        holding = np.arange(normalized.shape[axis])
    picks = np.linspace(0, holding.size - 1, min(count, holding.size)).round().astype(int)
    return [int(holding[i]) for i in sorted(set(picks))]


def level_importance(
    segmenter: Segmenter,
    volume: np.ndarray,
    *,
    axis: int = 0,
    labels: np.ndarray | None = None,
    slices: Sequence[int] | None = None,
    spacing: tuple[float, ...] | None = None,
) -> dict:
    """The table of the module's docstring for every gated level, sorted by the Dice lost when the gate is closed
    (the gate that does the most work first). ``volume`` (and ``labels``) in file order, sliced along ``axis``;
    ``slices`` default: the annotated slices of ``labels``, else up to 16 evenly spaced slices. A scan whose
    ``spacing`` differs from the model's is resampled in-plane first, as Segment does."""
    config = segmenter.config
    if config.spatial_dims != 2:
        raise ValueError("level importance is measured slice by slice: it needs a 2D model")
    if not config.gated_levels:
        raise ValueError("this model has no attention gates (a plain U-Net)")
    if config.in_channels != 1:
        raise ValueError(f"a model with {config.in_channels} input channels (a click model) is not measured here")
    volume, _ = fill_non_finite(np.asarray(volume))
    if volume.ndim == 2:
        volume, axis = volume[None], 0
        labels = None if labels is None else np.asarray(labels)[None]
    if labels is not None and np.shape(labels) != volume.shape:
        raise ValueError(f"labels of shape {np.shape(labels)} do not fit the scan's {volume.shape}")
    if spacing is not None:
        from .finetune import TrainingPair

        pair = TrainingPair(volume, np.zeros(volume.shape, np.uint8) if labels is None else np.asarray(labels),
                            axis=axis, spacing=tuple(spacing)[: volume.ndim]).at_model_spacing(config)
        volume, labels = pair.image, (None if labels is None else pair.labels)
    normalized = normalize(volume, config.normalization)
    chosen = list(slices) if slices is not None else choose_slices(normalized, axis, labels)
    bad = [s for s in chosen if not 0 <= s < volume.shape[axis]]
    if bad or not chosen:
        raise ValueError(f"slices {bad or chosen} do not exist along axis {axis} (size {volume.shape[axis]})")
    planes = np.ascontiguousarray(np.moveaxis(np.take(normalized, chosen, axis=axis), axis, 0)[:, None])

    def run() -> tuple[np.ndarray, dict[int, np.ndarray]]:
        found, maps = [], {}
        for start in range(0, len(planes), segmenter.batch_size):
            probabilities, attention = segmenter._run(planes[start : start + segmenter.batch_size])
            found.append(decide(probabilities, class_axis=1, rule=config.decision))
            for level, psi in attention.items():
                maps.setdefault(level, []).append(psi)
        return np.concatenate(found), {level: np.concatenate(parts) for level, parts in maps.items()}

    predicted, attention = run()
    if labels is not None and labels.any():
        reference = np.moveaxis(np.take(np.asarray(labels), chosen, axis=axis), axis, 0).astype(np.int64)
        source = "labels"
    else:
        reference, source = predicted.astype(np.int64), "model"
    classes = sorted({int(c) for c in np.unique(np.concatenate([reference.ravel(), predicted.ravel()]))} - {0})
    base = _mean_dice(predicted, reference, classes)
    names = config.class_names
    rows = []
    for level in sorted(config.gated_levels):
        factor = 2 ** (level - 1)
        scores = {}
        for value in (1.0, 0.0):
            with forced_gate(segmenter.model, level, value):
                scores[value] = _mean_dice(run()[0], reference, classes)
        psi = attention[level]
        inside = {}
        anywhere = np.zeros(psi.shape, np.float32)
        for c in classes:
            share = _pooled(reference == c, factor, psi.shape)
            anywhere += share
            if share.sum() > 0:
                name = names[c] if c < len(names) else f"label {c}"
                inside[name] = round(float((psi * share).sum() / share.sum()), 4)
        outside = np.clip(1.0 - anywhere, 0.0, 1.0)
        inside["outside"] = round(float((psi * outside).sum() / max(outside.sum(), 1e-6)), 4)
        rows.append(LevelImportance(level, factor, round(base, 4), round(scores[1.0], 4), round(scores[0.0], 4), inside))
    rows.sort(key=lambda row: (row.change_closed, row.level))
    return {"axis": axis, "slices": chosen, "reference": source, "levels": [row.to_dict() for row in rows]}
