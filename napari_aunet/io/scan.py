"""Reading and writing medical scans (NIfTI-1/2, Analyze, MGH) without touching their axis order.

Everything here works in the file's own array order exactly as nibabel loads it: nothing is ever
reoriented, permuted or resampled (the GUI handles display orientation). Arrays are indexed
``data[i, j, k, ...]`` with the voxel-to-world mapping given by the 4x4 ``affine`` (world units mm).

Only nibabel, numpy and the standard library are imported here (no torch, Qt or napari).
"""

from __future__ import annotations

import errno
import gzip
import math
import os
import re
import secrets
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.freesurfer.mghformat import MGHImage
from nibabel.nifti1 import Nifti1Header, Nifti1Pair
from nibabel.nifti2 import Nifti2Image, Nifti2Pair

__all__ = [
    "NIFTI_SUFFIXES",
    "scan_name",
    "READ_SUFFIXES",
    "Scan",
    "ScanReadError",
    "ScanWriteError",
    "has_suffix",
    "load_scan",
    "save_image",
    "save_labels",
    "scan_from_array",
]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
READ_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".hdr", ".img", ".mgz", ".mgh", ".nrrd", ".nhdr")

#: at most this many voxels are inspected by :attr:`Scan.is_label_map`
_LABEL_SAMPLE_VOXELS = 1_000_000
#: a label map has at most this many distinct values
_MAX_LABELS = 256
#: up to this many distinct (non-negative, integral) values an array always counts as a label map
_FEW_LABELS = 16
#: tolerance on direction cosines for :attr:`Scan.is_oblique`
_OBLIQUE_TOL = 1e-3


class ScanReadError(ValueError):
    """A scan file could not be read; the message is one line naming the file and the problem."""


