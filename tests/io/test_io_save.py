"""Writing labels/images: dtypes, header geometry, errors, atomic replacement, round trips."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_aunet.io import ScanWriteError, load_scan, save_image, save_labels, scan_from_array


def _disk_header(path: Path) -> nib.Nifti1Header:
    with nib.openers.ImageOpener(str(path)) as f:
        return nib.Nifti1Header.from_fileobj(f)


def _ref(tmp_path: Path, shape=(6, 5, 4), qcode: int = 1, scode: int = 4) -> tuple:
    aff = np.array([[-1.5, 0, 0, 40.0], [0, -1.0, 0, 22.0], [0, 0, 2.0, -13.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.zeros(shape, np.int16), None)
    img.header.set_qform(aff, code=qcode)
    img.header.set_sform(aff, code=scode)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(tmp_path / "ref.nii.gz"))
    return load_scan(tmp_path / "ref.nii.gz"), aff


@pytest.mark.parametrize(
    ("values", "dtype", "stored"),
    [
        ([0, 1, 2], np.uint8, np.uint8),
        ([0, 1, 255], np.int64, np.uint8),
        ([0, 3, 256], np.int64, np.uint16),
        ([0, 7, 65535], np.int32, np.uint16),
        ([0, 65536], np.int64, np.int32),
        ([0.0, 1.0, 4.0], np.float32, np.uint8),
        ([False, True], bool, np.uint8),
    ],
)
def test_label_dtypes(tmp_path: Path, values, dtype, stored) -> None:
    labels = np.zeros((4, 5, 6), dtype=dtype)
    for i, v in enumerate(values):
        labels[i] = v
    out = save_labels(tmp_path / "lab.nii.gz", labels)
    assert _disk_header(out).get_data_dtype() == np.dtype(stored)
    back = load_scan(out)
    assert back.data.dtype == np.dtype(stored)
    np.testing.assert_array_equal(back.data, labels.astype(np.int64))


def test_image_dtypes(tmp_path: Path) -> None:
    for dtype, stored in (
        (np.float16, np.float32),
        (np.float64, np.float32),
        (np.float32, np.float32),
        (np.int16, np.int16),
        (np.uint8, np.uint8),
        (np.int64, np.int32),
        (bool, np.uint8),
    ):
        arr = (np.arange(60).reshape(3, 4, 5) % 5).astype(dtype)
        out = save_image(tmp_path / "img.nii", arr)
        back = load_scan(out)
        assert back.data.dtype == np.dtype(stored), dtype
        np.testing.assert_array_equal(back.data, arr.astype(stored))
        hdr = _disk_header(out)
        assert (float(hdr["scl_slope"]), float(hdr["scl_inter"])) == (1.0, 0.0)


def test_no_reference_writes_identity_with_code_1(tmp_path: Path) -> None:
    out = save_labels(tmp_path / "lab.nii", np.zeros((2, 3, 4), np.uint8))
    hdr = _disk_header(out)
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 1)
    np.testing.assert_allclose(load_scan(out).affine, np.eye(4))
    aff = np.diag([0.5, 0.7, 3.0, 1.0])
    aff[:3, 3] = (1, 2, 3)
    out = save_image(tmp_path / "img.nii.gz", np.zeros((2, 3, 4), np.float32), affine=aff)
    np.testing.assert_allclose(load_scan(out).affine, aff, atol=1e-6)
    assert (int(_disk_header(out)["qform_code"]), int(_disk_header(out)["sform_code"])) == (1, 1)


def test_array_reference_uses_its_affine(tmp_path: Path) -> None:
    ref = scan_from_array(np.zeros((3, 4, 5), np.float32), spacing=(0.8, 0.9, 2.5))
    out = save_labels(tmp_path / "lab.nii.gz", np.ones((3, 4, 5), np.uint8), reference=ref)
    back = load_scan(out)
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-6)
    assert back.spacing == pytest.approx((0.8, 0.9, 2.5))


def test_affine_override_keeps_reference_codes(tmp_path: Path) -> None:
    ref, aff = _ref(tmp_path, qcode=1, scode=4)
    coarse = aff @ np.diag([2.0, 2.0, 2.0, 1.0])
    att = np.random.default_rng(0).random((3, 3, 2)).astype(np.float32)  # not the reference shape
    out = save_image(tmp_path / "att.nii.gz", att, reference=ref, affine=coarse)
    hdr = _disk_header(out)
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 4)
    assert hdr.get_xyzt_units() == ("mm", "sec")
    assert hdr.get_zooms() == pytest.approx((3.0, 2.0, 4.0))
    back = load_scan(out)
    np.testing.assert_allclose(back.affine, coarse, atol=1e-5)
    np.testing.assert_array_equal(back.data, att)


def test_image_with_extra_channel_axis(tmp_path: Path) -> None:
    ref, aff = _ref(tmp_path)
    probs = np.random.default_rng(0).random((6, 5, 4, 3)).astype(np.float32)
    back = load_scan(save_image(tmp_path / "probs.nii.gz", probs, reference=ref))
    np.testing.assert_array_equal(back.data, probs)
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "labels", "needle"),
    [
        ("lab.png", np.zeros((6, 5, 4), np.uint8), ".nii"),
        ("lab.mgz", np.zeros((6, 5, 4), np.uint8), ".nii"),
        ("no/such/dir/lab.nii", np.zeros((6, 5, 4), np.uint8), "does not exist"),
        ("lab.nii.gz", np.full((6, 5, 4), -1, np.int16), "non-negative"),
        ("lab.nii.gz", np.full((6, 5, 4), 0.5, np.float32), "whole numbers"),
        ("lab.nii.gz", np.zeros((5, 6, 4), np.uint8), "(5, 6, 4)"),
        ("lab.nii.gz", np.zeros((6, 5), np.uint8), "(6, 5, 4)"),
    ],
)
def test_save_labels_errors(tmp_path: Path, name: str, labels: np.ndarray, needle: str) -> None:
    ref, _ = _ref(tmp_path)
    with pytest.raises(ScanWriteError) as info:
        save_labels(tmp_path / name, labels, reference=ref)
    msg = str(info.value)
    assert msg.startswith("cannot write '") and "\n" not in msg
    assert Path(name).name in msg
    assert needle in msg
    assert not (tmp_path / name).exists()


def test_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    ref, _ = _ref(tmp_path)
    with pytest.raises(ScanWriteError, match=r"\(5, 6, 4\).*\(6, 5, 4\)"):
        save_image(tmp_path / "x.nii", np.zeros((5, 6, 4), np.float32), reference=ref)


def test_save_to_directory_path_fails(tmp_path: Path) -> None:
    (tmp_path / "d.nii").mkdir()
    with pytest.raises(ScanWriteError):
        save_labels(tmp_path / "d.nii", np.zeros((2, 2, 2), np.uint8))


# ------------------------------------------------------------------------------------------------
# atomic writes


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_failed_save_leaves_previous_file_untouched(tmp_path: Path, monkeypatch, suffix: str) -> None:
    target = tmp_path / f"labels{suffix}"
    save_labels(target, np.ones((6, 5, 4), np.uint8))
    before = target.read_bytes()
    real_save = nib.save
    seen: list[str] = []

    def half_save(img, filename, **kwargs):  # write a partial file, then blow up
        seen.append(os.path.basename(str(filename)))
        real_save(img, filename, **kwargs)
        with open(filename, "r+b") as f:
            f.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", half_save)
    with pytest.raises(ScanWriteError, match="no space left") as info:
        save_labels(target, np.full((6, 5, 4), 2, np.uint8))
    assert "\n" not in str(info.value)
    assert seen and seen[0].startswith(".tmp-") and seen[0].endswith(suffix)
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_failed_replace_leaves_previous_file_untouched(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "img.nii.gz"
    save_image(target, np.zeros((3, 3, 3), np.float32))
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ScanWriteError, match="permission denied"):
        save_image(target, np.ones((3, 3, 3), np.float32))
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_successful_save_leaves_no_temp_files(tmp_path: Path) -> None:
    save_labels(tmp_path / "a.nii.gz", np.ones((3, 3, 3), np.uint8))
    save_labels(tmp_path / "a.nii.gz", np.zeros((3, 3, 3), np.uint8))  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]
    assert load_scan(tmp_path / "a.nii.gz").data.max() == 0


# ------------------------------------------------------------------------------------------------
# property-based round trip

_PERMS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]


@settings(max_examples=25, deadline=None, database=None)
@given(
    shape=st.tuples(*[st.integers(1, 6)] * 3),
    perm=st.sampled_from(_PERMS),
    flips=st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    spacing=st.tuples(*[st.sampled_from([0.5, 0.8, 1.0, 1.5, 3.0])] * 3),
    origin=st.tuples(*[st.integers(-200, 200)] * 3),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_round_trip(shape, perm, flips, spacing, origin, gz, seed) -> None:
    aff = np.eye(4)
    aff[:3, :3] = 0.0
    for axis, world in enumerate(perm):  # voxel axis `axis` runs along world axis `world`
        aff[world, axis] = flips[axis] * spacing[axis]
    aff[:3, 3] = np.asarray(origin, dtype=float) / 4.0
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        out = save_image(Path(d) / ("x.nii.gz" if gz else "x.nii"), data, affine=aff)
        back = load_scan(out)
        labels_out = save_labels(Path(d) / "l.nii", (data > 0).astype(np.uint8), reference=back)
        labels = load_scan(labels_out)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)
    np.testing.assert_allclose(labels.affine, aff, atol=1e-5)
    np.testing.assert_array_equal(labels.data, data > 0)
    assert back.orientation == tuple(nib.aff2axcodes(aff))
    assert back.spacing == pytest.approx(spacing)
    assert not back.is_oblique


@pytest.mark.parametrize("name", ["UPPER.NII.GZ", "Mixed.Nii", "mixed.Nii.Gz", "plain.NII"])
def test_upper_and_mixed_case_suffixes(tmp_path: Path, name: str) -> None:
    out = save_labels(tmp_path / name, np.ones((3, 3, 3), np.uint8))
    assert out == tmp_path / name
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    is_gz = name.lower().endswith(".gz")
    assert (out.read_bytes()[:2] == b"\x1f\x8b") == is_gz
    assert load_scan(out).data.sum() == 27
