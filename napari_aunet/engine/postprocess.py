"""Clean-ups of a label volume that users of brain tools expect (nnU-Net's "largest component" step, a brain mask).

Both work on the union of the non-background classes; connectivity is by faces (6 neighbours in 3D), so a thin
bridge of a voxel's edge does not join the brain to a blob in the neck.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component(labels: np.ndarray) -> np.ndarray:
    """``labels`` with every labelled voxel outside the largest connected group of labelled voxels set to 0."""
    foreground = labels > 0
    groups, count = ndimage.label(foreground)
    if count <= 1:
        return labels
    sizes = np.bincount(groups.ravel())
    sizes[0] = 0
    return np.where(groups == int(sizes.argmax()), labels, 0).astype(labels.dtype, copy=False)


def brain_mask(labels: np.ndarray) -> np.ndarray:
    """uint8 mask (1 = brain) from a tissue map: the largest connected group of labelled voxels, holes filled."""
    return ndimage.binary_fill_holes(largest_component(labels) > 0).astype(np.uint8)