class ScanWriteError(ValueError):
    """A scan file could not be written; the message is one line naming the file and the problem."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _read_error(path: str | os.PathLike, reason: str) -> ScanReadError:
    return ScanReadError(_one_line(f"cannot read '{os.fspath(path)}': {reason}"))


def _write_error(path: str | os.PathLike, reason: str) -> ScanWriteError:
    return ScanWriteError(_one_line(f"cannot write '{os.fspath(path)}': {reason}"))


def has_suffix(path: str | os.PathLike, suffixes: Sequence[str] | str) -> bool:
    """True when the file name ends with one of ``suffixes`` (case-insensitive).

    Compares whole name endings, so double suffixes work: ``x.nii.gz`` has ``.nii.gz`` but not
    ``.nii``. A name that is nothing but the suffix (``.nii``) does not count.
    """
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    name = Path(os.fspath(path)).name.lower()
    return any(name.endswith(s.lower()) and len(name) > len(s) for s in suffixes)


def scan_name(path: str | os.PathLike) -> str:
    """File name without its scan suffix: ``brain.nii.gz`` -> ``brain``."""
    name = Path(os.fspath(path)).name
    for suffix in sorted(READ_SUFFIXES, key=len, reverse=True):
        if has_suffix(name, (suffix,)):
            return name[: len(name) - len(suffix)]
    return name


def _matching_suffix(path: str | os.PathLike, suffixes: Sequence[str]) -> str | None:
    """The longest suffix of ``suffixes`` that ``path`` ends with, as spelled in the path."""
    name = Path(os.fspath(path)).name
    best: str | None = None
    for s in suffixes:
        if has_suffix(path, (s,)) and (best is None or len(s) > len(best)):
            best = name[len(name) - len(s) :]
    return best


@dataclass(frozen=True, eq=False)
class Scan:
    """A scan volume in its file's own array order.

    Attributes
    ----------
    data
        Voxels, shape ``(X, Y)``, ``(X, Y, Z)`` or ``(X, Y, Z, C)`` in the file's axis order (never
        reoriented; NIfTI arrays come back Fortran-ordered in memory, as nibabel gives them). The dtype is
        the file's own (in native byte order) when the file has no intensity scaling; scaled files
        (``scl_slope``/``scl_inter`` other than 1/0) come back as float32.
    affine
        ``(4, 4)`` float64 mapping voxel indices ``(i, j, k, 1)`` to world coordinates in mm
        (for NIfTI the one ``img.affine`` gives: sform if its code > 0, else qform, else pixdim).
    header
        A copy of the nibabel header, or None when built from an array. (nibabel "consumes" the
        scaling on load, so a NIfTI header here has scl_slope/scl_inter NaN; the scaling is already
        applied to ``data``.)
    path
        The file it came from, or None.
    format
        ``"nifti1"``, ``"nifti2"``, ``"analyze"``, ``"mgh"``, ``"nrrd"`` or ``"array"``.

    Equality is identity (``eq=False``): arrays do not compare to a single bool.
    """

    data: np.ndarray
    affine: np.ndarray
    header: object | None = None
    path: Path | None = None
    format: str = "array"

    @property
    def spatial_ndim(self) -> int:
        """Number of spatial axes: 2 for 2-D data, else 3 (a 4-D array is 3 spatial axes + 1 extra)."""
        return 2 if self.data.ndim <= 2 else 3

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes (the first :attr:`spatial_ndim` axes of :attr:`data`)."""
        return tuple(int(n) for n in self.data.shape[: self.spatial_ndim])

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm per spatial axis: norms of the affine's first 3 (2 for 2-D) columns."""
        norms = np.linalg.norm(np.asarray(self.affine, dtype=np.float64)[:3, :3], axis=0)
        return tuple(float(v) for v in norms[: self.spatial_ndim])

    @property
    def orientation(self) -> tuple[str, ...]:
        """Axis codes of the array axes in world space, e.g. ``("R", "A", "S")`` (``nib.aff2axcodes``)."""
        return tuple(nib.aff2axcodes(self.affine))

    @property
    def is_oblique(self) -> bool:
        """True when the affine's rotation is not a pure permutation/flip of the world axes.

        Each normalised column of ``affine[:3, :3]`` must have one component within 1e-3 of +-1
        (and so the others near 0) for the scan to count as not oblique.
        """
        return _is_oblique(self.affine)

    @cached_property
    def is_label_map(self) -> bool:
        """Heuristic guess whether :attr:`data` holds integer labels rather than intensities.

        Rules, applied to at most ~1e6 voxels (a strided sample of the whole array for the value
        statistics, and a few full-resolution planes of the first volume for the neighbour test):

        * bool data is a label map; complex or empty data is not;
        * values must be integral (integer dtype, or float whose sampled values are all finite
          integers) and non-negative;
        * at most 256 distinct values;
        * up to 16 distinct values is always a label map (masks, a few classes);
        * 17..256 distinct values must also look piecewise constant, not like a wide intensity
          range: among neighbouring voxel pairs that are not both background (the most common value),
          at least half must be equal, and the unequal pairs must not be mostly +-1 steps (which is
          what a smooth quantised intensity ramp looks like).
        """
        return _guess_label_map(self.data)


def _is_oblique(affine: np.ndarray, tol: float = _OBLIQUE_TOL) -> bool:
    rot = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(rot, axis=0)
    norms[norms == 0] = 1.0
    cosines = np.abs(rot / norms)
    return bool(np.any(np.abs(cosines.max(axis=0) - 1.0) > tol))


# ----------------------------------------------------------------------------------------------------
# label-map heuristic


def _strided_sample(a: np.ndarray, max_voxels: int = _LABEL_SAMPLE_VOXELS) -> np.ndarray:
    """A view of ``a`` with the same step on every axis, holding at most about ``max_voxels`` voxels."""
    if a.size <= max_voxels:
        return a
    step = max(1, math.ceil((a.size / max_voxels) ** (1.0 / a.ndim)))
    while math.prod(math.ceil(n / step) for n in a.shape) > max_voxels:
        step += 1
    return a[(slice(None, None, step),) * a.ndim]


