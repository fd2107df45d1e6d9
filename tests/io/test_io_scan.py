"""Loading scans and the Scan properties, through real files written by nibabel."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_aunet.io import (
    NIFTI_SUFFIXES,
    READ_SUFFIXES,
    Scan,
    ScanReadError,
    has_suffix,
    load_scan,
    save_image,
    save_labels,
    scan_from_array,
)

SPACING = (1.5, 1.0, 2.0)


def _affine(columns: list[tuple[float, float, float]], origin: tuple[float, float, float]) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = np.array(columns, dtype=float).T
    aff[:3, 3] = origin
    return aff


# voxel axis i -> world direction, scaled by SPACING[i]
AFFINES = {
    "RAS": _affine([(1.5, 0, 0), (0, 1.0, 0), (0, 0, 2.0)], (-30.0, 12.5, 7.0)),
    "LPS": _affine([(-1.5, 0, 0), (0, -1.0, 0), (0, 0, 2.0)], (45.0, 80.25, -60.0)),
    "PSR": _affine([(0, -1.5, 0), (0, 0, 1.0), (2.0, 0, 0)], (-17.5, 103.0, -44.75)),
}
CODES = {"RAS": ("R", "A", "S"), "LPS": ("L", "P", "S"), "PSR": ("P", "S", "R")}


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, qcode: int = 1, scode: int = 1) -> Path:
    img = nib.Nifti1Image(data, affine, dtype=data.dtype)
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine, code=scode)
    nib.save(img, str(path))
    return path


def _phantom(shape: tuple[int, ...] = (12, 10, 8), seed: int = 0) -> np.ndarray:
    """A T1-like uint8 image: a smooth blob plus noise, many distinct values."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    blob = np.exp(-sum(g**2 for g in grid) * 2.0)
    img = 200 * blob + rng.normal(0, 12, size=shape) + 20
    return np.clip(img, 0, 255).astype(np.uint8)


