"""Per-label volumes of a label map (voxel counts and mL from the file's affine), and their CSV file."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._files import write_atomic


def voxel_volume_ml(affine: np.ndarray, ndim: int) -> float:
    """Volume of one voxel in mL (cm³) from a file affine in mm (area in mm² for 2D, reported as-is)."""
    return float(abs(np.linalg.det(np.asarray(affine)[:ndim, :ndim]))) / 1000.0


def label_volumes(labels: np.ndarray, affine: np.ndarray, names: Sequence[str] = ()) -> list[dict]:
    """One row per non-zero label present (or named): ``label``, ``name``, ``voxels``, ``ml``."""
    counts = np.bincount(np.asarray(labels).reshape(-1).astype(np.int64))
    per_voxel = voxel_volume_ml(affine, np.asarray(labels).ndim)
    present = {int(v) for v in np.flatnonzero(counts)} | set(range(len(names)))
    rows = []
    for value in sorted(present - {0}):
        voxels = int(counts[value]) if value < counts.size else 0
        name = names[value] if value < len(names) else f"label {value}"
        rows.append({"label": value, "name": name, "voxels": voxels, "ml": round(voxels * per_voxel, 4)})
    return rows


def save_volumes_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write the rows of :func:`label_volumes` as CSV (header ``label,name,voxels,ml``), atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["label", "name", "voxels", "ml"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(path, text.getvalue().encode("utf-8"))
