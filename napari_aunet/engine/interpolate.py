"""Interpolation of labels between annotated slices (ITK-SNAP's and 3D Slicer's "fill between slices").

Each label present on two consecutive annotated slices is carried across the slices between them by blending
the two slices' signed distance maps (negative inside): a voxel of slice ``k`` gets the label where
``(1 - t) * d_a + t * d_b < 0``, ``t`` being how far ``k`` lies from ``a`` towards ``b``. Shapes morph into each
other and a label ends where its neighbour slice lacks it. Only empty voxels are filled, never a voxel that
already holds a label. Distances are octagonal (alternating 4- and 8-neighbour steps), numpy only. Like every
distance-map interpolation, shapes that do not overlap at all between the two slices fade out in the middle
instead of travelling: annotate closer slices there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _grow(region: np.ndarray, diagonal: bool) -> np.ndarray:
    out = region.copy()
    out[1:] |= region[:-1]
    out[:-1] |= region[1:]
    out[:, 1:] |= region[:, :-1]
    out[:, :-1] |= region[:, 1:]
    if diagonal:
        out[1:, 1:] |= region[:-1, :-1]
        out[1:, :-1] |= region[:-1, 1:]
        out[:-1, 1:] |= region[1:, :-1]
        out[:-1, :-1] |= region[1:, 1:]
    return out


def _steps_to_reach(start: np.ndarray) -> np.ndarray:
    """Octagonal distance (in steps) of every pixel from ``start`` (0 on it)."""
    distance = np.zeros(start.shape, np.float32)
    reached, step = start.copy(), 0
    while not reached.all():
        step += 1
        grown = _grow(reached, diagonal=step % 2 == 0)
        if (grown == reached).all():  # nothing left to reach (cannot happen on a non-empty start)
            break
        distance[grown & ~reached] = step
        reached = grown
    return distance


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Approximate signed distance of a 2D bool mask: negative inside, positive outside, about ±0.5 at the edge."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    if mask.all():
        return np.full(mask.shape, -np.inf, np.float32)
    outside = _steps_to_reach(mask)
    inside = _steps_to_reach(~mask)
    return np.where(mask, 0.5 - inside, outside - 0.5).astype(np.float32)


def interpolate_between_slices(
    labels: np.ndarray, axis: int, annotated: Sequence[int]
) -> tuple[np.ndarray, list[int]]:
    """A copy of 3D ``labels`` with the gaps between consecutive ``annotated`` slices filled; and the filled slices.

    Only labels on both ends of a gap are carried; voxels already labelled are left as they are.
    """
    if labels.ndim != 3:
        raise ValueError(f"interpolation between slices needs a 3D label volume, got shape {labels.shape}")
    moved = np.moveaxis(labels, axis, 0)
    result = moved.copy()
    anchors = sorted({int(s) for s in annotated if 0 <= s < moved.shape[0]})
    filled: set[int] = set()
    for first, last in zip(anchors, anchors[1:], strict=False):
        if last - first < 2:
            continue
        start, end = moved[first], moved[last]
        common = np.intersect1d(np.unique(start[start != 0]), np.unique(end[end != 0]))
        for value in common:
            d_first, d_last = signed_distance(start == value), signed_distance(end == value)
            for index in range(first + 1, last):
                t = (index - first) / (last - first)
                inside = (1 - t) * d_first + t * d_last < 0
                empty = result[index] == 0
                if (inside & empty).any():
                    result[index][inside & empty] = value
                    filled.add(index)
    return np.moveaxis(result, 0, axis), sorted(filled)
