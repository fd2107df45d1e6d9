"""Segment and attention-comparison widgets on a real NIfTI opened through napari's own open path."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_aunet._attention_widget import AttentionWidget
from napari_aunet._segment_widget import SegmentWidget
from napari_aunet._state import state_for
from napari_aunet.engine import int8
from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.phantoms import generate_phantom

pytestmark = pytest.mark.gui

# An LPS file stored (S, A, R)-ish: display needs a permute and flips, so placement is really tested.
AFFINE = np.array([[0.0, 0.0, -1.0, 40.0], [0.0, -1.2, 0.0, 30.0], [2.0, 0.0, 0.0, -20.0], [0, 0, 0, 1]])


@pytest.fixture
def phantom_path(tmp_path):
    phantom = generate_phantom((20, 45, 38), seed=11)
    path = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image((phantom.image * 100).astype(np.int16), AFFINE), path)
    return path


def _open(viewer, path):
    (layer,) = viewer.open(str(path), plugin="napari-aunet")
    return layer


def _segment(widget, qtbot, **choices):
    for name, value in choices.items():
        getattr(widget, f"_{name}").value = value
    widget.run()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)


def _segmented(make_napari_viewer, qtbot, path, **choices):
    """A viewer with ``path`` opened and segmented by the phantom model (axial) through the widget."""
    viewer = make_napari_viewer()
    image = _open(viewer, path)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.value = image
    _segment(widget, qtbot, model="phantom", plane="axial", **choices)
    return viewer, image, widget


def _segmented_array(make_napari_viewer, qtbot, data, name: str, model: str):
    """A viewer with ``data`` added as image ``name`` and segmented by ``model`` through the widget (no maps)."""
    viewer = make_napari_viewer()
    image = viewer.add_image(data, name=name)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.value = image
    _segment(widget, qtbot, model=model, with_attention=False)
    return viewer, widget


def test_segment_then_compare_end_to_end(make_napari_viewer, qtbot, phantom_path, tmp_path):
    viewer, image, widget = _segmented(make_napari_viewer, qtbot, phantom_path)

    names = [layer.name for layer in viewer.layers]
    assert names == [  # the segmentation above the maps: its outline stays on top
        "phantom", "phantom attention L1 (1/1)", "phantom attention L2 (1/2)", "phantom attention L3 (1/4)",
        "phantom segmentation",
    ]
    labels = viewer.layers["phantom segmentation"]
    assert labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    assert list(labels.features["class"]) == ["background", "organ", "lesion"]

    # The engine on the file's own array, sliced axially (file axis 0 is S here), is the reference.
    volume = np.asarray(nib.load(phantom_path).dataobj)
    reference = Segmenter(load_model("phantom"), device="cpu").segment(volume, mode="2d", axis=0)
    np.testing.assert_array_equal(state_for(viewer).runs["phantom"].result.labels, reference.labels)

    rng = np.random.default_rng(0)
    for level, attention in reference.attention.items():
        layer = viewer.layers[f"phantom attention L{level} (1/{attention.factor})"]
        assert layer.data.size == attention.data.size  # native resolution, no upsampled copy
        assert layer.blending == "translucent" and tuple(layer.contrast_limits) == (0.0, 1.0)
        level_affine = attention.geometry.affine(AFFINE)
        # Every sampled cell sits, in napari's world, exactly where the engine's geometry puts it.
        for _ in range(20):
            cell = tuple(int(rng.integers(n)) for n in attention.data.shape)
            world = (level_affine @ [*cell, 1.0])[:3]
            index = np.asarray(layer.world_to_data(world))
            np.testing.assert_allclose(index, np.round(index), atol=1e-3)  # float32 header spacing
            assert layer.data[tuple(np.round(index).astype(int))] == attention.data[cell]

    # A delta in the scan: the level-3 cell over it is the one whose world box contains the voxel.
    voxel = (7, 21, 30)
    world_voxel = (AFFINE @ [*voxel, 1.0])[:3]
    layer3 = viewer.layers["phantom attention L3 (1/4)"]
    cell_display = np.round(np.asarray(layer3.world_to_data(world_voxel)))
    centre_world = np.asarray(layer3.data_to_world(cell_display))
    assert np.all(np.abs(centre_world - world_voxel) <= np.abs(np.asarray(layer3.scale)) / 2 + 1e-6)

    # Saving the segmentation writes it in the file's order with the file's affine.
    viewer.layers.selection = {labels}
    viewer.layers.save(str(tmp_path / "seg.nii.gz"), selected=True, plugin="napari-aunet")
    saved_labels = nib.load(tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(saved_labels.affine, AFFINE, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(saved_labels.dataobj), reference.labels)

    # Compare levels: table, grid mode, overlay, exports.
    compare = AttentionWidget(viewer)
    viewer.window.add_dock_widget(compare)
    compare.reset_choices()
    compare._image.value = "phantom"
    compare.update_table()
    table = compare._table.value["data"]
    assert [row[0] for row in table] == ["L1", "L2", "L3"]
    assert all(0 <= float(row[2]) <= 100 and 0 <= float(row[5]) <= 1 for row in table)
    assert "focuses most" in compare._verdict.value

    compare._level.value = 3
    compare.show_side_by_side()
    assert viewer.canvas.grid.enabled and compare._grid.value
    assert all(viewer.layers[f"phantom attention L{k} (1/{2 ** (k - 1)})"].visible for k in (1, 2, 3))
    compare.show_overlay()
    assert not viewer.canvas.grid.enabled and viewer.layers["phantom"].visible
    assert [layer.name for layer in viewer.layers if "attention" in layer.name and layer.visible] == [
        "phantom attention L3 (1/4)"]

    written = compare.export_nifti(tmp_path)
    assert [p.name for p in written] == ["level1.nii.gz", "level2.nii.gz", "level3.nii.gz"]
    saved = nib.load(written[2])
    np.testing.assert_allclose(saved.affine, reference.attention[3].geometry.affine(AFFINE), atol=1e-5)
    png = compare.export_png(tmp_path / "montage.png")
    from qtpy.QtGui import QImage

    picture = QImage(str(png))
    # The displayed plane is (A, S) = (45, 20) voxels: the scan then three levels, 2-pixel separators.
    assert (picture.height(), picture.width()) == (45, 4 * 20 + 3 * 2)


def test_two_images_segmented_one_after_the_other_keep_both_sets_of_layers(
        make_napari_viewer, qtbot, phantom_path, tmp_path):
    """Every layer Segment adds is named after its image: the second scan never replaces the first one's maps,
    and Compare's table follows the image chosen."""
    viewer, first, widget = _segmented(make_napari_viewer, qtbot, phantom_path)
    other = generate_phantom((16, 40, 30), seed=12)
    nib.save(nib.Nifti1Image((other.image * 100).astype(np.int16), AFFINE), tmp_path / "second.nii.gz")
    second = _open(viewer, tmp_path / "second.nii.gz")
    widget._image.value = second
    _segment(widget, qtbot)
    for image in (first, second):
        for level, factor in ((1, 1), (2, 2), (3, 4)):
            layer = viewer.layers[f"{image.name} attention L{level} (1/{factor})"]
            assert layer.metadata["aunet_attention"]["image"] == image.name
        assert f"{image.name} segmentation" in viewer.layers
    assert viewer.layers["phantom attention L1 (1/1)"].data.shape != viewer.layers["second attention L1 (1/1)"].data.shape
    compare = AttentionWidget(viewer)
    viewer.window.add_dock_widget(compare)
    compare.reset_choices()
    # the first scan segmented again: its new layers join it, below the second scan's, not on top of the list
    widget._image.value = first
    _segment(widget, qtbot)
    group = ["attention L1 (1/1)", "attention L2 (1/2)", "attention L3 (1/4)", "segmentation"]
    assert [layer.name for layer in viewer.layers] == [
        "phantom", *(f"phantom {name}" for name in group), "second", *(f"second {name}" for name in group)]
    assert compare._image.value == "phantom"
    viewer.layers.selection.active = viewer.layers["phantom"]
    viewer.layers.selection.active = viewer.layers["second segmentation"]  # Compare follows the layer list
    assert compare._image.value == "second"
    tables = {}
    for name in ("phantom", "second"):
        compare._image.value = name
        compare.update_table()
        tables[name] = [row[2] for row in compare._table.value["data"]]
    assert tables["phantom"] != tables["second"]


