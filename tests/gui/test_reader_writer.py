"""Reader, writer and sample data in a napari viewer: RAS placement, forcing types, round trips, errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import axes_affine
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_aunet._orientation import display_placement, display_transform
from napari_aunet._reader import napari_get_reader, read_scan, scan_name
from napari_aunet._writer import LayerSaveError, write_labels
from napari_aunet.io import ScanReadError, load_scan

PLUGIN = "napari-aunet"
SHAPE = (6, 7, 5)


RAS = axes_affine((0, 1, 2), (1, 1, 1), (1.0, 1.5, 2.0), (-10.0, -20.0, -30.0))
LPS = axes_affine((0, 1, 2), (-1, -1, 1), (1.0, 1.5, 2.0), (10.0, 20.0, -30.0))
PSR = axes_affine((1, 2, 0), (-1, 1, 1), (0.8, 1.2, 2.5), (5.0, -7.0, 9.0))  # a permuted, flipped file


def save_nifti(path, data, affine, *, qcode=1, scode=1, units=None, pixdim4=None) -> str:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine, code=scode)
    if units:
        img.header.set_xyzt_units(*units)
    if pixdim4:
        img.header["pixdim"][4] = pixdim4
    nib.save(img, str(path))
    return str(path)


def intensities(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def labels(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, shape).astype(np.uint8)


@pytest.fixture
def notifications():
    got = []

    def collect(n):
        got.append(n)

    notification_manager.notification_ready.connect(collect)
    yield got
    notification_manager.notification_ready.disconnect(collect)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def assert_ras_placement(layer, affine, file_shape, leading=0):
    dt, scale, translate = display_placement(affine, file_shape)
    assert layer.data.shape[leading:] == dt.display_shape
    np.testing.assert_allclose(layer.scale, (1.0,) * leading + scale)
    np.testing.assert_allclose(layer.translate, (0.0,) * leading + translate)
    # napari world coordinates are scanner RAS mm: the display voxel j sits where the affine puts it
    j = np.array(dt.display_shape) - 1
    file_index = np.zeros(4)
    file_index[3] = 1
    for d, (a, flip) in enumerate(zip(dt.axes, dt.flips, strict=True)):
        file_index[a] = file_shape[a] - 1 - j[d] if flip else j[d]
    world = np.asarray(layer.data_to_world((0,) * leading + tuple(j)))[leading:]
    np.testing.assert_allclose(world, (affine @ file_index)[:3], atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# get_reader


def test_get_reader_claims_only_scan_suffixes(tmp_path):
    for name in ("a.nii", "a.NII.GZ", "a.hdr", "a.img", "a.mgz", "a.mgh"):
        assert napari_get_reader(str(tmp_path / name)) is not None, name
    for name in ("a.tif", "a.gz", "a.nii.zip"):
        assert napari_get_reader(str(tmp_path / name)) is None
    assert napari_get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.mgz")]) is not None
    assert napari_get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.png")]) is None
    (tmp_path / "dir.nii").mkdir()
    assert napari_get_reader(str(tmp_path / "dir.nii")) is None
    assert scan_name("/x/brain.T1.nii.gz") == "brain.T1"


# ----------------------------------------------------------------------------------------------------
# reading into napari


@pytest.mark.gui
@pytest.mark.parametrize("affine", [RAS, LPS, PSR], ids=["RAS", "LPS", "PSR"])
def test_open_image(viewer, tmp_path, affine):
    data = intensities()
    path = save_nifti(tmp_path / "t1.nii.gz", data, affine)
    (layer,) = viewer.open(path, plugin=PLUGIN)
    assert layer._type_string == "image" and layer.name == "t1"
    assert layer.colormap.name == "gray"
    assert_ras_placement(layer, affine, SHAPE)
    dt = display_transform(affine, SHAPE)
    np.testing.assert_array_equal(layer.data, dt.to_display(data))
    lo, hi = np.percentile(data, (0.5, 99.5))
    np.testing.assert_allclose(layer.contrast_limits, (lo, hi), rtol=1e-5)
    rec = layer.metadata["aunet"]
    assert rec["source"] == path and rec["format"] == "nifti1" and rec["oblique"] is False
    np.testing.assert_allclose(rec["affine"], affine)
    assert rec["display"] == dt.to_metadata()
    assert isinstance(layer.metadata["aunet_header"], nib.Nifti1Header)


@pytest.mark.gui
def test_open_label_map_and_paint(viewer, tmp_path):
    path = save_nifti(tmp_path / "seg.nii.gz", labels(), LPS)
    (layer,) = viewer.open(path, plugin=PLUGIN)
    assert layer._type_string == "labels" and layer.name == "seg"
    assert layer.opacity == pytest.approx(0.5)
    assert_ras_placement(layer, LPS, SHAPE)
    layer.paint((1, 1, 1), 2)  # labels can be edited in place
    assert layer.data[1, 1, 1] == 2


@pytest.mark.gui
def test_force_layer_type(viewer, tmp_path):
    ints = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 300).astype(np.int16)  # an image, not a label map
    img_path = save_nifti(tmp_path / "ct.nii.gz", ints, PSR)
    lab_path = save_nifti(tmp_path / "seg.nii.gz", labels(), PSR)
    (auto,) = viewer.open(img_path, plugin=PLUGIN)
    assert auto._type_string == "image"
    (forced,) = viewer.open(img_path, plugin=PLUGIN, layer_type="labels")
    assert forced._type_string == "labels"
    assert forced.metadata["aunet"]["affine"] == auto.metadata["aunet"]["affine"]
    np.testing.assert_allclose(forced.translate, auto.translate)
    (as_image,) = viewer.open(lab_path, plugin=PLUGIN, layer_type="image")
    assert as_image._type_string == "image"
    assert_ras_placement(as_image, PSR, SHAPE)
    # from code: read_scan casts integral floats for labels and refuses fractional ones plainly
    float_path = save_nifti(tmp_path / "f.nii.gz", labels().astype(np.float32) * 1.0 + 0.0, RAS)
    ((data, kwargs, kind),) = read_scan(float_path, layer_type="labels")
    assert kind == "labels" and data.dtype == np.uint8
    with pytest.raises(ScanReadError, match=r"cannot read .*f2\.nii\.gz.*non-integral"):
        read_scan(save_nifti(tmp_path / "f2.nii.gz", intensities(), RAS), layer_type="labels")


@pytest.mark.gui
def test_open_hdr_img_pair_and_mgz(viewer, tmp_path):
    data = intensities()
    nib.save(nib.Nifti1Pair(data, LPS), str(tmp_path / "pair.img"))
    for name in ("pair.hdr", "pair.img"):
        viewer.layers.clear()
        (layer,) = viewer.open(str(tmp_path / name), plugin=PLUGIN)
        assert layer._type_string == "image" and layer.name == "pair"
        assert layer.metadata["aunet"]["format"] == "nifti1"
        assert_ras_placement(layer, LPS, SHAPE)
    nib.save(nib.AnalyzeImage(data, np.diag([2.0, 3.0, 4.0, 1.0])), str(tmp_path / "ana.hdr"))
    (layer,) = viewer.open(str(tmp_path / "ana.hdr"), plugin=PLUGIN)
    assert layer.metadata["aunet"]["format"] == "analyze"
    mgh_affine = axes_affine((0, 2, 1), (-1, 1, -1), (1.0, 1.0, 1.0), (30.0, -40.0, 50.0))  # LIA, FreeSurfer's
    nib.save(nib.MGHImage(labels(), mgh_affine), str(tmp_path / "aseg.mgz"))
    (layer,) = viewer.open(str(tmp_path / "aseg.mgz"), plugin=PLUGIN)
    assert layer._type_string == "labels" and layer.name == "aseg"
    assert layer.metadata["aunet"]["format"] == "mgh"
    assert_ras_placement(layer, mgh_affine, SHAPE)


@pytest.mark.gui
def test_open_4d_time_series_and_channels(viewer, tmp_path):
    series = np.random.default_rng(0).random((*SHAPE, 7)).astype(np.float32)
    path = save_nifti(tmp_path / "fmri.nii.gz", series, LPS, units=("mm", "sec"), pixdim4=2.0)
    (layer,) = viewer.open(path, plugin=PLUGIN)
    assert layer.data.shape[0] == 7 and layer.ndim == 4
    assert_ras_placement(layer, LPS, SHAPE, leading=1)
    dt = display_transform(LPS, SHAPE)
    np.testing.assert_array_equal(layer.data[3], dt.to_display(series[..., 3]))

    rgbish = np.random.default_rng(1).random((*SHAPE, 3)).astype(np.float32)
    path = save_nifti(tmp_path / "vec.nii.gz", rgbish, PSR)  # no time units: 3 channels
    layers = viewer.open(path, plugin=PLUGIN)
    assert [lyr.name for lyr in layers] == ["vec [0]", "vec [1]", "vec [2]"]
    dt = display_transform(PSR, SHAPE)
    for c, lyr in enumerate(layers):
        assert_ras_placement(lyr, PSR, SHAPE)
        np.testing.assert_array_equal(lyr.data, dt.to_display(rgbish[..., c]))
        assert lyr.metadata["aunet"]["display"]["file_shape"] == list(SHAPE)


@pytest.mark.gui
def test_oblique_file_warns_and_keeps_its_affine(viewer, tmp_path, notifications):
    theta = np.radians(15.0)
    rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-1.0, 1.0, 2.0])
    aff[:3, 3] = (1.0, 2.0, 3.0)
    path = save_nifti(tmp_path / "tilted.nii.gz", labels(), aff)
    (layer,) = viewer.open(path, plugin=PLUGIN)
    assert layer.metadata["aunet"]["oblique"] is True
    warnings = [n.message for n in notifications if n.severity == NotificationSeverity.WARNING]
    assert any("'tilted' is oblique" in m and "15.0°" in m and "saving keeps the original affine" in m
               for m in warnings), warnings
    out = tmp_path / "tilted_out.nii.gz"
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, nib.load(path).affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels())


# ----------------------------------------------------------------------------------------------------
# writing


@pytest.mark.gui
@pytest.mark.parametrize("use_plugin", [True, False], ids=["plugin", "auto"])
def test_labels_round_trip_in_file_order(viewer, tmp_path, use_plugin):
    original = labels()
    path = save_nifti(tmp_path / "seg.nii.gz", original, PSR, qcode=1, scode=2)
    (layer,) = viewer.open(path, plugin=PLUGIN)
    shown = np.array(layer.data)
    shown[1:3, 2, :] = 5
    shown[0, 0, 0] = 7
    layer.data = shown
    viewer.layers.selection = {layer}
    out = tmp_path / "edited.nii.gz"
    kwargs = {"plugin": PLUGIN} if use_plugin else {}
    assert viewer.layers.save(str(out), selected=True, **kwargs) == [str(out)]

    back = nib.load(str(out))
    ref = nib.load(path)
    assert back.shape == original.shape
    np.testing.assert_array_equal(back.affine, ref.affine)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 2
    assert back.get_data_dtype() == np.uint8
    expected = display_transform(PSR, SHAPE).from_display(shown)
    np.testing.assert_array_equal(np.asarray(back.dataobj), expected)
    # independently: the voxel painted at display (0,0,0) is the file voxel the affine puts at that world point
    world = np.r_[np.asarray(layer.data_to_world((0, 0, 0))), 1.0]
    file_index = np.round(np.linalg.solve(back.affine, world)[:3]).astype(int)
    assert np.asarray(back.dataobj)[tuple(file_index)] == 7
    changed = display_transform(PSR, SHAPE).to_display(original) != shown
    assert np.count_nonzero(expected != original) == np.count_nonzero(changed) > 0


@pytest.mark.gui
def test_image_and_time_series_round_trip(viewer, tmp_path):
    series = np.random.default_rng(0).random((*SHAPE, 4)).astype(np.float32)
    path = save_nifti(tmp_path / "fmri.nii", series, PSR, units=("mm", "sec"), pixdim4=1.5)
    (layer,) = viewer.open(path, plugin=PLUGIN)
    out = tmp_path / "copy.nii"
    viewer.layers.selection = {layer}
    viewer.layers.save(str(out), selected=True)
    back = nib.load(str(out))
    assert back.shape == series.shape
    np.testing.assert_array_equal(back.affine, nib.load(path).affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), series)
    assert back.header["pixdim"][4] == pytest.approx(1.5)


@pytest.mark.gui
def test_mgz_labels_save_as_nifti(viewer, tmp_path):
    mgh_affine = axes_affine((0, 2, 1), (-1, 1, -1), (1.0, 1.0, 1.0), (30.0, -40.0, 50.0))
    nib.save(nib.MGHImage(labels(), mgh_affine), str(tmp_path / "aseg.mgz"))
    (layer,) = viewer.open(str(tmp_path / "aseg.mgz"), plugin=PLUGIN)
    out = tmp_path / "aseg.nii.gz"
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    back = load_scan(out)
    np.testing.assert_allclose(back.affine, mgh_affine, atol=1e-6)
    np.testing.assert_array_equal(back.data, labels())


def test_nrrd_opens_in_place_and_its_labels_save_as_nifti(viewer, tmp_path):
    """A 3D Slicer-style LPS NRRD segmentation: placed like the same file as NIfTI, saved back aligned."""
    data = labels()
    header = ["NRRD0004", "type: uchar", "dimension: 3", f"sizes: {' '.join(map(str, data.shape))}",
              "space: left-posterior-superior", "space directions: (1,0,0) (0,1.5,0) (0,0,2)",
              "space origin: (-10,-20,-30)", "encoding: raw", "endian: little", ""]  # = LPS below
    path = tmp_path / "seg.nrrd"
    path.write_bytes(("\n".join(header) + "\n").encode() + data.transpose().astype(np.uint8).tobytes())
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), LPS), str(tmp_path / "twin.nii.gz"))
    (twin,) = viewer.open(str(tmp_path / "twin.nii.gz"), plugin=PLUGIN, layer_type="labels")
    np.testing.assert_array_equal(layer.data, twin.data)
    np.testing.assert_allclose(layer.scale, twin.scale)
    np.testing.assert_allclose(layer.translate, twin.translate)
    viewer.layers.selection = {layer}
    out = tmp_path / "seg.nii.gz"
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    back = load_scan(out)
    np.testing.assert_allclose(back.affine, LPS, atol=1e-6)
    np.testing.assert_array_equal(back.data, data)


@pytest.mark.gui
def test_layer_without_file_geometry_is_written_in_display_order(viewer, tmp_path):
    drawn = np.zeros((4, 5, 6), dtype=np.int32)
    drawn[1, 2, 3] = 300
    layer = viewer.add_labels(drawn, scale=(2.0, 1.0, 0.5), translate=(5.0, 6.0, 7.0))
    viewer.layers.selection = {layer}
    out = tmp_path / "drawn.nii.gz"
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asarray(back.dataobj), drawn)
    expected = np.diag([2.0, 1.0, 0.5, 1.0])
    expected[:3, 3] = (5.0, 6.0, 7.0)
    np.testing.assert_array_equal(back.affine, expected)
    assert nib.aff2axcodes(back.affine) == ("R", "A", "S")


@pytest.mark.gui
@pytest.mark.parametrize("use_plugin", [True, False], ids=["plugin", "auto"])
def test_save_errors_are_one_plain_line(viewer, tmp_path, use_plugin):
    layer = viewer.add_labels(np.zeros((3, 4, 5), dtype=np.uint8))
    viewer.layers.selection = {layer}
    target = tmp_path / "no-such-folder" / "x.nii.gz"
    kwargs = {"plugin": PLUGIN} if use_plugin else {}
    with pytest.raises(LayerSaveError) as info:
        viewer.layers.save(str(target), selected=True, **kwargs)
    msg = str(info.value)
    assert msg == f"cannot write '{target}': folder '{target.parent}' does not exist"
    # our writer never sees other suffixes through napari; called directly, it says why
    with pytest.raises(LayerSaveError, match=r"must end in \.nii or \.nii\.gz"):
        write_labels(str(tmp_path / "x.tif"), np.zeros((2, 2, 2), np.uint8), {})
    # a name without any suffix gets .nii.gz
    assert write_labels(str(tmp_path / "plain"), np.zeros((2, 2, 2), np.uint8), {}) == [str(tmp_path / "plain.nii.gz")]


# ----------------------------------------------------------------------------------------------------
# broken files


@pytest.mark.gui
def test_broken_file_reports_one_plain_line(viewer, tmp_path, notifications):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b\x00" + bytes(range(61)))  # gzip magic, then no valid compression method
    expected = None
    try:
        load_scan(broken)
    except ScanReadError as exc:
        expected = str(exc)
    assert expected and expected.startswith(f"cannot read '{broken}'") and "\n" not in expected
    # scripts (and napari's reader dialog, which calls viewer.open(..., plugin=...)) get our error as is
    with pytest.raises(ScanReadError) as info:
        viewer.open(str(broken), plugin=PLUGIN)
    assert str(info.value) == expected
    assert not [n for n in notifications if n.severity == NotificationSeverity.ERROR]


@pytest.mark.gui
def test_broken_file_in_file_open_shows_the_plain_line(viewer, tmp_path, notifications):
    """File › Open on a format only we read (.mgz): napari wraps the error in a long generic message."""
    from napari.errors import ReaderPluginError

    broken = tmp_path / "broken.mgz"
    broken.write_bytes(b"\x1f\x8b\x00" + bytes(range(61)))  # gzip magic, then no valid compression method
    with pytest.raises(ReaderPluginError) as info:
        viewer.window._qt_viewer._qt_open([str(broken)], stack=False)
    first_line = str(info.value).splitlines()[0]
    assert first_line.startswith(f"Tried to read {broken} with plugin napari-aunet")
    errors = [n.message for n in notifications if n.severity == NotificationSeverity.ERROR]
    assert errors == [f"cannot read '{broken}': not a NIfTI/Analyze/MGH file (not valid gzip data)"]


# ----------------------------------------------------------------------------------------------------
# sample data


@pytest.mark.gui
def test_mni152_sample(viewer):
    (layer,) = viewer.open_sample(PLUGIN, "mni152_t1")
    assert layer.name == "MNI152 T1" and layer._type_string == "image"
    assert layer.data.shape == (197, 233, 189)
    np.testing.assert_allclose(layer.scale, (1, 1, 1))
    np.testing.assert_allclose(layer.translate, (-98, -134, -72))
    rec = layer.metadata["aunet"]
    assert rec["source"].endswith("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    assert rec["display"]["axes"] == [0, 1, 2] and not any(rec["display"]["flips"])
    lo, hi = layer.contrast_limits
    assert 0 <= lo < hi <= 255


@pytest.mark.gui
def test_real_head_sample_is_placed_in_ras_from_its_las_file(viewer):
    """The ROBEX head (LAS file, 1.5 mm): shown flipped to RAS, placed in mm, its licence beside it."""
    (layer,) = viewer.open_sample(PLUGIN, "head_t1")
    assert layer.name == "head T1" and layer.data.shape == (116, 150, 155)
    np.testing.assert_allclose(layer.scale, (1.5, 1.5, 1.5))
    rec = layer.metadata["aunet"]
    assert rec["source"].endswith("robex_head_t1.nii.gz")
    assert rec["display"]["flips"][0] and not any(rec["display"]["flips"][1:])  # L -> R
    assert (Path(rec["source"]).parent / "ROBEX_NOTICE.txt").is_file()


@pytest.mark.gui
def test_phantom_sample_carries_placement(viewer):
    image, truth = viewer.open_sample(PLUGIN, "phantom")
    for layer in (image, truth):
        np.testing.assert_allclose(layer.scale, (2.0, 1.0, 1.0))
        np.testing.assert_allclose(layer.translate, (0.0, 0.0, 0.0))
        rec = layer.metadata["aunet"]
        assert rec["source"] is None and rec["format"] == "array"
        np.testing.assert_allclose(rec["affine"], np.diag([2.0, 1.0, 1.0, 1.0]))
    assert image.metadata is not truth.metadata
    assert truth._type_string == "labels"