def _labels(shape: tuple[int, ...] = (12, 10, 8)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[2:8, 2:7, 1:6] = 1
    lab[4:6, 3:5, 2:4] = 2
    return lab


# ------------------------------------------------------------------------------------------------


def test_suffix_helpers() -> None:
    assert has_suffix("a/b/scan.nii.gz", NIFTI_SUFFIXES)
    assert has_suffix("scan.NII.GZ", (".nii.gz",))
    assert not has_suffix("scan.nii.gz", (".nii",))
    assert has_suffix(Path("x.nii"), NIFTI_SUFFIXES)
    assert not has_suffix("x.nii.bak", NIFTI_SUFFIXES)
    assert not has_suffix(".nii", NIFTI_SUFFIXES)
    assert has_suffix("brain.mgz", READ_SUFFIXES)
    assert has_suffix("pair.img", ".img")
    assert not has_suffix("scan.png", READ_SUFFIXES)


@pytest.mark.parametrize("suffix", NIFTI_SUFFIXES)
@pytest.mark.parametrize("name", sorted(AFFINES))
def test_round_trip_labels_and_image(tmp_path: Path, name: str, suffix: str) -> None:
    affine = AFFINES[name]
    image = _phantom().astype(np.int16) * 3 - 100
    src = _write_nifti(tmp_path / f"src{suffix}", image, affine)
    scan = load_scan(src)
    assert scan.format == "nifti1"
    assert scan.path == src
    assert scan.data.dtype == np.int16
    np.testing.assert_array_equal(scan.data, image)
    np.testing.assert_allclose(scan.affine, affine, atol=1e-5)
    assert scan.orientation == CODES[name]
    assert scan.spacing == pytest.approx(SPACING)
    assert not scan.is_oblique
    assert scan.spatial_ndim == 3
    assert scan.spatial_shape == image.shape

    labels = _labels()
    out = save_labels(tmp_path / f"labels{suffix}", labels, reference=scan)
    assert out == tmp_path / f"labels{suffix}"
    back = load_scan(out)
    assert back.data.dtype == np.uint8
    np.testing.assert_array_equal(back.data, labels)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert back.orientation == CODES[name]
    assert back.is_label_map

    probs = np.random.default_rng(1).random(image.shape, dtype=np.float32)
    back_img = load_scan(save_image(tmp_path / f"probs{suffix}", probs, reference=scan))
    assert back_img.data.dtype == np.float32
    np.testing.assert_array_equal(back_img.data, probs)
    np.testing.assert_allclose(back_img.affine, affine, atol=1e-5)
    assert back_img.orientation == CODES[name]


def _disk_header(path: Path) -> nib.Nifti1Header:
    """The header exactly as stored on disk (nibabel's loaded img.header has scaling consumed)."""
    with nib.openers.ImageOpener(str(path)) as f:
        return nib.Nifti1Header.from_fileobj(f)


def test_qform_sform_codes_and_header_fields_kept(tmp_path: Path) -> None:
    affine = AFFINES["LPS"]
    qaff = affine.copy()
    qaff[:3, 3] += (1.0, -2.0, 3.0)  # a qform that differs from the sform
    img = nib.Nifti1Image(_phantom(), None)
    img.header.set_qform(qaff, code=1)
    img.header.set_sform(affine, code=4)  # MNI
    img.header.set_xyzt_units("mm", "msec")
    img.header["descrip"] = b"reference scan"
    nib.save(img, str(tmp_path / "ref.nii.gz"))
    ref = load_scan(tmp_path / "ref.nii.gz")
    np.testing.assert_allclose(ref.affine, affine, atol=1e-5)  # sform wins

    for fn, arr in ((save_labels, _labels().astype(np.int64)), (save_image, _phantom().astype(np.float64))):
        out = fn(tmp_path / f"{fn.__name__}.nii.gz", arr, reference=ref)
        hdr = _disk_header(out)
        assert int(hdr["qform_code"]) == 1
        assert int(hdr["sform_code"]) == 4
        np.testing.assert_allclose(hdr.get_sform(), affine, atol=1e-5)
        np.testing.assert_allclose(hdr.get_qform(), qaff, atol=1e-5)
        assert float(hdr["scl_slope"]) == 1.0
        assert float(hdr["scl_inter"]) == 0.0
        assert hdr.get_xyzt_units() == ("mm", "msec")
        assert bytes(hdr["descrip"]).rstrip(b"\0") == b"reference scan"
        assert hdr["magic"] == b"n+1"
    lab_hdr = _disk_header(tmp_path / "save_labels.nii.gz")
    assert lab_hdr.get_intent()[0] == "label"
    assert lab_hdr.get_data_dtype() == np.uint8
    assert (float(lab_hdr["cal_min"]), float(lab_hdr["cal_max"])) == (0.0, 2.0)
    img_hdr = _disk_header(tmp_path / "save_image.nii.gz")
    assert img_hdr.get_intent()[0] == "none"
    assert img_hdr.get_data_dtype() == np.float32


def test_scaled_file_loads_as_float32(tmp_path: Path) -> None:
    raw = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    img = nib.Nifti1Image(raw, AFFINES["RAS"])
    img.header.set_slope_inter(2.0, 10.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    scan = load_scan(tmp_path / "scaled.nii")
    assert scan.data.dtype == np.float32
    np.testing.assert_array_equal(scan.data, raw.astype(np.float32) * 2 + 10)

    # scaled float64 data also comes back as float32
    img = nib.Nifti1Image(raw.astype(np.float64), AFFINES["RAS"])
    img.header.set_slope_inter(0.5, -1.0)
    nib.save(img, str(tmp_path / "scaled64.nii"))
    scan = load_scan(tmp_path / "scaled64.nii")
    assert scan.data.dtype == np.float32
    np.testing.assert_allclose(scan.data, raw * 0.5 - 1.0)


def test_unscaled_dtypes_kept_and_byte_order_native(tmp_path: Path) -> None:
    for dtype in (np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64):
        arr = (np.arange(24) % 7).reshape(2, 3, 4).astype(dtype)
        _write_nifti(tmp_path / "a.nii", arr, np.eye(4))
        assert load_scan(tmp_path / "a.nii").data.dtype == np.dtype(dtype)
    # a big-endian file keeps its kind but comes back in native byte order
    arr = np.arange(24, dtype=">i2").reshape(2, 3, 4)
    hdr = nib.Nifti1Header(endianness=">")
    hdr.set_data_dtype(">i2")
    nib.save(nib.Nifti1Image(arr, np.eye(4), header=hdr), str(tmp_path / "be.nii"))
    assert nib.load(str(tmp_path / "be.nii")).get_data_dtype().byteorder == ">"
    scan = load_scan(tmp_path / "be.nii")
    assert scan.data.dtype == np.int16 and scan.data.dtype.isnative
    np.testing.assert_array_equal(scan.data, arr)


def test_nan_and_inf_volume_loads(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 4), np.float32)
    arr[0, 0, 0] = np.nan
    arr[1, 1, 1] = np.inf
    _write_nifti(tmp_path / "nan.nii.gz", arr, np.eye(4))
    scan = load_scan(tmp_path / "nan.nii.gz")
    assert np.isnan(scan.data[0, 0, 0]) and np.isinf(scan.data[1, 1, 1])
    assert not scan.is_label_map


@pytest.mark.parametrize("open_by", [".hdr", ".img"])
def test_analyze_pair_loads_by_either_name(tmp_path: Path, open_by: str) -> None:
    arr = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    nib.save(nib.AnalyzeImage(arr, np.diag([2.0, 3.0, 4.0, 1.0])), str(tmp_path / "an.hdr"))
    assert (tmp_path / "an.img").exists()
    scan = load_scan(tmp_path / f"an{open_by}")
    assert scan.format == "analyze"
    np.testing.assert_array_equal(scan.data, arr)
    assert scan.spacing == pytest.approx((2.0, 3.0, 4.0))
    # labels written against an Analyze reference get the reference affine, codes 1
    out = save_labels(tmp_path / "lab.nii", (arr > 30).astype(np.uint8), reference=scan)
    hdr = _disk_header(out)
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 1)
    np.testing.assert_allclose(load_scan(out).affine, scan.affine, atol=1e-5)