def test_compare_docked_first_follows_the_segmentation_and_one_level_shows(
        make_napari_viewer, qtbot, phantom_path, monkeypatch):
    """Compare opens with the new segmentation's image and its finest level chosen and its table filled; of the
    attention layers only the finest is visible; with the maps deleted, showing a level changes nothing and says
    why."""
    from napari_aunet import _attention_widget as module

    viewer = make_napari_viewer()
    image = _open(viewer, phantom_path)
    compare = AttentionWidget(viewer)
    viewer.window.add_dock_widget(compare)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.value = image
    _segment(widget, qtbot, model="phantom", plane="axial")
    assert compare._image.value == "phantom" and compare._level.value == 1
    assert [row[0] for row in compare._table.value["data"]] == ["L1", "L2", "L3"]
    assert all(len(row[3]) == 4 for row in compare._table.value["data"])  # "0.37", not "0.3700" or 3.7e-01
    visible = [layer.name for layer in viewer.layers if layer.visible]
    assert visible == ["phantom", "phantom attention L1 (1/1)", "phantom segmentation"]
    # a class the user paints beyond the model's two gets a colour of its own, not transparent or grey
    colours = viewer.layers["phantom segmentation"].colormap.map(np.array([0, 1, 2, 3, 9, 200]))
    assert colours[0, 3] == 0 and np.all(colours[1:, 3] == 1)
    assert len({tuple(np.round(c, 3)) for c in colours[1:]}) == 5

    messages = []
    monkeypatch.setattr(module, "show_warning", messages.append)
    for level, factor in ((1, 1), (2, 2), (3, 4)):
        viewer.layers.remove(f"phantom attention L{level} (1/{factor})")
    visible = [layer.name for layer in viewer.layers if layer.visible]
    compare.show_overlay()
    assert "attention layers were deleted" in messages[-1]
    compare.show_side_by_side()
    assert "attention layers were deleted" in messages[-1] and not viewer.canvas.grid.enabled
    assert [layer.name for layer in viewer.layers if layer.visible] == visible


