"""load_scan against the real test files nibabel ships (nibabel/tests/data)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_aunet.io import READ_SUFFIXES, ScanReadError, has_suffix, load_scan

DATA = Path(nib.__file__).parent / "tests" / "data"
FILES = sorted(p for p in DATA.iterdir() if has_suffix(p, READ_SUFFIXES)) if DATA.is_dir() else []


def _nibabel_shape(path: Path) -> tuple[int, ...] | None:
    """Shape nibabel gives for a loadable volume (with a 4x4 affine), else None."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        if getattr(img, "affine", None) is None:
            return None
    except Exception:
        return None
    return data.shape


def test_nibabel_data_folder_has_files() -> None:
    if not DATA.is_dir():
        pytest.skip("this nibabel install ships no tests/data folder")
    names = {p.name for p in FILES}
    assert {"anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "test.mgz"} <= names


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_nibabel_data_file(path: Path) -> None:
    expected = _nibabel_shape(path)
    if expected is None:
        with pytest.raises(ScanReadError) as info:
            load_scan(path)
        assert path.name in str(info.value) and "\n" not in str(info.value)
        return
    scan = load_scan(path)
    if len(expected) == 5 and expected[3] == 1:
        expected = expected[:3] + expected[4:]
    assert scan.data.shape == expected
    assert scan.affine.shape == (4, 4)
    assert scan.spatial_ndim in (2, 3)
    assert len(scan.spacing) == scan.spatial_ndim
    np.testing.assert_allclose(scan.affine, nib.load(str(path)).affine)


def test_known_nibabel_files() -> None:
    if not DATA.is_dir():
        pytest.skip("this nibabel install ships no tests/data folder")
    four = load_scan(DATA / "example4d.nii.gz")
    assert four.format == "nifti1" and four.spatial_ndim == 3 and four.data.shape == (128, 96, 24, 2)
    assert load_scan(DATA / "example_nifti2.nii.gz").format == "nifti2"
    mgh = load_scan(DATA / "test.mgz")
    assert mgh.format == "mgh" and mgh.data.shape == (3, 4, 5, 2)
    # big-endian int16 on disk, native int16 in memory
    anat = load_scan(DATA / "anatomical.nii")
    assert anat.data.dtype == np.int16 and anat.data.dtype.isnative
    # a header without its .img, and a CIFTI-2 file, are refused with a plain reason
    with pytest.raises(ScanReadError, match="analyze.img"):
        load_scan(DATA / "analyze.hdr")
    with pytest.raises(ScanReadError, match="CIFTI"):
        load_scan(DATA / "row_major.dconn.nii")
