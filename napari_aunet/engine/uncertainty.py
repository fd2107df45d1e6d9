"""Uncertainty of a segmentation: the normalised entropy of its class probabilities, and the slice most worth
correcting next (the one holding the most uncertainty, i.e. the largest expected number of doubtful voxels)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalized_entropy(probabilities: np.ndarray) -> np.ndarray:
    """``(C, *spatial)`` probabilities -> entropy / log(C) per voxel, float16 in [0, 1] (1 = all classes equal)."""
    classes = probabilities.shape[0]
    if classes < 2:
        return np.zeros(probabilities.shape[1:], np.float16)
    entropy = np.zeros(probabilities.shape[1:], np.float32)
    for p in probabilities:  # class by class: no (C, *spatial) temporary
        p = np.clip(p.astype(np.float32, copy=False), 1e-7, 1.0)
        entropy -= p * np.log(p)
    return np.clip(entropy / np.log(classes), 0.0, 1.0).astype(np.float16)


def slice_uncertainty(entropy: np.ndarray, axis: int) -> np.ndarray:
    """Summed entropy of every slice along ``axis`` (float64)."""
    other = tuple(a for a in range(entropy.ndim) if a != axis)
    return entropy.astype(np.float64).sum(axis=other)


def most_uncertain_slice(entropy: np.ndarray, axis: int, exclude: Sequence[int] = ()) -> int | None:
    """The slice along ``axis`` with the most uncertainty, skipping ``exclude`` (e.g. slices already corrected)."""
    totals = slice_uncertainty(entropy, axis)
    for index in exclude:
        if 0 <= index < totals.size:
            totals[index] = -np.inf
    if not np.isfinite(totals).any() or totals.max() <= 0:
        return None
    return int(np.argmax(totals))