def test_rerun_replaces_own_layers_but_keeps_user_edits(make_napari_viewer, qtbot, phantom_path):
    viewer = make_napari_viewer()
    image = _open(viewer, phantom_path)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.value = image
    _segment(widget, qtbot, model="phantom")
    _segment(widget, qtbot, model="phantom")
    assert len(viewer.layers) == 5  # no duplicates: its own layers were replaced

    labels = viewer.layers["phantom segmentation"]
    labels.paint((10, 10, 10), 2)  # the user paints: a napari paint event
    edited = labels.data.copy()
    _segment(widget, qtbot, model="phantom")
    assert "phantom segmentation [1]" in viewer.layers  # the new result went to a new layer
    np.testing.assert_array_equal(viewer.layers["phantom segmentation"].data, edited)
    assert len(viewer.layers) == 6


def test_three_slice_directions_follow_the_model_and_are_said(make_napari_viewer, qtbot, tmp_path):
    """The brain model (trained on all three axes) averages three views by default; the status says so."""
    thick = generate_phantom((36, 45, 38), seed=11)
    nib.save(nib.Nifti1Image((thick.image * 100).astype(np.int16), AFFINE), tmp_path / "phantom.nii.gz")
    viewer = make_napari_viewer()
    image = _open(viewer, tmp_path / "phantom.nii.gz")
    widget = SegmentWidget(viewer)
    widget._model.value = "brain"
    assert widget._three_views.value
    widget._model.value = "phantom"
    assert not widget._three_views.value
    widget._mode.value = "3d"
    assert not widget._three_views.enabled
    widget._mode.value = "2d"
    widget._image.value = image
    _segment(widget, qtbot, three_views=True, with_attention=False)
    assert "volume (3 slice directions) done" in widget._status.value
    assert viewer.layers["phantom segmentation"].data.shape == viewer.layers["phantom"].data.shape


