"""NRRD input: the same voxels and world placement as the equivalent NIfTI; damaged files refused plainly."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from napari_aunet.io import ScanReadError, load_scan


def _nrrd(path, data, header_lines, encoding="raw", attached=True):
    """Write ``data`` (file axis order, first axis fastest) as a NRRD the way 3D Slicer does."""
    payload = np.asarray(data).transpose().astype(data.dtype.newbyteorder("<")).tobytes()
    if encoding == "gzip":
        payload = gzip.compress(payload)
    kinds = {np.dtype("int16"): "short", np.dtype("uint8"): "uchar", np.dtype("float32"): "float"}
    header = ["NRRD0004", "# Complete NRRD file format specification at:", f"type: {kinds[data.dtype]}",
              f"dimension: {data.ndim}", f"sizes: {' '.join(map(str, data.shape))}", "endian: little",
              f"encoding: {encoding}", "Segment0_Name:=tumour", *header_lines]
    if not attached:
        data_file = path.with_suffix(".raw" if encoding == "raw" else ".raw.gz")
        data_file.write_bytes(payload)
        path.write_text("\n".join([*header, f"data file: {data_file.name}"]) + "\n")
        return path
    path.write_bytes(("\n".join(header) + "\n\n").encode() + payload)
    return path


@pytest.mark.parametrize("encoding, attached", [("raw", True), ("gzip", True), ("gzip", False)])
def test_lps_nrrd_matches_the_same_scan_as_nifti(tmp_path, encoding, attached):
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 2000, (7, 9, 5)).astype(np.int16)
    # LPS space, 0.8 x 0.8 x 2.5 mm, the second axis running posterior -> anterior (negative P).
    lines = ["space: left-posterior-superior", "space directions: (0.8,0,0) (0,-0.8,0) (0,0,2.5)",
             "space origin: (10.5,-20,30)", "kinds: domain domain domain"]
    path = _nrrd(tmp_path / ("scan.nrrd" if attached else "scan.nhdr"), data, lines, encoding, attached)
    scan = load_scan(path)
    np.testing.assert_array_equal(scan.data, data)
    expected = np.array([[-0.8, 0, 0, -10.5], [0, 0.8, 0, 20], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    np.testing.assert_allclose(scan.affine, expected)  # LPS turned to RAS
    assert scan.format == "nrrd" and scan.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert scan.orientation == ("L", "A", "S")
    # The same voxels as a NIfTI with that affine load identically.
    nib.save(nib.Nifti1Image(data, expected), tmp_path / "same.nii.gz")
    twin = load_scan(tmp_path / "same.nii.gz")
    np.testing.assert_array_equal(twin.data, scan.data)
    np.testing.assert_allclose(twin.affine, scan.affine)


def test_vector_axis_first_becomes_the_last_axis(tmp_path):
    data = np.arange(3 * 4 * 5 * 2, dtype=np.float32).reshape(3, 4, 5, 2)
    file_order = np.moveaxis(data, -1, 0)  # (2, 4, 5, 2)... the vector axis first in the file
    lines = ["space: RAS", "space directions: none (1,0,0) (0,1,0) (0,0,1)", "kinds: vector domain domain domain"]
    scan = load_scan(_nrrd(tmp_path / "vec.nrrd", file_order, lines))
    np.testing.assert_array_equal(scan.data, data)


@pytest.mark.parametrize("damage, message", [
    (lambda blob: blob[:-10], "truncated"),
    (lambda blob: blob.replace(b"encoding: raw", b"encoding: bzip2"), "encoding 'bzip2' is not supported"),
    (lambda blob: blob.replace(b"NRRD0004", b"JUNK0004"), "NRRD magic"),
    (lambda blob: blob.replace(b"type: short", b"type: block"), "voxel type 'block'"),
    (lambda blob: blob.replace(b"space: left-posterior-superior", b"space: 3D-left-handed"), "space"),
    (lambda blob: blob.replace(b"sizes: 4 4 3", b"sizes: 4000000000 4000000000 3000000000"), "truncated"),
])
def test_damaged_nrrd_is_one_plain_line(tmp_path, damage, message):
    data = np.zeros((4, 4, 3), np.int16)
    path = _nrrd(tmp_path / "bad.nrrd", data, ["space: left-posterior-superior",
                                              "space directions: (1,0,0) (0,1,0) (0,0,1)"])
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ScanReadError, match=message) as info:
        load_scan(path)
    assert str(info.value).startswith("cannot read") and "\n" not in str(info.value)


def test_detached_header_without_its_data_file(tmp_path):
    path = _nrrd(tmp_path / "lonely.nhdr", np.zeros((4, 4, 3), np.uint8), [], "raw", attached=False)
    (tmp_path / "lonely.raw").unlink()
    with pytest.raises(ScanReadError, match="data file 'lonely.raw' is missing"):
        load_scan(path)
