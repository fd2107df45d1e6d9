"""Display placement of scans in napari: a lossless permute/flip to the nearest RAS axes.

Files, the engine and the CLI work on arrays in the file's own axis order with the file's 4x4 affine
(voxel index -> scanner world mm). The GUI shows every scan the same way: display axis 0 runs along R
(left -> right), 1 along A, 2 along S (for 2-D files: the two world axes the file's axes lie along, in
R, A, S order). The layer gets ``scale`` = voxel spacing (mm) and ``translate`` = world position (mm) of
display voxel (0, 0, 0), so napari's world coordinates are scanner RAS mm and grids of any resolution
(e.g. coarse attention maps whose affine is ``A @ [[diag(s), offset], [0, 1]]``) line up by construction.

An oblique affine is placed on its nearest axes: its rotation is not drawn (see :func:`oblique_message`).

numpy and nibabel only; napari is never imported here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel.orientations import io_orientation

__all__ = [
    "DisplayTransform",
    "display_affine",
    "display_placement",
    "display_transform",
    "display_world_axes",
    "file_order",
    "is_oblique",
    "layer_kwargs_for",
    "oblique_angle",
    "oblique_message",
]

#: tolerance on direction cosines below which an affine counts as not oblique (same as io.scan)
OBLIQUE_TOL = 1e-3
#: ``layer.metadata`` key of the placement record (a JSON-able dict)
META_KEY = "aunet"
#: ``layer.metadata`` key of the nibabel header object (or None)
HEADER_KEY = "aunet_header"


@dataclass(frozen=True)
class DisplayTransform:
    """How a file-ordered array is permuted and flipped for display.

    Display axis ``i`` shows file axis ``axes[i]``, reversed when ``flips[i]`` (the file axis runs
    against R/A/S). ``file_shape`` is the spatial shape in file order.
    """

    axes: tuple[int, ...]
    flips: tuple[bool, ...]
    file_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.axes)
        if sorted(self.axes) != list(range(n)) or len(self.flips) != n or len(self.file_shape) != n:
            raise ValueError(f"invalid display transform: axes {self.axes}, flips {self.flips}, "
                             f"file shape {self.file_shape}")

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return len(self.axes)

    @property
    def display_shape(self) -> tuple[int, ...]:
        """Spatial shape in display order."""
        return tuple(self.file_shape[a] for a in self.axes)

    @property
    def is_identity(self) -> bool:
        return self.axes == tuple(range(self.ndim)) and not any(self.flips)

    def _check(self, array: np.ndarray, leading: int, shape: tuple[int, ...], what: str) -> None:
        if array.ndim < leading + self.ndim:
            raise ValueError(f"array of shape {array.shape} has fewer than {leading} + {self.ndim} axes")
        got = tuple(array.shape[leading : leading + self.ndim])
        if 0 not in shape and got != shape:  # a zero file_shape means "not recorded"
            raise ValueError(f"spatial shape {got} of the array does not match the {what} shape {shape}")

    def to_display(self, array: np.ndarray, leading: int = 0) -> np.ndarray:
        """File order -> display order, as a view (transpose + flip).

        ``array`` has ``leading`` non-spatial axes in front (time, channels), then the spatial axes in
        file order, then any trailing axes; only the spatial axes are moved.
        """
        a = np.asarray(array)
        self._check(a, leading, self.file_shape, "file")
        perm = list(range(a.ndim))
        perm[leading : leading + self.ndim] = [leading + ax for ax in self.axes]
        out = a.transpose(perm)
        index = [slice(None)] * a.ndim
        for i, flip in enumerate(self.flips):
            if flip:
                index[leading + i] = slice(None, None, -1)
        return out[tuple(index)]

    def from_display(self, array: np.ndarray, leading: int = 0) -> np.ndarray:
        """Display order -> file order, the exact inverse of :meth:`to_display` (a view)."""
        a = np.asarray(array)
        self._check(a, leading, self.display_shape, "display")
        index = [slice(None)] * a.ndim
        for i, flip in enumerate(self.flips):
            if flip:
                index[leading + i] = slice(None, None, -1)
        a = a[tuple(index)]
        inverse = np.argsort(self.axes)
        perm = list(range(a.ndim))
        perm[leading : leading + self.ndim] = [leading + int(i) for i in inverse]
        return a.transpose(perm)

    def to_metadata(self) -> dict[str, list]:
        """Plain JSON-able dict: ``{"axes": [...], "flips": [...], "file_shape": [...]}``."""
        return {
            "axes": [int(a) for a in self.axes],
            "flips": [bool(f) for f in self.flips],
            "file_shape": [int(n) for n in self.file_shape],
        }

    @classmethod
    def from_metadata(cls, d: Mapping[str, Sequence]) -> DisplayTransform:
        return cls(
            axes=tuple(int(a) for a in d["axes"]),
            flips=tuple(bool(f) for f in d["flips"]),
            file_shape=tuple(int(n) for n in d["file_shape"]),
        )

    @classmethod
    def identity(cls, file_shape: Sequence[int]) -> DisplayTransform:
        n = len(file_shape)
        return cls(tuple(range(n)), (False,) * n, tuple(int(s) for s in file_shape))


def _as_affine(affine: np.ndarray) -> np.ndarray:
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    return aff


def _orientation(affine: np.ndarray, ndim: int) -> np.ndarray:
    """``(ndim, 2)`` array: world axis (0=R, 1=A, 2=S) and direction (+1/-1) of each file axis.

    Uses :func:`nibabel.orientations.io_orientation` on the affine's first ``ndim`` columns; a
    degenerate (zero) column gets the first unused world axis, direction +1.
    """
    if ndim not in (2, 3):
        raise ValueError(f"scans have 2 or 3 spatial axes, not {ndim}")
    aff = _as_affine(affine)
    ornt = io_orientation(aff[:, [*range(ndim), 3]])
    used = {int(w) for w in ornt[:, 0] if np.isfinite(w)}
    free = [w for w in range(3) if w not in used]
    for i in range(ndim):
        if not np.isfinite(ornt[i, 0]):
            ornt[i] = (free.pop(0), 1.0)
    return ornt


def display_world_axes(affine: np.ndarray, ndim: int) -> tuple[int, ...]:
    """World axes (0=R, 1=A, 2=S) that the display axes run along: (0, 1, 2) for 3-D files."""
    ornt = _orientation(affine, ndim)
    return tuple(sorted(int(w) for w in ornt[:, 0]))


def display_transform(affine: np.ndarray, ndim: int | Sequence[int]) -> DisplayTransform:
    """The permute/flip that shows a file with ``affine`` on its nearest RAS axes.

    ``ndim`` is the number of spatial axes (2 or 3) or the spatial shape in file order (then
    ``file_shape`` is filled in; with a bare ``ndim`` it is all zeros, fine for :meth:`to_metadata` but not
    for :meth:`DisplayTransform.to_display`).
    """
    if isinstance(ndim, (int, np.integer)):
        shape: tuple[int, ...] = (0,) * int(ndim)
    else:
        shape = tuple(int(n) for n in ndim)
    n = len(shape)
    ornt = _orientation(affine, n)
    order = sorted(range(n), key=lambda i: ornt[i, 0])  # file axes sorted by world axis
    return DisplayTransform(
        axes=tuple(order),
        flips=tuple(bool(ornt[i, 1] < 0) for i in order),
        file_shape=shape,
    )


def display_placement(
    affine: np.ndarray, shape: Sequence[int]
) -> tuple[DisplayTransform, tuple[float, ...], tuple[float, ...]]:
    """Display transform, napari ``scale`` and ``translate`` (mm) of a grid with ``affine``.

    ``shape`` is the spatial shape in file order (2 or 3 values). ``scale[i]`` is the voxel size along
    display axis ``i`` (the norm of the affine's column of file axis ``axes[i]``); ``translate`` holds
    the world coordinates, along the display's world axes (R, A, S), of the file voxel that lands at
    display index 0. For a non-oblique affine, world(display index j) = translate + j * scale is
    exactly ``affine @ file_index``.
    """
    shape = tuple(int(n) for n in shape)
    aff = _as_affine(affine)
    dt = display_transform(aff, shape)
    world_axes = display_world_axes(aff, dt.ndim)
    norms = np.linalg.norm(aff[:3, : dt.ndim], axis=0)
    scale = tuple(float(norms[a]) if norms[a] > 0 else 1.0 for a in dt.axes)
    first = np.zeros(4)
    first[3] = 1.0
    for a, flip in zip(dt.axes, dt.flips, strict=True):
        first[a] = shape[a] - 1 if flip else 0
    world = aff @ first
    translate = tuple(float(world[w]) for w in world_axes)
    return dt, scale, translate


def display_affine(scale: Sequence[float], translate: Sequence[float]) -> np.ndarray:
    """4x4 voxel -> world affine (RAS mm) of an array in display order placed by ``scale``/``translate``.

    Used for layers that have no file geometry (e.g. drawn from scratch); 2-D gets a 1 on the z diagonal.
    """
    n = len(scale)
    if n not in (2, 3) or len(translate) != n:
        raise ValueError(f"need 2 or 3 spatial scale/translate values, got {len(scale)}/{len(translate)}")
    aff = np.eye(4)
    aff[:n, :n] = np.diag(np.asarray(scale, dtype=np.float64))
    aff[:n, 3] = np.asarray(translate, dtype=np.float64)
    return aff


def _largest_direction_cosines(affine: np.ndarray, ndim: int) -> np.ndarray:
    """Per file axis, |cosine| of the angle to the world axis it runs closest to (1 = exactly along it)."""
    cols = _as_affine(affine)[:3, :ndim]
    norms = np.linalg.norm(cols, axis=0)
    norms[norms == 0] = 1.0
    return np.abs(cols / norms).max(axis=0)


def oblique_angle(affine: np.ndarray, ndim: int = 3) -> float:
    """Largest angle (degrees) between a file axis and the world axis it is displayed along."""
    cosines = _largest_direction_cosines(affine, ndim)
    return float(np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))).max())


def is_oblique(affine: np.ndarray, ndim: int = 3) -> bool:
    """True when a direction cosine is more than 1e-3 from +-1 (the rotation is not a permute/flip)."""
    return bool(np.any(np.abs(_largest_direction_cosines(affine, ndim) - 1.0) > OBLIQUE_TOL))


def oblique_message(name: str, affine: np.ndarray, ndim: int = 3) -> str:
    """One plain line for the notification shown when an oblique scan is opened."""
    angle = oblique_angle(affine, ndim)
    return (
        f"'{name}' is oblique: shown on its nearest axes, the rotation of {angle:.1f}° is not drawn; "
        "saving keeps the original affine"
    )


def layer_kwargs_for(
    scan_or_affine: Any,
    shape: Sequence[int] | None = None,
    *,
    leading: int = 0,
    source: str | os.PathLike | None = None,
    format: str | None = None,
    header: Any = None,
) -> dict[str, Any]:
    """napari layer kwargs ``scale``, ``translate`` and ``metadata`` for a grid in file order.

    ``scan_or_affine`` is an :class:`napari_aunet.io.Scan` (its affine, header, path and format are
    used unless given here) or a 4x4 affine. ``shape`` is the spatial shape in file order (default: the
    scan's). ``leading`` extra axes in front of the layer data (time) get scale 1 and translate 0.

    ``metadata["aunet"]`` = ``{"affine": 4x4 list (file order), "display": DisplayTransform.to_metadata(),
    "source": path str or None, "format": str, "oblique": bool}``; ``metadata["aunet_header"]`` = the
    nibabel header object or None. The layer data itself is ``transform.to_display(file_array, leading)``.
    """
    if isinstance(scan_or_affine, np.ndarray) or isinstance(scan_or_affine, (list, tuple)):
        affine = _as_affine(np.asarray(scan_or_affine))
        fmt = format or "array"
        hdr = header
        src = source
        if shape is None:
            raise ValueError("shape is needed when an affine is given")
    else:
        scan = scan_or_affine
        affine = _as_affine(scan.affine)
        fmt = format or scan.format
        hdr = header if header is not None else scan.header
        src = source if source is not None else scan.path
        if shape is None:
            shape = scan.spatial_shape
    shape = tuple(int(n) for n in shape)
    dt, scale, translate = display_placement(affine, shape)
    meta = {
        "affine": affine.tolist(),
        "display": dt.to_metadata(),
        "source": None if src is None else os.fspath(src),
        "format": str(fmt),
        "oblique": is_oblique(affine, dt.ndim),
    }
    return {
        "scale": (1.0,) * leading + scale,
        "translate": (0.0,) * leading + translate,
        "metadata": {META_KEY: meta, HEADER_KEY: hdr},
    }


def display_of(metadata: Mapping[str, Any] | None) -> DisplayTransform | None:
    """The :class:`DisplayTransform` recorded in a layer's metadata, or None."""
    if not metadata or META_KEY not in metadata:
        return None
    rec = metadata[META_KEY]
    if not isinstance(rec, Mapping) or "display" not in rec:
        return None
    return DisplayTransform.from_metadata(rec["display"])


def file_order(layer_data: np.ndarray, metadata: Mapping[str, Any] | None) -> np.ndarray:
    """Undo the display transform of a layer's data: back to file order (a view).

    ``metadata`` is ``layer.metadata``; without an ``"aunet"`` entry the data is returned unchanged.
    Axes in front of the spatial ones (time) stay in front.
    """
    a = np.asarray(layer_data)
    dt = display_of(metadata)
    if dt is None:
        return a
    return dt.from_display(a, leading=a.ndim - dt.ndim)