def test_brain_mask_layer_is_one_connected_filled_group_and_its_volume_is_said(
        make_napari_viewer, qtbot, phantom_path):
    """The *brain mask layer* box: a 0/1 layer over the image, aligned, its mL in the status; a rerun replaces it,
    a painted one is kept."""
    from scipy import ndimage

    viewer, image, widget = _segmented(make_napari_viewer, qtbot, phantom_path, with_attention=False,
                                       with_brain_mask=True)
    mask = viewer.layers["phantom brain mask"]
    labels = viewer.layers["phantom segmentation"]
    assert set(np.unique(mask.data)) <= {0, 1} and mask.data.any()
    np.testing.assert_allclose(mask.scale, image.scale)
    np.testing.assert_allclose(mask.translate, image.translate)
    assert ndimage.label(mask.data)[1] == 1
    assert ((labels.data > 0) <= (mask.data > 0)).mean() > 0.99
    millilitres = mask.data.sum() * np.prod(np.abs(image.scale)) / 1000
    assert f"brain mask {millilitres:.2f} mL" in widget._status.value

    _segment(widget, qtbot)
    assert [layer.name for layer in viewer.layers].count("phantom brain mask") == 1
    mask.paint((10, 10, 10), 1)  # the user corrects the mask: it is theirs now
    _segment(widget, qtbot)
    assert "phantom brain mask [1]" in viewer.layers


def test_current_slice_only_fills_that_slice_with_undo(make_napari_viewer, qtbot, phantom_path):
    viewer = make_napari_viewer()
    image = _open(viewer, phantom_path)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.value = image
    viewer.dims.set_current_step(0, 19)  # display axis 0 = R; slices along the viewer's slider
    _segment(widget, qtbot, model="phantom", scope="current slice")
    labels = viewer.layers["phantom segmentation"].data
    filled = [index for index in range(labels.shape[0]) if labels[index].any()]
    assert filled == [int(np.round(image.world_to_data(viewer.dims.point)[0]))]
    assert viewer.layers["phantom attention L2 (1/2)"].data.shape[0] == 1


def test_errors_are_notifications_not_crashes(make_napari_viewer, qtbot, phantom_path, monkeypatch):
    from napari_aunet import _segment_widget as module

    messages = []
    monkeypatch.setattr(module, "show_warning", messages.append)
    monkeypatch.setattr(module, "show_error", messages.append)
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.run()  # no image at all
    assert "Open a scan first" in messages[-1]

    viewer.add_image(np.zeros((3, 4, 8, 8), np.float32), name="series4d")
    viewer.add_image(np.full((8, 8), np.nan, np.float32), name="nan image")
    widget.reset_choices()
    widget._image.value = viewer.layers["nan image"]
    widget._model.value = "phantom"
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert "NaN" in messages[-1]
    assert len(viewer.layers) == 2  # nothing added, nothing lost

    image = _open(viewer, phantom_path)
    widget.reset_choices()
    widget._image.value = image
    widget._mode.value = "3d"
    widget.run()
    assert "model is 2D" in messages[-1]

    widget._mode.value = "2d"
    widget.run()
    widget.run()  # a second press while the first runs
    assert "already running" in messages[-1]
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)