def _plane_sample(a: np.ndarray, max_voxels: int = _LABEL_SAMPLE_VOXELS) -> np.ndarray:
    """Full-resolution 2-D planes ``(X, Y, n)`` (or one ``(X, Y)`` plane) of the first volume."""
    if a.ndim > 3:
        a = a[(Ellipsis,) + (0,) * (a.ndim - 3)]
    if a.ndim == 1:
        return a[:, None]
    plane = a.shape[0] * a.shape[1]
    if plane > max_voxels:
        step = math.ceil(math.sqrt(plane / max_voxels))
        a = a[::step, ::step]
        plane = a.shape[0] * a.shape[1]
    if a.ndim == 3:
        n_planes = max(1, min(a.shape[2], max_voxels // max(plane, 1)))
        idx = np.unique(np.linspace(0, a.shape[2] - 1, n_planes).round().astype(int))
        a = a[:, :, idx]
    return a


def _guess_label_map(data: np.ndarray) -> bool:
    a = np.asarray(data)
    if a.size == 0 or a.dtype.kind == "c":
        return False
    if a.dtype.kind == "b":
        return True
    if a.dtype.kind not in "iuf":
        return False
    sample = np.asarray(_strided_sample(a)).ravel()
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(sample)) or not np.all(sample == np.round(sample)):
            return False
    values, counts = np.unique(sample, return_counts=True)
    if values[0] < 0 or len(values) > _MAX_LABELS:
        return False
    if len(values) <= _FEW_LABELS:
        return True
    background = values[np.argmax(counts)]
    planes = _plane_sample(a).astype(np.float64)
    pairs = [
        (planes[1:], planes[:-1]),
        (planes[:, 1:], planes[:, :-1]),
    ]
    n_fg = n_equal = n_unit = 0
    for x, y in pairs:
        fg = (x != background) | (y != background)
        xs, ys = x[fg], y[fg]
        n_fg += xs.size
        n_equal += int(np.count_nonzero(xs == ys))
        n_unit += int(np.count_nonzero(np.abs(xs - ys) == 1))
    if n_fg == 0:
        return True
    n_unequal = n_fg - n_equal
    if n_equal < 0.5 * n_fg:
        return False
    return not (n_unequal > 0 and n_unit >= 0.9 * n_unequal)


# ----------------------------------------------------------------------------------------------------
# reading


def _image_format(img: object) -> str | None:
    if isinstance(img, (Nifti2Image, Nifti2Pair)):
        return "nifti2"
    if isinstance(img, Nifti1Pair):  # Nifti1Image is a subclass
        return "nifti1"
    if isinstance(img, MGHImage):
        return "mgh"
    if isinstance(img, nib.AnalyzeImage):
        return "analyze"
    return None


def _gzip_problem(path: Path) -> str | None:
    """Why a gzip file cannot be fully decompressed, or None if it can."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except EOFError:
        return "gzip data is truncated"
    except (gzip.BadGzipFile, zlib.error):
        return "not valid gzip data"
    except OSError as exc:
        return _one_line(str(exc)) or type(exc).__name__
    return None


def _is_gzip(path: Path) -> bool:
    return has_suffix(path, (".gz", ".mgz"))


_EXPECTED_BYTES = re.compile(r"Expected (\d+) bytes, got (\d+) bytes")


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux /proc/meminfo, else the free pages); None when unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


DEFLATE_MAX_RATIO = 1032  # deflate never expands a stream more than this (zlib's documented limit)


def _gzip_size(path: Path) -> int | None:
    """The uncompressed size a gzip file records in its last 4 bytes (modulo 4 GiB): a bounded read."""
    try:
        with open(path, "rb") as stream:
            stream.seek(-4, os.SEEK_END)
            return int.from_bytes(stream.read(4), "little")
    except OSError:
        return None


def _size_problem(img, path: Path) -> str | None:
    """Why the header's voxel data cannot be read — more memory than is available, or more bytes than the file
    holds — decided from the header and the file's size alone, before allocating anything; None when it fits."""
    try:
        shape = tuple(int(n) for n in img.shape)
        itemsize = np.dtype(img.get_data_dtype()).itemsize
    except Exception:  # a header nibabel cannot describe: left to the read's own error
        return None
    voxels = math.prod(shape)
    needed = voxels * itemsize
    scaled = getattr(img.dataobj, "slope", 1.0) != 1.0 or getattr(img.dataobj, "inter", 0.0) != 0.0
    in_memory = needed + (voxels * 4 if scaled else 0)  # the file's values, and float32 when scaled
    size = " × ".join(map(str, shape))
    available = _available_memory()
    if available is not None and in_memory > available:
        return (f"the header asks for {size} voxels ({in_memory / 1e9:.1f} GB in memory), more than the "
                f"{available / 1e9:.1f} GB available; the header may be corrupt")
    offset = int(getattr(img.dataobj, "offset", 0) or 0)
    data_file = img.file_map["image"].filename if "image" in img.file_map else None
    if not data_file or not isinstance(img, nib.analyze.AnalyzeImage):
        return None
    data_path = Path(data_file)
    if data_path.suffix.lower() == ".gz":
        stored = _gzip_size(data_path)
        if data_path.is_file() and offset + needed > DEFLATE_MAX_RATIO * data_path.stat().st_size:
            return (f"the header asks for {size} voxels ({needed:,} bytes), more than a {data_path.stat().st_size:,}-"
                    "byte compressed file can hold: it is truncated or its header is corrupt")
        if stored is not None and offset + needed < 2**32 and stored < offset + needed:
            return (f"the header asks for {size} voxels ({needed:,} bytes) but the compressed file holds "
                    f"{max(0, stored - offset):,}: it is truncated or its header is corrupt")
    elif data_path.is_file() and data_path.stat().st_size < offset + needed:
        held = max(0, data_path.stat().st_size - offset)
        return (f"the header asks for {size} voxels ({needed:,} bytes) but the file holds {held:,}: it is "
                "truncated or its header is corrupt")
    return None


def _load_reason(exc: BaseException, path: Path) -> str:
    """A plain one-line reason for a nibabel failure (never nibabel's traceback text)."""
    msg = _one_line(str(exc))
    not_ours = "not a NIfTI/Analyze/MGH file"
    if isinstance(exc, MemoryError):
        return "not enough memory for the voxel data (the header may be corrupt)"
    if isinstance(exc, EOFError):
        return "file is truncated: voxel data ends early (gzip data is truncated)"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return f"{not_ours} (not valid gzip data)"
    m = _EXPECTED_BYTES.search(msg)
    if m:
        return f"file is truncated: voxel data ends early (expected {m.group(1)} bytes, got {m.group(2)})"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, nib.filebasedimages.ImageFileError):
        detail = _gzip_problem(path) if _is_gzip(path) else None
        if detail is None and "not a gzip file" in msg:
            detail = "not valid gzip data"
        if detail is None:
            try:
                if not _is_gzip(path) and path.stat().st_size < 348:
                    detail = "file is too short for a header"
            except OSError:
                pass
        return f"{not_ours} ({detail})" if detail else not_ours
    if isinstance(exc, nib.spatialimages.HeaderDataError):
        return f"invalid header ({msg})" if msg else "invalid header"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _companion(path: Path, want: str) -> Path | None:
    """The ``.img`` for a ``.hdr`` (or the other way round), trying the suffix in both cases."""
    stem = path.name[: -len(path.suffix)]
    for suffix in (want.lower(), want.upper()):
        cand = path.with_name(stem + suffix)
        if cand.is_file():
            return cand
    return None