def test_nifti_pair_loads(tmp_path: Path) -> None:
    arr = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    nib.save(nib.Nifti1Pair(arr, AFFINES["PSR"]), str(tmp_path / "pair.img"))
    scan = load_scan(tmp_path / "pair.hdr")
    assert scan.format == "nifti1"
    np.testing.assert_allclose(scan.affine, AFFINES["PSR"], atol=1e-5)
    # the pair header is turned into a single-file one when used as a reference
    out = save_image(tmp_path / "single.nii", arr, reference=scan)
    assert _disk_header(out)["magic"] == b"n+1"
    np.testing.assert_allclose(load_scan(out).affine, AFFINES["PSR"], atol=1e-5)


@pytest.mark.parametrize("suffix", [".mgz", ".mgh"])
def test_mgh_loads(tmp_path: Path, suffix: str) -> None:
    arr = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    affine = AFFINES["LPS"]
    nib.save(nib.MGHImage(arr, affine), str(tmp_path / f"brain{suffix}"))
    scan = load_scan(tmp_path / f"brain{suffix}")
    assert scan.format == "mgh"
    np.testing.assert_array_equal(scan.data, arr)
    np.testing.assert_allclose(scan.affine, affine, atol=1e-5)
    assert scan.orientation == ("L", "P", "S")
    out = save_labels(tmp_path / "lab.nii.gz", (arr > 20).astype(np.uint8), reference=scan)
    np.testing.assert_allclose(load_scan(out).affine, affine, atol=1e-5)


def test_nifti2_loads_and_writes_back_as_nifti1(tmp_path: Path) -> None:
    arr = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    img = nib.Nifti2Image(arr, AFFINES["PSR"])
    img.header.set_qform(AFFINES["PSR"], code=1)
    img.header.set_sform(AFFINES["PSR"], code=2)
    nib.save(img, str(tmp_path / "n2.nii.gz"))
    scan = load_scan(tmp_path / "n2.nii.gz")
    assert scan.format == "nifti2"
    np.testing.assert_array_equal(scan.data, arr)
    out = save_labels(tmp_path / "lab.nii.gz", (arr % 3).astype(np.uint8), reference=scan)
    assert type(nib.load(str(out))) is nib.Nifti1Image
    hdr = _disk_header(out)
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 2)
    np.testing.assert_allclose(load_scan(out).affine, AFFINES["PSR"], atol=1e-5)


