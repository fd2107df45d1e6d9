"""Where an output grid sits on the input grid.

Every array the engine returns carries a :class:`GridGeometry`: the size of one of its cells and the
position of its first cell's centre, both in voxels of the input array. A map at attention level ``k`` of
a network with 2x2 max-pooling has cells ``s = 2**(k-1)`` input voxels wide whose centres sit at
``(s - 1) / 2``: cell ``i`` covers input voxels ``[i*s, (i+1)*s)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridGeometry:
    """Placement of an output grid on the input grid, per axis, in input voxels."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @classmethod
    def identity(cls, ndim: int) -> GridGeometry:
        return cls((1.0,) * ndim, (0.0,) * ndim)

    @classmethod
    def pooled(cls, ndim: int, factor: int, axes: tuple[int, ...] | None = None) -> GridGeometry:
        """A grid ``factor`` times coarser along ``axes`` (all axes when None)."""
        axes = tuple(range(ndim)) if axes is None else axes
        scale = tuple(float(factor) if axis in axes else 1.0 for axis in range(ndim))
        offset = tuple((s - 1.0) / 2.0 for s in scale)
        return cls(scale, offset)

    def then(self, outer: GridGeometry) -> GridGeometry:
        """This grid placed on ``outer``'s input, when this geometry is relative to ``outer``'s grid."""
        return GridGeometry(
            tuple(o * s for o, s in zip(outer.scale, self.scale, strict=True)),
            tuple(o * off + o_off for o, off, o_off in zip(outer.scale, self.offset, outer.offset, strict=True)),
        )

    def affine(self, input_affine: np.ndarray) -> np.ndarray:
        """Voxel-to-world affine of this grid, given the input's ``(ndim+1, ndim+1)`` or 4x4 affine."""
        input_affine = np.asarray(input_affine, dtype=np.float64)
        size = input_affine.shape[0] - 1
        grid_to_input = np.eye(size + 1)
        for axis, (scale, offset) in enumerate(zip(self.scale, self.offset, strict=True)):
            grid_to_input[axis, axis] = scale
            grid_to_input[axis, size] = offset
        return input_affine @ grid_to_input

    def world(self, spacing: tuple[float, ...], origin: tuple[float, ...]) -> tuple[tuple, tuple]:
        """napari ``(scale, translate)`` of this grid for an input shown with ``spacing`` and ``origin``."""
        scale = tuple(float(c * s) for c, s in zip(self.scale, spacing, strict=True))
        translate = tuple(float(o + off * s) for o, off, s in zip(origin, self.offset, spacing, strict=True))
        return scale, translate