@pytest.mark.slow
def test_demo_saves_a_screenshot_of_the_whole_window(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from qtpy.QtGui import QImage

    aunet = Path(sys.executable).parent / "aunet"
    out = tmp_path / "demo.png"
    subprocess.run([str(aunet), "demo", "--screenshot", str(out)], check=True, timeout=300, capture_output=True)
    picture = QImage(str(out))
    assert picture.width() >= 1000 and picture.height() >= 700  # the whole window, docks included


def test_uncertainty_layer_points_to_the_slice_most_worth_correcting(make_napari_viewer, qtbot, tmp_path):
    """File slice 9 (axial, S) is much noisier than the rest: the entropy layer and the status point to it,
    and the button takes the viewer there."""
    phantom = generate_phantom((20, 45, 38), seed=11)
    image = phantom.image.copy()
    image[9] += np.random.default_rng(0).normal(0, 0.6, image[9].shape).astype(np.float32)
    path = tmp_path / "noisy.nii.gz"
    nib.save(nib.Nifti1Image(image, AFFINE), path)
    viewer = make_napari_viewer()
    layer = _open(viewer, path)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.value = layer
    _segment(widget, qtbot, model="phantom", plane="axial", with_uncertainty=True, with_attention=False)
    uncertainty = viewer.layers["noisy uncertainty"]
    assert uncertainty.data.shape == layer.data.shape and float(uncertainty.data.max()) <= 1.0
    assert "phantom p(organ)" not in viewer.layers  # probabilities were computed, not shown: not asked for
    assert widget.uncertain_slice == (2, 9)  # display axis 2 = S = file axis 0, not flipped here
    assert "most uncertain slice: 9" in widget._status.value
    widget.go_to_uncertain_slice()
    assert round(layer.world_to_data(viewer.dims.point)[2]) == 9
    # Once slice 9 is corrected (here: marked reviewed), the next run points elsewhere.
    state_for(viewer).mark_reviewed(viewer.layers["noisy segmentation"], 2, 9)
    _segment(widget, qtbot, model="phantom", plane="axial", with_uncertainty=True, with_attention=False)
    assert widget.uncertain_slice is not None and widget.uncertain_slice[1] != 9


def test_label_volumes_csv_counts_the_layer_as_edited(make_napari_viewer, qtbot, phantom_path, tmp_path):
    import csv

    viewer, _, widget = _segmented(make_napari_viewer, qtbot, phantom_path, with_attention=False)
    labels = viewer.layers["phantom segmentation"]
    labels.data_setitem((np.array([0, 0, 0]), np.array([0, 1, 2]), np.array([0, 0, 0])), 2)  # three painted voxels
    path = widget.save_volumes(tmp_path / "volumes")
    assert path == tmp_path / "volumes.csv"
    rows = {row["name"]: row for row in csv.DictReader(path.open())}
    assert set(rows) == {"organ", "lesion"}
    assert int(rows["lesion"]["voxels"]) == int((labels.data == 2).sum())  # the edit is counted
    voxel_ml = abs(np.linalg.det(AFFINE[:3, :3])) / 1000
    assert float(rows["organ"]["ml"]) == pytest.approx(int(rows["organ"]["voxels"]) * voxel_ml, abs=1e-4)


def test_ct_window_presets_set_the_contrast_in_hounsfield_units(make_napari_viewer, tmp_path, monkeypatch):
    from napari_aunet import _segment_widget as module

    warnings = []
    monkeypatch.setattr(module, "show_warning", warnings.append)
    ct = np.full((6, 40, 40), -1000, np.int16)  # air
    ct[:, 8:32, 8:32] = 40  # soft tissue
    ct[:, 18:22, 18:22] = 900  # bone
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct, np.eye(4)), path)
    viewer = make_napari_viewer()
    layer = _open(viewer, path)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.value = layer
    widget._window.value = "lung"
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)
    widget._window.value = "brain"
    assert tuple(layer.contrast_limits) == (0.0, 80.0)
    assert not warnings  # this looks like a CT
    widget._window.value = "as opened"
    assert tuple(layer.contrast_limits) == (-1000.0, 900.0)
    mri = viewer.add_image(np.random.default_rng(0).uniform(0, 300, (6, 40, 40)).astype(np.float32), name="t1")
    widget.reset_choices()
    widget._image.value = mri
    widget._window.value = "bone"
    assert "does not look like a CT" in warnings[-1]


def test_nan_voxels_are_segmented_as_background_and_said(make_napari_viewer, qtbot, monkeypatch):
    from napari_aunet import _segment_widget as module

    messages = []
    monkeypatch.setattr(module, "show_warning", messages.append)
    data = (generate_phantom((8, 40, 40), seed=3).image * 100).astype(np.float32)
    data[:, :5, :5] = np.nan  # outside a resampled scan's field of view
    viewer, widget = _segmented_array(make_napari_viewer, qtbot, data, "holes", "phantom")
    assert "holds 200 NaN or infinite voxel(s)" in messages[-1]
    assert viewer.layers["holes segmentation"].data.shape == data.shape

    errors = []  # the widget's "refuse the scan" is the CLI's --nan refuse
    monkeypatch.setattr(module, "show_error", errors.append)
    _segment(widget, qtbot, nan="refuse")
    assert errors == ["Segmentation of 'holes' failed: the volume holds 200 NaN or infinite voxel(s) of 12800; "
                      "fix or mask them first"]
    assert [layer.name for layer in viewer.layers] == ["holes", "holes segmentation"]


def test_a_ct_given_to_the_mri_brain_model_is_a_notification_not_a_refusal(make_napari_viewer, qtbot, monkeypatch):
    from napari_aunet import _segment_widget as module

    messages = []
    monkeypatch.setattr(module, "show_warning", messages.append)
    ct = np.full((12, 40, 40), -1000, np.int16)
    ct[:, 8:32, 8:32] = 40
    ct[:, 10:30, 10:12] = 900
    viewer, _ = _segmented_array(make_napari_viewer, qtbot, ct, "ct", "brain")
    assert any("looks like a CT in Hounsfield units" in m for m in messages)
    assert "ct segmentation" in viewer.layers