def test_4d_5d_and_2d_shapes(tmp_path: Path) -> None:
    arr4 = np.zeros((5, 6, 7, 3), np.float32)
    _write_nifti(tmp_path / "four.nii.gz", arr4, AFFINES["RAS"])
    scan = load_scan(tmp_path / "four.nii.gz")
    assert scan.data.shape == (5, 6, 7, 3)
    assert scan.spatial_ndim == 3
    assert scan.spatial_shape == (5, 6, 7)
    assert scan.spacing == pytest.approx(SPACING)
    # labels for a 4-D reference match its spatial shape
    out = save_labels(tmp_path / "lab4.nii.gz", np.ones((5, 6, 7), np.uint8), reference=scan)
    assert load_scan(out).data.shape == (5, 6, 7)

    arr5 = np.arange(5 * 6 * 7 * 2, dtype=np.float32).reshape(5, 6, 7, 1, 2)
    _write_nifti(tmp_path / "five.nii", arr5, np.eye(4))
    scan = load_scan(tmp_path / "five.nii")
    assert scan.data.shape == (5, 6, 7, 2)
    np.testing.assert_array_equal(scan.data, arr5[:, :, :, 0, :])
    assert scan.spatial_ndim == 3

    arr2 = np.arange(20, dtype=np.int16).reshape(4, 5)
    _write_nifti(tmp_path / "two.nii", arr2, np.diag([0.5, 0.75, 1.0, 1.0]))
    scan = load_scan(tmp_path / "two.nii")
    assert scan.data.shape == (4, 5)
    assert scan.spatial_ndim == 2
    assert scan.spacing == pytest.approx((0.5, 0.75))


# ------------------------------------------------------------------------------------------------
# broken inputs


def _truncated_gz(tmp_path: Path) -> Path:
    good = _write_nifti(tmp_path / "good.nii.gz", _phantom((20, 20, 20)).astype(np.int16), np.eye(4))
    blob = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    return bad


def _truncated_gz_header(tmp_path: Path) -> Path:
    good = _write_nifti(tmp_path / "good2.nii.gz", _phantom().astype(np.int16), np.eye(4))
    bad = tmp_path / "cut-header.nii.gz"
    bad.write_bytes(good.read_bytes()[:60])
    return bad


def _truncated_nii(tmp_path: Path) -> Path:
    good = _write_nifti(tmp_path / "good.nii", _phantom().astype(np.int16), np.eye(4))
    bad = tmp_path / "truncated.nii"
    bad.write_bytes(good.read_bytes()[:-100])
    return bad


def _random_nii(tmp_path: Path) -> Path:
    p = tmp_path / "random.nii"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return p


def _random_gz(tmp_path: Path) -> Path:
    p = tmp_path / "random.nii.gz"
    p.write_bytes(gzip.compress(np.random.default_rng(1).bytes(4096)))
    return p


def _random_mgz(tmp_path: Path) -> Path:
    p = tmp_path / "random.mgz"
    p.write_bytes(np.random.default_rng(2).bytes(4096))
    return p


