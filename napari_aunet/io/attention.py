"""Attention maps to NIfTI: one file per level, each at its own grid, placed over the scan."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .scan import Scan, ScanWriteError, save_image


def save_attention_maps(
    folder: str | os.PathLike,
    maps: dict[int, tuple[np.ndarray, np.ndarray]],
    header: object | None = None,
    file_format: str = "nifti1",
) -> list[Path]:
    """Write ``level<k>.nii.gz`` (k = 1 finest) for ``{level: (map, affine)}`` in file order.

    ``affine`` is the map's own voxel-to-world affine (the scan's affine composed with the level's grid),
    ``header`` the scan's nibabel header when known, so qform/sform codes and units are kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ScanWriteError(f"cannot write attention maps: folder '{folder}' does not exist")
    written = []
    for level, (data, affine) in sorted(maps.items()):
        data = np.asarray(data, dtype=np.float32)
        reference = None
        if header is not None:
            reference = Scan(data=data, affine=np.asarray(affine, float), header=header, path=None,
                             format=file_format)
        path = folder / f"level{level}.nii.gz"
        save_image(path, data, reference=reference, affine=affine)
        written.append(path)
    return written