def test_cancel_or_a_deleted_image_during_a_run_leave_the_layers_as_they_were(
        make_napari_viewer, qtbot, phantom_path, monkeypatch):
    from napari_aunet import _segment_widget as module

    messages = []
    monkeypatch.setattr(module, "show_warning", messages.append)
    viewer, image, widget = _segmented(make_napari_viewer, qtbot, phantom_path, with_attention=False)
    before = {layer.name: layer.data.copy() for layer in viewer.layers}
    widget.run()
    widget.cancel()  # cancel: the earlier result and the scan stay, nothing new
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert "cancelled" in widget._status.value
    assert list(before) == [layer.name for layer in viewer.layers]
    assert all(np.array_equal(before[layer.name], layer.data) for layer in viewer.layers)

    widget.run()
    viewer.layers.remove(image)  # the user deletes the scan while it is being segmented
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert "was removed while it was being segmented" in messages[-1]
    assert [layer.name for layer in viewer.layers] == ["phantom segmentation"]


def test_closing_the_viewer_during_a_run_stops_it_quietly(make_napari_viewer, qtbot, phantom_path, tmp_path):
    """The window closes while Segment runs: the run stops, nothing is added to the closed viewer, no error."""
    viewer, image, widget = _segmented(make_napari_viewer, qtbot, phantom_path, with_attention=False)
    widget.run()
    worker = widget._worker
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    qtbot.wait(50)  # the worker's last signals reach their (closed) widget
    assert worker.abort_requested


def test_compare_says_which_gate_does_the_work(make_napari_viewer, qtbot, phantom_path):
    """*Which gate does the work?*: each gate forced closed and open on the segmented scan, sorted by the Dice lost;
    a painted slice of the segmentation becomes the reference."""
    viewer, image, widget = _segmented(make_napari_viewer, qtbot, phantom_path)
    compare = AttentionWidget(viewer)
    viewer.window.add_dock_widget(compare)
    compare.measure_importance()
    qtbot.waitUntil(lambda: compare.importance_report is not None, timeout=120_000)
    report = compare.importance_report
    assert report["reference"] == "model" and [r["level"] for r in report["levels"]] != []
    assert sorted(r["level"] for r in report["levels"]) == [1, 2, 3]
    changes = [r["change_closed"] for r in report["levels"]]
    assert changes == sorted(changes)  # the gate whose closing costs most first
    assert compare._importance_table.shape == (3, 6)
    assert compare._importance_verdict.value.startswith(f"L{report['levels'][0]['level']} does the most work")

    labels = viewer.layers["phantom segmentation"]
    state_for(viewer).track_painting(labels)
    viewer.dims.order = (2, 0, 1)  # axial slices on screen (display axis 2 = S)
    labels.brush_size = 3
    labels.paint((5, 5, 10), 2)  # a correction on one axial slice
    compare.importance_report = None
    compare.measure_importance()
    qtbot.waitUntil(lambda: compare.importance_report is not None, timeout=120_000)
    assert compare.importance_report["reference"] == "labels"
    assert len(compare.importance_report["slices"]) == 1


@pytest.mark.skipif(not int8.available(), reason="the [int8] extra is not installed")
def test_precision_int8_in_the_widget_gives_the_fp32_labels_and_a_gpu_refusal_is_a_notification(
    make_napari_viewer, qtbot, phantom_path, monkeypatch, tmp_path
):
    monkeypatch.setenv(int8.CACHE_ENV, str(tmp_path))
    viewer, image, widget = _segmented(make_napari_viewer, qtbot, phantom_path, precision="fp32")
    fp32 = np.array(viewer.layers["phantom segmentation"].data)
    _segment(widget, qtbot, model="phantom", plane="axial", precision="int8")
    quantized = np.array(viewer.layers["phantom segmentation"].data)
    assert float((quantized == fp32).mean()) > 0.98
    assert any(layer.name.startswith("phantom attention L1") for layer in viewer.layers)
    assert len(list((tmp_path / "int8").glob("*.onnx"))) == 1

    shown = []
    monkeypatch.setattr("napari_aunet._segment_widget.show_error", shown.append)
    widget._device.value = "cuda"
    widget.run()
    assert not widget.running and shown and ("int8" in shown[0] or "CUDA" in shown[0] or "cuda" in shown[0]), shown
