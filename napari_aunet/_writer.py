"""napari writers: a Labels or Image layer -> NIfTI-1 (``.nii.gz`` / ``.nii``), in the file's own order.

A layer opened by our reader (or built by our widgets) carries ``metadata["aunet"]`` (see
:mod:`napari_aunet._orientation`): its data is permuted/flipped back to file order and written with
the original affine and header (qform/sform codes kept). A layer without it (drawn from scratch, opened by
another reader) is written in display order with the affine ``diag(scale)`` + ``translate`` (RAS mm).

Errors reach the user as :class:`LayerSaveError`, one plain line. It is deliberately not a ValueError:
napari's ``save_layers`` catches ValueError from a writer and replaces it by "No data written! A plugin
could not be found ..." (or "... is not a valid writer"), which hides the reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._orientation import HEADER_KEY, META_KEY, display_affine, display_of, file_order
from .io import NIFTI_SUFFIXES, Scan, ScanWriteError, has_suffix, save_image, save_labels

__all__ = ["LayerSaveError", "layer_file_data", "write_image", "write_labels"]

DEFAULT_SUFFIX = ".nii.gz"


class LayerSaveError(OSError):
    """A layer could not be saved; the message is one line naming the file and the problem."""


def _target(path: str | os.PathLike) -> str:
    """The path to write: ``.nii.gz`` appended when the name has no suffix at all."""
    p = os.fspath(path)
    if not Path(p).suffix and not has_suffix(p, NIFTI_SUFFIXES):
        p += DEFAULT_SUFFIX
    return p


def layer_file_data(
    data: Any, attributes: dict[str, Any], *, labels: bool
) -> tuple[np.ndarray, Scan | None, np.ndarray | None]:
    """A layer's data in file order and the geometry to write it with.

    Returns ``(array, reference, affine)``: for a layer with ``metadata["aunet"]``, the array in file
    order (a leading time axis moved to the end: ``(X, Y, Z, T)``) and a reference :class:`Scan` with
    the original affine, header and format (affine None); otherwise the display-ordered array, no
    reference and the affine ``diag(scale) + translate``. Raises ValueError for data that does not fit
    its recorded geometry.
    """
    if isinstance(data, (list, tuple)):  # multiscale: write the full-resolution level
        data = data[0]
    arr = np.asarray(data)
    metadata = attributes.get("metadata") or {}
    dt = display_of(metadata)
    if dt is not None:
        rec = metadata[META_KEY]
        arr = file_order(arr, metadata)
        if arr.ndim == dt.ndim + 1:
            arr = np.moveaxis(arr, 0, -1)
        spatial_ndim = dt.ndim
        header = metadata.get(HEADER_KEY)
        affine = np.asarray(rec["affine"], dtype=np.float64)
        dummy = np.broadcast_to(np.zeros((), dtype=np.uint8), tuple(arr.shape[:spatial_ndim]))
        reference = Scan(data=dummy, affine=affine, header=header, path=None, format=str(rec.get("format", "array")))
        return arr, reference, None
    nsp = arr.ndim if arr.ndim <= 3 else 3
    if labels and arr.ndim > 3:
        raise ValueError(f"labels must be 2-D or 3-D, got shape {arr.shape}")
    scale = tuple(attributes.get("scale") or (1.0,) * arr.ndim)[-nsp:]
    translate = tuple(attributes.get("translate") or (0.0,) * arr.ndim)[-nsp:]
    if arr.ndim == 4:
        arr = np.moveaxis(arr, 0, -1)
    return arr, None, display_affine(scale, translate)


def _write(path: str, data: Any, attributes: dict[str, Any], *, labels: bool) -> list[str]:
    target = _target(path)
    try:
        arr, reference, affine = layer_file_data(data, attributes, labels=labels)
        saver = save_labels if labels else save_image
        written = saver(target, arr, reference=reference, affine=affine)
    except ScanWriteError as exc:
        raise LayerSaveError(str(exc)) from exc
    except (ValueError, TypeError) as exc:
        raise LayerSaveError(" ".join(f"cannot write '{target}': {exc}".split())) from exc
    if labels:
        from ._recovery import forget_saved

        forget_saved(data, attributes)  # saved: its autosaved copy is no longer needed
    return [os.fspath(written)]


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 writer for one Labels layer: NIfTI-1 uint8/uint16 labels in file order. Returns ``[path]``."""
    return _write(path, data, attributes, labels=True)


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 writer for one Image layer: NIfTI-1 in file order (float32 for floats). Returns ``[path]``."""
    return _write(path, data, attributes, labels=False)