def _random_hdr(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    (tmp_path / "random.img").write_bytes(rng.bytes(4096))
    p = tmp_path / "random.hdr"
    p.write_bytes(rng.bytes(348))
    return p


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "empty.nii"
    p.write_bytes(b"")
    return p


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.nii.gz"


def _directory(tmp_path: Path) -> Path:
    p = tmp_path / "folder.nii"
    p.mkdir()
    return p


def _wrong_extension(tmp_path: Path) -> Path:
    good = _write_nifti(tmp_path / "good.nii", _phantom(), np.eye(4))
    p = tmp_path / "scan.png"
    p.write_bytes(good.read_bytes())
    return p


def _lonely_hdr(tmp_path: Path) -> Path:
    nib.save(nib.AnalyzeImage(np.zeros((2, 3, 4), np.int16), np.eye(4)), str(tmp_path / "alone.hdr"))
    (tmp_path / "alone.img").unlink()
    return tmp_path / "alone.hdr"


def _lonely_img(tmp_path: Path) -> Path:
    nib.save(nib.AnalyzeImage(np.zeros((2, 3, 4), np.int16), np.eye(4)), str(tmp_path / "alone.hdr"))
    (tmp_path / "alone.hdr").unlink()
    return tmp_path / "alone.img"


BROKEN = {
    "truncated gzip": (_truncated_gz, "truncated"),
    "truncated gzip header": (_truncated_gz_header, "not a NIfTI/Analyze/MGH file"),
    "truncated nii": (_truncated_nii, "truncated"),
    "random bytes nii": (_random_nii, "not a NIfTI/Analyze/MGH file"),
    "random bytes gz": (_random_gz, "not a NIfTI/Analyze/MGH file"),
    "random bytes mgz": (_random_mgz, "gzip"),
    "random bytes hdr": (_random_hdr, "not a NIfTI/Analyze/MGH file"),
    "empty": (_empty, "empty"),
    "missing": (_missing, "no such file"),
    "directory": (_directory, "directory"),
    "wrong extension": (_wrong_extension, "unsupported file type"),
    "hdr without img": (_lonely_hdr, "alone.img"),
    "img without hdr": (_lonely_img, "alone.hdr"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_inputs_raise_one_line_scan_read_error(tmp_path: Path, case: str) -> None:
    make, needle = BROKEN[case]
    path = make(tmp_path)
    with pytest.raises(ScanReadError) as info:
        load_scan(path)
    msg = str(info.value)
    assert msg.startswith(f"cannot read '{path}': ")
    assert path.name in msg
    assert "\n" not in msg
    assert needle in msg
    assert "Traceback" not in msg
    assert isinstance(info.value, ValueError)


def test_truncated_gzip_keeps_nibabel_cause(tmp_path: Path) -> None:
    with pytest.raises(ScanReadError) as info:
        load_scan(_truncated_gz(tmp_path))
    assert "gzip data is truncated" in str(info.value)
    assert isinstance(info.value.__cause__, EOFError)


def test_load_accepts_str_paths(tmp_path: Path) -> None:
    path = _write_nifti(tmp_path / "s.nii", _phantom(), np.eye(4))
    assert load_scan(str(path)).data.shape == _phantom().shape


# ------------------------------------------------------------------------------------------------
# properties


def test_is_label_map_heuristic() -> None:
    assert scan_from_array(_labels()).is_label_map
    assert scan_from_array(_labels().astype(np.float32)).is_label_map
    assert scan_from_array(_labels().astype(bool)).is_label_map
    t1 = _phantom((40, 40, 30))
    assert len(np.unique(t1)) > 100
    assert not scan_from_array(t1).is_label_map
    noise = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    assert not scan_from_array(noise).is_label_map
    # many labels, piecewise constant (blocky organs) -> labels
    many = np.zeros((64, 64, 16), np.uint16)
    for k in range(1, 50):
        i, j = divmod(k, 8)
        many[i * 8 : i * 8 + 6, j * 8 : j * 8 + 6, 2:14] = k * 3
    assert scan_from_array(many).is_label_map
    # a smooth quantised ramp with 100 levels is an image, not 100 labels
    ramp = np.broadcast_to(np.linspace(0, 99, 64).round().astype(np.uint8)[:, None, None], (64, 64, 8))
    assert not scan_from_array(np.ascontiguousarray(ramp)).is_label_map
    # negative values (CT-like) are not labels; > 256 distinct values are not labels
    assert not scan_from_array(_labels().astype(np.int16) - 1).is_label_map
    assert not scan_from_array(np.arange(1000, dtype=np.int32).reshape(10, 10, 10)).is_label_map
    assert not scan_from_array(np.full((4, 4, 4), 0.5, np.float32)).is_label_map


def test_is_label_map_samples_big_arrays_quickly() -> None:
    import time

    big = np.zeros((256, 256, 200), np.uint8)
    big[50:150, 60:200, 20:180] = 1
    big[80:120, 90:150, 40:100] = 2
    start = time.perf_counter()
    assert scan_from_array(big).is_label_map
    assert time.perf_counter() - start < 2.0


def test_is_oblique_and_spacing() -> None:
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(SPACING)
    aff[:3, 3] = (10, 20, 30)
    scan = scan_from_array(np.zeros((3, 4, 5)), affine=aff)
    assert scan.is_oblique
    assert scan.spacing == pytest.approx(SPACING)
    assert not scan_from_array(np.zeros((3, 4, 5)), affine=AFFINES["PSR"]).is_oblique
    tiny = aff.copy()
    tiny[:3, :3] = np.eye(3) + np.array([[0, 1e-5, 0], [0, 0, 0], [0, 0, 0]])
    assert not scan_from_array(np.zeros((3, 4, 5)), affine=tiny).is_oblique


def test_scan_from_array_defaults_and_validation() -> None:
    scan = scan_from_array(np.zeros((3, 4, 5), np.float32), spacing=SPACING)
    assert isinstance(scan, Scan)
    assert scan.format == "array" and scan.header is None and scan.path is None
    np.testing.assert_array_equal(scan.affine, np.diag([*SPACING, 1.0]))
    assert scan.orientation == ("R", "A", "S")
    flat = scan_from_array(np.zeros((3, 4)), spacing=(0.5, 0.25))
    assert flat.spatial_ndim == 2 and flat.spacing == (0.5, 0.25)
    assert scan_from_array(np.zeros((3, 4, 5))).spacing == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        scan_from_array(np.zeros((3, 4, 5)), spacing=(1.0, 1.0))
    with pytest.raises(ValueError):
        scan_from_array(np.zeros((3, 4, 5)), spacing=(1.0, 2.0, 3.0), affine=np.eye(4))
    with pytest.raises(ValueError):
        scan_from_array(np.zeros(5))
    with pytest.raises(ValueError):
        scan_from_array(np.zeros((3, 4, 5)), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(AttributeError):
        scan.format = "nifti1"  # type: ignore[misc]


def test_io_imports_only_nibabel_numpy_and_stdlib() -> None:
    import ast
    import sys

    import napari_aunet.io as io_pkg

    allowed = {"nibabel", "numpy", "napari_aunet", "__future__"}
    for py in Path(io_pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in allowed or root in sys.stdlib_module_names, f"{py.name} imports {root}"


def test_is_label_map_2d() -> None:
    lab2 = _labels()[:, :, 3]
    assert scan_from_array(lab2).is_label_map
    assert not scan_from_array(_phantom((64, 64))).is_label_map


def test_mixed_case_suffixes_load(tmp_path: Path) -> None:
    arr = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    aff = AFFINES["LPS"]
    cases = {
        "a.Mgz": nib.MGHImage(arr, aff),
        "b.Nii.gz": nib.Nifti2Image(arr, aff),
        "c.nIi": nib.Nifti1Image(arr, aff),
    }
    for name, img in cases.items():
        lower = tmp_path / name.lower()
        nib.save(img, str(lower))
        lower.rename(tmp_path / name)
        scan = load_scan(tmp_path / name)
        np.testing.assert_array_equal(scan.data, arr)
        np.testing.assert_allclose(scan.affine, aff, atol=1e-5)
    assert load_scan(tmp_path / "b.Nii.gz").format == "nifti2"
    (tmp_path / "d.Nii").write_bytes(b"\0" * 400)
    with pytest.raises(ScanReadError, match=r"d\.Nii"):
        load_scan(tmp_path / "d.Nii")


def _header_claiming(shape, path: Path, compress: bool) -> Path:
    """A NIfTI file whose header claims ``shape`` float32 voxels but which holds 1 KB of data."""
    import gzip as gz

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    payload = header.binaryblock + b"\0" * 4 + b"\0" * 1024
    if compress:
        path.write_bytes(gz.compress(payload))
    else:
        path.write_bytes(payload)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_a_header_larger_than_memory_or_the_file_is_refused_before_allocating(tmp_path: Path, compress, monkeypatch):
    from napari_aunet.io import scan as module

    suffix = ".nii.gz" if compress else ".nii"
    huge = _header_claiming((2000, 2000, 2000), tmp_path / f"huge{suffix}", compress)
    monkeypatch.setattr(module, "_available_memory", lambda: 8_000_000_000)  # a laptop's free memory
    with pytest.raises(ScanReadError, match=r"2000 × 2000 × 2000 voxels \(32.0 GB in memory\), more than the 8.0 GB"):
        load_scan(huge)
    # small enough for memory, but more than the file holds: said from the file's size (or the gzip trailer)
    short = _header_claiming((64, 64, 64), tmp_path / f"short{suffix}", compress)
    with pytest.raises(ScanReadError, match="1,048,576 bytes.*truncated or its header is corrupt"):
        load_scan(short)
    monkeypatch.setattr(module, "_available_memory", lambda: None)  # unknown memory: the file check still holds
    with pytest.raises(ScanReadError, match="truncated or its header is corrupt"):
        load_scan(huge)
