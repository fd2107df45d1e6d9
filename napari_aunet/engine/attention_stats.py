"""Numbers that say which attention level focuses on the target.

For each gated level, with the predicted foreground pooled to that level's grid (the fraction of each
cell's input voxels that are foreground):

- ``mass_inside``: fraction of the level's total attention that falls on foreground, in [0, 1];
- ``mean_inside`` / ``mean_outside``: mean attention coefficient on foreground / background cells;
- ``entropy``: Shannon entropy of the map normalised to a distribution over cells, divided by its
  maximum ``log(cells)``: 1 = attention spread evenly everywhere, lower = more focused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .inference import AttentionMap


@dataclass(frozen=True)
class LevelStatistics:
    level: int
    factor: int
    mass_inside: float
    mean_inside: float
    mean_outside: float
    entropy: float

    def to_dict(self) -> dict:
        return asdict(self)


def pool_to_grid(mask: np.ndarray, attention: AttentionMap) -> np.ndarray:
    """Fraction of each attention cell's input voxels where ``mask`` is true (float32, the map's shape)."""
    fraction = mask.astype(np.float32)
    geometry = attention.geometry
    pooled = all(float(s).is_integer() and o == (s - 1) / 2 for s, o in zip(geometry.scale, geometry.offset, strict=True))
    if not pooled:  # a map on a resampled grid: average the mask over each cell's extent
        from .inference import resample

        covered = tuple(int(round(n * s)) for n, s in zip(attention.data.shape, geometry.scale, strict=True))
        padded = np.zeros(tuple(max(c, m) for c, m in zip(covered, fraction.shape, strict=True)), np.float32)
        padded[tuple(slice(0, n) for n in fraction.shape)] = fraction
        region = padded[tuple(slice(0, c) for c in covered)]
        return np.clip(resample(region, attention.data.shape, mode="linear"), 0.0, 1.0)
    for axis, scale in enumerate(geometry.scale):
        factor = int(scale)
        if factor == 1:
            continue
        length = fraction.shape[axis]
        cells = -(-length // factor)
        pad = [(0, 0)] * fraction.ndim
        pad[axis] = (0, cells * factor - length)
        counts = np.pad(np.ones(length, np.float32), pad[axis])
        padded = np.pad(fraction, pad)
        shape = (*padded.shape[:axis], cells, factor, *padded.shape[axis + 1 :])
        summed = padded.reshape(shape).sum(axis=axis + 1)
        covered = counts.reshape(cells, factor).sum(axis=1)
        fraction = summed / covered.reshape((-1,) + (1,) * (fraction.ndim - axis - 1))
    return fraction


def attention_statistics(attention: dict[int, AttentionMap], foreground: np.ndarray) -> list[LevelStatistics]:
    """Per-level statistics of attention maps against a foreground mask on the input grid."""
    rows = []
    for level, attention_map in sorted(attention.items()):
        values = attention_map.data.astype(np.float64)
        inside = pool_to_grid(foreground, attention_map).astype(np.float64)
        if inside.shape != values.shape:
            raise ValueError(f"foreground of shape {foreground.shape} does not fit level {level}'s map {values.shape}")
        outside = 1.0 - inside
        total = values.sum()
        probabilities = values[values > 0] / total if total > 0 else np.array([1.0])
        entropy = float(-(probabilities * np.log(probabilities)).sum() / np.log(max(values.size, 2)))
        rows.append(
            LevelStatistics(
                level=level,
                factor=attention_map.factor,
                mass_inside=float((values * inside).sum() / total) if total > 0 else 0.0,
                mean_inside=float((values * inside).sum() / inside.sum()) if inside.sum() > 0 else float("nan"),
                mean_outside=float((values * outside).sum() / outside.sum()) if outside.sum() > 0 else float("nan"),
                entropy=entropy,
            )
        )
    return rows