def _mixed_case_suffix(path: Path) -> bool:
    """True for suffixes like ``.Nii`` that nibabel rewrites to lower case (and then cannot find)."""
    suffix = _matching_suffix(path, READ_SUFFIXES)
    return suffix is not None and suffix not in (suffix.lower(), suffix.upper())


def _load_mixed_case(path: Path) -> object:
    """Load a single-file NIfTI/MGH whose suffix nibabel would mangle, from its bytes."""
    lower = path.name.lower()
    if lower.endswith((".hdr", ".img")):
        raise _read_error(path, "nibabel cannot open .hdr/.img pairs with a mixed-case suffix; rename it")
    blob = path.read_bytes()
    if lower.endswith((".gz", ".mgz")):
        blob = gzip.decompress(blob)
    if lower.endswith((".mgh", ".mgz")):
        return MGHImage.from_bytes(blob)
    sizeof_hdr = {int.from_bytes(blob[:4], "little"), int.from_bytes(blob[:4], "big")}
    klass = Nifti2Image if 540 in sizeof_hdr else nib.Nifti1Image
    return klass.from_bytes(blob)


def load_scan(path: str | os.PathLike) -> Scan:
    """Load a NIfTI-1/2 (``.nii``, ``.nii.gz``, ``.hdr/.img``), Analyze (``.hdr/.img``) or MGH
    (``.mgh``, ``.mgz``) file.

    The voxel data is read completely here (no memory map), so a truncated or corrupt file fails in
    this call. Data keeps the file's axis order; see :class:`Scan` for dtypes. 5-D NIfTI of shape
    ``(X, Y, Z, 1, C)`` is squeezed to ``(X, Y, Z, C)``. NaN/inf voxels are kept as they are.

    Raises
    ------
    ScanReadError
        With a one-line message ``cannot read 'PATH': <reason>``; the nibabel exception, if any, is
        chained as ``__cause__``.
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise _read_error(path, "broken symbolic link" if p.is_symlink() else "no such file")
    if p.is_dir():
        raise _read_error(path, "is a directory, not a scan file")
    if not has_suffix(p, READ_SUFFIXES):
        raise _read_error(path, "unsupported file type (expected .nii, .nii.gz, .hdr/.img, .mgh, .mgz, .nrrd or .nhdr)")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise _read_error(path, _load_reason(exc, p)) from exc
    if size == 0:
        raise _read_error(path, "file is empty")
    if has_suffix(p, (".nrrd", ".nhdr")):
        return _load_nrrd(p, path)
    if has_suffix(p, (".hdr",)) and _companion(p, ".img") is None:
        raise _read_error(path, f"the image file '{p.stem}.img' that goes with this header is missing")
    if has_suffix(p, (".img",)) and _companion(p, ".hdr") is None:
        raise _read_error(path, f"the header file '{p.stem}.hdr' that goes with this image is missing")

    try:
        img = _load_mixed_case(p) if _mixed_case_suffix(p) else nib.load(str(p), mmap=False)
    except ScanReadError:
        raise
    except Exception as exc:  # nibabel raises many types; wrap them all
        raise _read_error(path, _load_reason(exc, p)) from exc

    fmt = _image_format(img)
    if fmt is None:
        kind = type(img).__name__
        if "cifti" in kind.lower():
            reason = "CIFTI-2 files hold surface/grayordinate data, not a volume"
        else:
            reason = f"unsupported image type {kind}"
        raise _read_error(path, reason)

    reason = _size_problem(img, p)  # before anything is allocated
    if reason:
        raise _read_error(path, reason)
    try:
        raw = np.asanyarray(img.dataobj)
        affine = np.array(img.affine, dtype=np.float64)
        header = img.header.copy()
    except Exception as exc:
        raise _read_error(path, _load_reason(exc, p)) from exc
    raw = np.asarray(raw)  # never a memmap or other subclass

    proxy = img.dataobj
    slope = float(getattr(proxy, "slope", 1.0))
    inter = float(getattr(proxy, "inter", 0.0))
    if slope != 1.0 or inter != 0.0:
        data = raw.astype(np.float32)
    elif not raw.dtype.isnative:
        data = raw.astype(raw.dtype.newbyteorder("="))
    else:
        data = raw

    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise _read_error(path, "the voxel-to-world affine is not a finite 4x4 matrix")
    if data.ndim < 2:
        raise _read_error(path, f"{data.ndim}-D data of shape {data.shape} is not an image")
    if data.ndim == 5:
        if data.shape[3] != 1:
            raise _read_error(path, f"5-D data of shape {data.shape} is not supported (only (X, Y, Z, 1, C))")
        data = data[:, :, :, 0, :]
    if data.ndim > 5:
        raise _read_error(path, f"{data.ndim}-D data of shape {data.shape} is not supported")
    if data.size == 0:
        raise _read_error(path, f"the image is empty (shape {data.shape})")
    return Scan(data=data, affine=affine, header=header, path=p, format=fmt)


def _load_nrrd(p: Path, path: str | os.PathLike) -> Scan:
    from .nrrd import NrrdError, read_nrrd

    try:
        data, affine = read_nrrd(p)
    except NrrdError as exc:
        raise _read_error(path, str(exc)) from exc
    except (OSError, ValueError) as exc:
        raise _read_error(path, _load_reason(exc, p)) from exc
    if data.ndim < 2 or data.ndim > 4:
        raise _read_error(path, f"{data.ndim}-D data of shape {data.shape} is not supported")
    if not np.all(np.isfinite(affine)):
        raise _read_error(path, "the voxel-to-world affine is not finite")
    return Scan(data=data, affine=affine, header=None, path=p, format="nrrd")


def scan_from_array(
    data: np.ndarray,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
) -> Scan:
    """Wrap an in-memory array (shape ``(X, Y)``, ``(X, Y, Z)`` or ``(X, Y, Z, C)``) as a :class:`Scan`.

    ``spacing`` is the voxel size in mm per spatial axis (default all 1). ``affine`` is a 4x4
    voxel-to-world matrix (mm); default ``diag(spacing, 1)`` (a 1 on the z diagonal for 2-D data).
    Giving both is allowed only when they agree. Raises ValueError on bad input.
    """
    arr = np.asarray(data)
    if arr.ndim < 2 or arr.ndim > 4:
        raise ValueError(f"scan data must be 2-D, 3-D or 4-D, got shape {arr.shape}")
    nsp = 2 if arr.ndim == 2 else 3
    if spacing is not None:
        sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
        if sp.size != nsp:
            raise ValueError(f"spacing needs {nsp} values for data of shape {arr.shape}, got {sp.size}")
        if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ValueError(f"spacing must be positive and finite, got {tuple(sp.tolist())}")
    else:
        sp = None
    if affine is not None:
        aff = np.array(affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise ValueError("affine must be a finite 4x4 matrix")
        if sp is not None:
            norms = np.linalg.norm(aff[:3, :3], axis=0)[:nsp]
            if not np.allclose(norms, sp, rtol=1e-5, atol=1e-6):
                raise ValueError(f"spacing {tuple(sp.tolist())} disagrees with the affine's {tuple(norms)}")
    else:
        diag = np.ones(4)
        if sp is not None:
            diag[:nsp] = sp
        aff = np.diag(diag)
    return Scan(data=arr, affine=aff, header=None, path=None, format="array")


# ----------------------------------------------------------------------------------------------------
# writing

#: header fields that describe the data layout/scaling and must not be copied from a reference
_LAYOUT_FIELDS = frozenset(
    {
        "sizeof_hdr",
        "magic",
        "vox_offset",
        "dim",
        "datatype",
        "bitpix",
        "scl_slope",
        "scl_inter",
        "cal_min",
        "cal_max",
        "intent_code",
        "intent_name",
        "intent_p1",
        "intent_p2",
        "intent_p3",
    }
)


def _check_target(path: str | os.PathLike) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if not has_suffix(p, NIFTI_SUFFIXES):
        raise _write_error(
            path, "labels and images are written as NIfTI; the name must end in .nii or .nii.gz"
        )
    parent = p.parent
    if not parent.exists():
        raise _write_error(path, f"folder '{parent}' does not exist")
    if not parent.is_dir():
        raise _write_error(path, f"'{parent}' is not a folder")
    if p.is_dir():
        raise _write_error(path, "is a directory")
    return p


def _nifti_header(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    reference: Scan | None,
    affine: np.ndarray | None,
    *,
    exact_shape: bool,
) -> Nifti1Header:
    """A fresh NIfTI-1 header carrying the geometry to write (rules in :func:`save_labels`)."""
    ref_hdr = reference.header if reference is not None else None
    is_nifti_ref = (
        reference is not None
        and reference.format in ("nifti1", "nifti2")
        and isinstance(ref_hdr, Nifti1Header)
    )
    if reference is not None and affine is None:
        got = tuple(shape) if exact_shape else tuple(shape[: reference.spatial_ndim])
        shape_ok = got == reference.spatial_shape
    else:
        shape_ok = True
    if not shape_ok:
        raise _write_error(
            path,
            f"array shape {tuple(shape)} does not match the reference scan's spatial shape "
            f"{reference.spatial_shape}",
        )
    if affine is not None:
        aff = np.array(affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise _write_error(path, "affine must be a finite 4x4 matrix")
    hdr = Nifti1Header()
    if is_nifti_ref:
        assert isinstance(ref_hdr, Nifti1Header)
        for key in ref_hdr.keys():
            if key in _LAYOUT_FIELDS or key not in hdr.keys():
                continue
            try:
                hdr[key] = ref_hdr[key]
            except (ValueError, TypeError, OverflowError):
                pass
        if reference is not None and tuple(shape[: reference.spatial_ndim]) != reference.spatial_shape:
            for key in ("slice_start", "slice_end", "slice_code", "slice_duration"):
                hdr[key] = 0
        if affine is not None:
            qcode = int(ref_hdr["qform_code"])
            scode = int(ref_hdr["sform_code"])
            if qcode == 0 and scode == 0:
                qcode = scode = 1
            hdr.set_qform(aff, code=qcode)
            hdr.set_sform(aff, code=scode)
    else:
        if affine is None:
            aff = np.array(reference.affine, dtype=np.float64) if reference is not None else np.eye(4)
        hdr.set_qform(aff, code=1)
        hdr.set_sform(aff, code=1)
        hdr.set_xyzt_units("mm", "sec")
    return hdr


def _atomic_save(img: nib.Nifti1Image, target: Path, path_arg: str | os.PathLike) -> Path:
    """Write ``img`` to a temp file next to ``target`` (same suffix) and ``os.replace`` it into place."""
    suffix = _matching_suffix(target, NIFTI_SUFFIXES) or ".nii"
    stem = target.name[: len(target.name) - len(suffix)]
    # lower-case suffix: nibabel silently renames mixed-case ones (".Nii" -> ".nii") when saving
    tmp = target.with_name(f".tmp-{secrets.token_hex(6)}-{stem}{suffix.lower()}")
    try:
        nib.save(img, str(tmp))
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
        os.replace(tmp, target)
    except BaseException as exc:  # also clean up after KeyboardInterrupt, then let it through
        try:
            tmp.unlink()
        except OSError:
            pass
        if not isinstance(exc, Exception):
            raise
        raise _write_error(path_arg, _write_reason(exc)) from exc
    return target


def _write_reason(exc: BaseException) -> str:
    """A plain one-line reason for a failed write."""
    msg = _one_line(str(exc))
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if isinstance(exc, nib.spatialimages.HeaderDataError):
        return f"cannot store this array in a NIfTI-1 header ({msg})" if msg else "invalid NIfTI-1 header"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _finish_header(hdr: Nifti1Header, arr: np.ndarray) -> None:
    hdr.set_data_dtype(arr.dtype)
    hdr.set_data_shape(arr.shape)
    hdr.set_slope_inter(1.0, 0.0)


def save_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    reference: Scan | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Atomically write an integer label array (file axis order, same layout as the reference) as NIfTI-1.

    ``labels`` is 2-D or 3-D with integer (or bool, or integral float) values >= 0. They are stored as
    uint8 when the maximum is <= 255, uint16 when <= 65535, else int32. The header gets intent
    "label", scl_slope/inter 1/0 and cal_min/cal_max 0/max label.

    Geometry (the same rules apply to :func:`save_image`):

    * NIfTI-1/2 ``reference``, no ``affine``: the shape must equal ``reference.spatial_shape``; the
      reference's qform and sform (matrices and codes), pixdim, units and descriptive fields are
      copied as stored (to float32 precision for a NIfTI-2 reference). Header extensions are not copied.
    * ``affine`` (4x4 voxel -> world, mm) given: it overrides the reference's geometry (e.g. attention
      maps on a coarser grid; no shape check) and goes into both qform and sform, with the NIfTI
      reference's codes and units (code 1 where both were 0), else code 1 (scanner).
    * Analyze/MGH/array ``reference``: the shape is checked and its affine is written with codes 1.
    * neither: the identity affine with codes 1.

    Returns the target path. Raises ScanWriteError (one line) for a bad suffix, missing folder,
    negative or non-integral values, a shape mismatch, or any failure while writing (the previous
    target file, if any, is left untouched).
    """
    target = _check_target(path)
    arr = np.asarray(labels)
    if arr.ndim < 2 or arr.ndim > 3:
        raise _write_error(path, f"labels must be 2-D or 3-D, got shape {arr.shape}")
    if arr.size == 0:
        raise _write_error(path, f"labels array is empty (shape {arr.shape})")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise _write_error(path, "labels must be whole numbers (got non-integral or non-finite floats)")
    elif arr.dtype.kind not in "iu":
        raise _write_error(path, f"labels must be integers, got dtype {arr.dtype}")
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise _write_error(path, f"labels must be non-negative, found {lo}")
    if hi <= np.iinfo(np.uint8).max:
        out_dtype = np.uint8
    elif hi <= np.iinfo(np.uint16).max:
        out_dtype = np.uint16
    elif hi <= np.iinfo(np.int32).max:
        out_dtype = np.int32
    else:
        raise _write_error(path, f"label value {hi} does not fit in int32")
    arr = arr.astype(out_dtype)
    try:
        hdr = _nifti_header(path, arr.shape, reference, affine, exact_shape=True)
        _finish_header(hdr, arr)
        hdr.set_intent("label")
        hdr["cal_min"] = 0.0
        hdr["cal_max"] = float(hi)
        img = nib.Nifti1Image(arr, None, header=hdr)
    except ScanWriteError:
        raise
    except Exception as exc:
        raise _write_error(path, _write_reason(exc)) from exc
    return _atomic_save(img, target, path)


