"""napari reader for NIfTI-1/2 (``.nii``, ``.nii.gz``, ``.hdr/.img``), Analyze, MGH (``.mgh``, ``.mgz``) and NRRD (``.nrrd``, ``.nhdr``).

One npe2 reader contribution (``napari-aunet.get_reader``). Every scan is shown on its nearest RAS axes
(see :mod:`napari_aunet._orientation`): world coordinates are scanner RAS mm, and the placement plus the
original affine and header travel in ``layer.metadata`` so the writer can save in file order.

A file becomes a Labels layer when :attr:`Scan.is_label_map` (integer-valued with few values), else an
Image layer. To force a type: ``viewer.open(path, plugin="napari-aunet", layer_type="labels")`` (napari
passes our data and the kwargs that fit to ``add_labels``) or, from code, :func:`read_scan` with
``layer_type=``, which also casts integral float data to integers for Labels.

Why one reader and not three (auto / image / labels): npe2 tries the compatible readers of a plugin in
the order of a ``set`` (string-hash order, random between processes), so with ``plugin="napari-aunet"``
(and in the GUI, whose reader dialog lists plugins, not readers) three readers with the same patterns
would give an image one day and labels the next.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._orientation import META_KEY, DisplayTransform, layer_kwargs_for, oblique_message
from .io import READ_SUFFIXES, Scan, ScanReadError, has_suffix, load_scan, scan_name

__all__ = ["napari_get_reader", "read_scan", "read_scans", "scan_layer_data", "scan_name"]

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: percentiles (%) of the finite voxels used as an image layer's contrast limits
CONTRAST_PERCENTILES = (0.5, 99.5)
#: a 4th axis up to this long that is not time is split into channel layers (``channel_axis``)
MAX_CHANNELS = 4
#: voxels sampled for the contrast percentiles
_CONTRAST_SAMPLE = 2_000_000
_TIME_UNITS = ("sec", "msec", "usec")
_NIFTI_INTENT_VECTOR = 1007


def napari_get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerDataTuple]] | None:
    """npe2 ``get_reader``: :func:`read_scans` when every path ends in one of our suffixes, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(has_suffix(p, READ_SUFFIXES) and not os.path.isdir(p) for p in paths):
        return None
    return read_scans


def read_scans(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """npe2 reader function: the layer-data tuples of one path or of each path of a list.

    A file that cannot be read raises :class:`~napari_aunet.io.ScanReadError` whose message is one plain
    line; ``viewer.open(..., plugin="napari-aunet")`` and napari's reader dialog pass it on as is. In
    File › Open, when napari-aunet is the only (``.mgz``) or the remembered reader, napari wraps it in a
    ReaderPluginError that starts "Tried to read PATH with plugin napari-aunet, because ... Try associating
    a different plugin" with our line at the very end; then the line is also shown as its own error
    notification.
    """
    from ._recovery import watch_current_viewer

    watch_current_viewer()  # offers edits an earlier session left of these scans, autosaves new ones
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerDataTuple] = []
    for p in paths:
        try:
            layers.extend(read_scan(p, notify=True))
        except ScanReadError as exc:
            if _napari_wraps_reader_errors():
                from napari.utils.notifications import show_error

                show_error(str(exc))
            raise
    return layers


def _napari_wraps_reader_errors() -> bool:
    """True when called under napari's ``ViewerModel._open_or_raise_error`` (which hides our message)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_open_or_raise_error" and frame.f_globals.get("__name__", "").startswith(
            "napari."
        ):
            return True
        frame = frame.f_back
    return False


def read_scan(
    path: str | os.PathLike,
    layer_type: str | None = None,
    *,
    name: str | None = None,
    notify: bool = False,
) -> list[LayerDataTuple]:
    """Load one file and return its napari layer-data tuples (see :func:`scan_layer_data`).

    Raises :class:`~napari_aunet.io.ScanReadError` (one plain line) for a file that cannot be read or
    cannot be shown as ``layer_type``.
    """
    scan = load_scan(path)
    try:
        return scan_layer_data(scan, layer_type, name=name, notify=notify)
    except ValueError as exc:
        raise ScanReadError(f"cannot read '{os.fspath(path)}': {exc}") from exc


def _is_time_axis(scan: Scan) -> bool:
    """Whether a 4-D scan's 4th axis is time (NIfTI time units / MGH frames) rather than channels."""
    hdr = scan.header
    if scan.format == "mgh":
        return True
    if hdr is None or not hasattr(hdr, "get_xyzt_units"):
        return False
    try:
        if int(hdr["dim"][0]) == 5 or int(hdr["intent_code"]) == _NIFTI_INTENT_VECTOR:
            return False
        return hdr.get_xyzt_units()[1] in _TIME_UNITS
    except (KeyError, ValueError, TypeError, IndexError):
        return False


