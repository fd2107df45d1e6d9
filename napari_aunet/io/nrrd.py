"""NRRD reading (``.nrrd`` with the data attached, ``.nhdr`` with a detached data file), numpy only.

What 3D Slicer and ITK write: a text header (``NRRD000N``, ``field: value`` lines up to a blank line), then the
voxels raw, gzip-compressed or as text. The array comes back in the file's own axis order (the first axis is
the fastest-varying one, as nibabel gives NIfTI arrays) and the affine maps voxel indices to RAS millimetres
(``space directions``/``space origin``; LPS spaces are turned to RAS; without them, ``spacings`` or 1 mm).
A non-spatial first axis (a vector or colour per voxel, ``space directions`` ``none``) becomes the last axis.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np

_TYPES = {
    "int8": "i1", "signed char": "i1", "int8_t": "i1",
    "uint8": "u1", "uchar": "u1", "unsigned char": "u1", "uint8_t": "u1",
    "short": "i2", "short int": "i2", "signed short": "i2", "signed short int": "i2", "int16": "i2",
    "int16_t": "i2",
    "ushort": "u2", "unsigned short": "u2", "unsigned short int": "u2", "uint16": "u2", "uint16_t": "u2",
    "int": "i4", "signed int": "i4", "int32": "i4", "int32_t": "i4",
    "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4",
    "longlong": "i8", "long long": "i8", "long long int": "i8", "signed long long": "i8",
    "signed long long int": "i8", "int64": "i8", "int64_t": "i8",
    "ulonglong": "u8", "unsigned long long": "u8", "unsigned long long int": "u8", "uint64": "u8",
    "uint64_t": "u8",
    "float": "f4", "double": "f8",
}
_LPS = {"left-posterior-superior", "lps", "left-posterior-superior-time"}
_RAS = {"right-anterior-superior", "ras", "right-anterior-superior-time", "scanner-xyz", "3d-right-handed"}
_VECTOR = re.compile(r"\(\s*([^)]*)\)")


class NrrdError(ValueError):
    """A file that is not a NRRD this reader understands; the message says why in plain words."""


def _vectors(text: str) -> list[list[float] | None]:
    """``(1,0,0) none (0,1,0)`` -> [[1, 0, 0], None, [0, 1, 0]]."""
    items: list[list[float] | None] = []
    for token in re.findall(r"\([^)]*\)|none", text):
        if token == "none":
            items.append(None)
        else:
            items.append([float(v) for v in _VECTOR.match(token).group(1).split(",")])
    return items


def _header(blob: bytes) -> tuple[dict[str, str], int]:
    """Fields (lower-case names) and the offset of the first data byte."""
    if not blob.startswith(b"NRRD000"):
        raise NrrdError("it does not start with the NRRD magic 'NRRD000N'")
    fields: dict[str, str] = {}
    position = blob.index(b"\n") + 1 if b"\n" in blob else len(blob)
    while position < len(blob):
        end = blob.find(b"\n", position)
        end = len(blob) if end < 0 else end
        line = blob[position:end].decode("latin-1").rstrip("\r")
        position = end + 1
        if not line:
            return fields, position
        colon = line.find(":")
        if line.startswith("#") or (colon >= 0 and line[colon : colon + 2] == ":="):
            continue  # a comment or a "key:=value" pair
        name, sep, value = line.partition(":")
        if not sep:
            raise NrrdError(f"header line {line[:40]!r} is not 'field: value'")
        fields[name.strip().lower()] = value.strip()
    return fields, position  # detached header: no data follows


def read_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(data in file axis order, 4x4 voxel-to-RAS affine) of a ``.nrrd``/``.nhdr`` file."""
    path = Path(path)
    blob = path.read_bytes()
    fields, offset = _header(blob)
    for required in ("type", "dimension", "sizes", "encoding"):
        if required not in fields:
            raise NrrdError(f"the header has no '{required}' field")
    kind = _TYPES.get(fields["type"].lower())
    if kind is None:
        raise NrrdError(f"voxel type '{fields['type']}' is not supported")
    sizes = [int(v) for v in fields["sizes"].split()]
    if len(sizes) != int(fields["dimension"]) or min(sizes) < 1:
        raise NrrdError(f"sizes '{fields['sizes']}' do not match dimension {fields['dimension']}")
    dtype = np.dtype(kind).newbyteorder("<" if fields.get("endian", "little").lower() == "little" else ">")

    if "data file" in fields:
        name = fields["data file"].split()[0]
        if name.upper() == "LIST":
            raise NrrdError("'data file: LIST' (one file per slice) is not supported")
        data_path = (path.parent / name).resolve()
        if not data_path.is_file():
            raise NrrdError(f"its data file '{name}' is missing")
        payload = data_path.read_bytes()
    else:
        payload = blob[offset:]
    encoding = fields["encoding"].lower()
    count = math.prod(sizes)  # Python ints: an absurd header cannot overflow into a small count
    try:
        if encoding in ("gzip", "gz"):
            payload = gzip.decompress(payload)
        elif encoding in ("ascii", "text", "txt"):
            values = np.array(payload.decode("ascii").split(), dtype=np.float64)
            if values.size < count:
                raise NrrdError(f"it holds {values.size} values where its sizes need {count}")
            flat = values[:count].astype(dtype.newbyteorder("="))
        elif encoding != "raw":
            raise NrrdError(f"encoding '{fields['encoding']}' is not supported (raw, gzip or ascii)")
    except (OSError, EOFError, zlib.error) as error:
        raise NrrdError(f"its gzip-compressed data is damaged ({error})") from error
    if encoding not in ("ascii", "text", "txt"):
        skip = int(fields.get("byte skip", "0"))
        needed = count * dtype.itemsize
        if skip == -1:  # the data are the last bytes of the file
            payload = payload[-needed:] if len(payload) >= needed else payload
        else:
            payload = payload[skip:]
        if len(payload) < needed:
            raise NrrdError(f"the data are truncated: {len(payload)} bytes where {needed} are needed")
        flat = np.frombuffer(payload[:needed], dtype=dtype).astype(dtype.newbyteorder("="))
    data = flat.reshape(sizes[::-1]).transpose()  # first axis fastest, as in the file

    directions = _vectors(fields.get("space directions", ""))
    if directions and len(directions) != len(sizes):
        raise NrrdError("'space directions' does not give one entry per axis")
    if directions and directions[0] is None and all(d is not None for d in directions[1:]):
        data = np.moveaxis(data, 0, -1)  # per-voxel vector first in the file: last here
        directions = directions[1:] + [None]
    spatial = [i for i, d in enumerate(directions) if d is not None] if directions else list(range(min(3, len(sizes))))
    affine = np.eye(4)
    if directions:
        for column, axis in enumerate(spatial[:3]):
            vector = directions[axis]
            affine[: len(vector), column] = vector[:3]
        origin = _vectors(fields.get("space origin", ""))
        if origin and origin[0] is not None:
            affine[: len(origin[0]), 3] = origin[0][:3]
        space = fields.get("space", "").lower()
        if space in _LPS:
            affine[:2] *= -1
        elif space and space not in _RAS:
            raise NrrdError(f"space '{fields['space']}' is not a patient space this reader knows (RAS or LPS)")
    elif "spacings" in fields:
        for column, value in enumerate(fields["spacings"].split()[:3]):
            if value.lower() != "nan":
                affine[column, column] = float(value)
    return data, affine