def save_image(
    path: str | os.PathLike,
    data: np.ndarray,
    reference: Scan | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Atomically write an intensity/probability array (file axis order) as NIfTI-1.

    Floats are stored as float32 (float16/float64 are converted), bool as uint8, 64-bit integers as
    int32 when they fit; other integer dtypes are kept. The first spatial axes must match the
    reference's spatial shape (a trailing extra axis, e.g. per-class maps ``(X, Y, Z, C)``, is allowed)
    unless ``affine`` overrides the geometry. Header/affine handling is as for :func:`save_labels`;
    intent is reset to none, scl_slope/inter to 1/0 and cal_min/cal_max to the finite data range.
    Returns the target path; raises ScanWriteError.
    """
    target = _check_target(path)
    arr = np.asarray(data)
    if arr.ndim < 2 or arr.ndim > 4:
        raise _write_error(path, f"image must be 2-D, 3-D or 4-D, got shape {arr.shape}")
    if arr.size == 0:
        raise _write_error(path, f"image array is empty (shape {arr.shape})")
    kind = arr.dtype.kind
    if kind == "f":
        arr = arr.astype(np.float32)
    elif kind == "b":
        arr = arr.astype(np.uint8)
    elif kind in "iu":
        if arr.dtype.itemsize == 8:
            lo, hi = int(arr.min()), int(arr.max())
            info = np.iinfo(np.int32)
            if lo < info.min or hi > info.max:
                raise _write_error(path, f"64-bit integer values {lo}..{hi} do not fit in int32")
            arr = arr.astype(np.int32)
        elif not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
    else:
        raise _write_error(path, f"unsupported dtype {arr.dtype}")
    try:
        hdr = _nifti_header(path, arr.shape, reference, affine, exact_shape=False)
        _finish_header(hdr, arr)
        hdr.set_intent("none")
        if arr.dtype.kind == "f":
            finite = np.isfinite(arr)
            if finite.any():
                hdr["cal_min"] = float(np.min(arr, where=finite, initial=np.inf))
                hdr["cal_max"] = float(np.max(arr, where=finite, initial=-np.inf))
        else:
            hdr["cal_min"] = float(arr.min())
            hdr["cal_max"] = float(arr.max())
        img = nib.Nifti1Image(arr, None, header=hdr)
    except ScanWriteError:
        raise
    except Exception as exc:
        raise _write_error(path, _write_reason(exc)) from exc
    return _atomic_save(img, target, path)