def _contrast_limits(data: np.ndarray) -> list[float]:
    """Robust contrast limits: the 0.5 and 99.5 percentiles of the finite voxels (a strided sample)."""
    a = np.asarray(data)
    step = 1
    while a.size and np.prod([-(-n // step) for n in a.shape]) > _CONTRAST_SAMPLE:
        step += 1
    sample = a[(slice(None, None, step),) * a.ndim].ravel()
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.dtype.kind == "b":
        sample = sample.astype(np.uint8)
    if sample.size == 0:
        return [0.0, 1.0]
    lo, hi = (float(v) for v in np.percentile(sample, CONTRAST_PERCENTILES))
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:
        hi = lo + 1.0
    return [lo, hi]


def _as_label_dtype(data: np.ndarray) -> np.ndarray:
    """Integer labels for napari: bool -> uint8, integral floats -> the smallest unsigned type that fits."""
    if data.dtype.kind in "iu":
        return data
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all() or not np.all(data == np.round(data)):
            raise ValueError("it holds non-integral values and cannot be shown as labels")
        lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        if lo < 0:
            return data.astype(np.int32)
        return data.astype(np.uint8 if hi <= 255 else np.uint16 if hi <= 65535 else np.uint32)
    raise ValueError(f"its dtype {data.dtype} cannot be shown as labels")


def scan_layer_data(
    scan: Scan,
    layer_type: str | None = None,
    *,
    name: str | None = None,
    notify: bool = False,
) -> list[LayerDataTuple]:
    """napari layer-data tuples ``(data, kwargs, "image"|"labels")`` of a scan, placed on RAS axes.

    ``layer_type`` None picks Labels for a label map, else Image. Data is a view of ``scan.data`` in
    display order; 4-D scans ``(X, Y, Z, T)`` become ``(T, *display)`` with a time slider, except an image
    whose 4th axis is short (<= 4) and not time, which is split into one layer per channel. kwargs carry
    ``name``, ``scale``/``translate`` (mm), ``metadata`` (see :func:`~napari_aunet._orientation.layer_kwargs_for`)
    and, for images, ``contrast_limits`` (0.5-99.5 percentiles) / for labels ``opacity`` 0.5.
    ``notify`` shows a warning notification for an oblique scan.
    """
    if layer_type not in (None, "image", "labels"):
        raise ValueError(f"layer_type must be 'image' or 'labels', not {layer_type!r}")
    name = name or (scan_name(scan.path) if scan.path is not None else "scan")
    data = scan.data
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if layer_type is None:
        layer_type = "labels" if scan.is_label_map else "image"
    nsp = scan.spatial_ndim
    extra = data.ndim - nsp  # 0, or 1 for (X, Y, Z, T/C)
    channels = (
        extra == 1 and layer_type == "image" and data.shape[-1] <= MAX_CHANNELS and not _is_time_axis(scan)
    )
    leading = 0 if channels or extra == 0 else 1
    base = layer_kwargs_for(scan, scan.spatial_shape, leading=leading)
    dt = DisplayTransform.from_metadata(base["metadata"][META_KEY]["display"])
    if extra:
        data = np.moveaxis(data, -1, 0)  # (T|C, X, Y, Z)
    display = dt.to_display(data, leading=extra)

    if notify and base["metadata"][META_KEY]["oblique"]:
        from napari.utils.notifications import show_warning

        show_warning(oblique_message(name, scan.affine, nsp))

    if layer_type == "labels":
        kwargs = {"name": name, "opacity": 0.5, **base}
        return [(_as_label_dtype(display), kwargs, "labels")]

    if channels:
        n = display.shape[0]
        kwargs = {
            "name": [f"{name} [{c}]" for c in range(n)],
            "channel_axis": 0,
            "scale": base["scale"],
            "translate": base["translate"],
            "contrast_limits": [_contrast_limits(display[c]) for c in range(n)],
            "metadata": [{**base["metadata"], META_KEY: dict(base["metadata"][META_KEY])} for _ in range(n)],
        }
        return [(display, kwargs, "image")]
    # colormap: napari's Image default is "gray"; passing it would break `layer_type="labels"` forcing
    kwargs = {"name": name, "contrast_limits": _contrast_limits(display), **base}
    return [(display, kwargs, "image")]
