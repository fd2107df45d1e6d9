"""Autosave and recovery of label edits: a killed session, the timer, a save, restore / discard / later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
from napari.layers import Labels

from napari_aunet import _recovery
from napari_aunet._recovery import entries_for
from napari_aunet._state import state_for

pytestmark = pytest.mark.gui

# LPS-like file order (needs a permute and flips to display): the recovery file must keep the scan's geometry.
AFFINE = np.array([[0.0, 0.0, -1.0, 40.0], [0.0, -1.2, 0.0, 30.0], [2.0, 0.0, 0.0, -20.0], [0, 0, 0, 1]])


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    home = tmp_path / "data-home"
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    return home


@pytest.fixture
def scan_path(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(rng.integers(0, 200, (12, 30, 26)).astype(np.int16), AFFINE), path)
    return path


def _strokes(layer, count: int, first: int = 0) -> None:
    """``count`` brush strokes of label 2, each on its own axial slice (one paint event each)."""
    layer.brush_size = 3
    for k in range(first, first + count):
        layer.paint((k % layer.data.shape[0], 5 + k, 6), 2)


def _new_labels(viewer, image):
    """napari's own *New labels layer* button: zeros over the selected image, no metadata of ours."""
    viewer.layers.selection.active = image
    viewer._new_labels()
    return viewer.layers[-1]


CHILD = textwrap.dedent(
    """
    import sys, time
    import napari
    from napari_aunet._state import state_for

    viewer = napari.Viewer(show=False)
    (image,) = viewer.open(sys.argv[1], plugin="napari-aunet")
    viewer.layers.selection.active = image
    viewer._new_labels()
    labels = viewer.layers[-1]
    labels.brush_size = 3
    for k in range(7):                      # 5 strokes reach the recovery file, 2 are still unsaved
        labels.paint((k % labels.data.shape[0], 5 + k, 6), 2)
        if k == 4:
            state_for(viewer).keeper.flush()
            print("SAVED", flush=True)
    time.sleep(120)
    """
)


def test_edits_survive_a_killed_session(make_napari_viewer, qtbot, scan_path, data_home, tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(data_home)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(scan_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
        assert line.strip() == "SAVED", child.stderr.read() if child.poll() is not None else line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    (entry,) = entries_for(scan_path)
    assert (entry.layer_name, entry.edits) == ("head - Labels", 5)

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(scan_path), plugin="napari-aunet")
    dialog = state_for(viewer).keeper.offer_dialog
    assert dialog is not None and "'head - Labels' (5 strokes" in dialog.text()
    next(b for b in dialog.buttons() if b.text() == "Restore").click()

    restored = viewer.layers["head - Labels"]
    reference = Labels(np.zeros(image.data.shape, np.uint8), scale=image.scale)  # the same strokes, not watched
    _strokes(reference, 5)
    np.testing.assert_array_equal(restored.data, reference.data)
    np.testing.assert_allclose(restored.scale, image.scale)
    np.testing.assert_allclose(restored.translate, image.translate)
    # The painted slices come back too: fine-tuning still knows which slices the user annotated.
    assert state_for(viewer).annotated_slices(restored, 0) == [0, 1, 2, 3, 4]

    # Saving the restored layer removes its recovery copy; the file is in the scan's own order and affine.
    viewer.layers.selection.active = restored
    out = tmp_path / "corrected.nii.gz"
    viewer.layers.save(str(out), selected=True, plugin="napari-aunet")
    assert entries_for(scan_path) == []
    saved = nib.load(out)
    np.testing.assert_allclose(saved.affine, AFFINE)
    assert (np.asarray(saved.dataobj) == 2).sum() == (reference.data == 2).sum()


def test_a_single_stroke_is_saved_by_the_timer(make_napari_viewer, qtbot, scan_path, data_home, monkeypatch):
    monkeypatch.setattr(_recovery, "SECONDS_PER_SAVE", 0.2)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(scan_path), plugin="napari-aunet")
    labels = _new_labels(viewer, image)
    _strokes(labels, 1)
    assert entries_for(scan_path) == []  # one stroke: nothing yet
    qtbot.waitUntil(lambda: len(entries_for(scan_path)) == 1, timeout=10_000)
    assert entries_for(scan_path)[0].edits == 1


def test_deleting_a_layer_keeps_its_last_strokes(make_napari_viewer, qtbot, scan_path, data_home):
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(scan_path), plugin="napari-aunet")
    labels = _new_labels(viewer, image)
    _strokes(labels, 2)
    viewer.layers.remove(labels)
    state_for(viewer).keeper.flush()
    (entry,) = entries_for(scan_path)
    assert entry.edits == 2


def test_closing_the_window_keeps_the_last_strokes(make_napari_viewer, qtbot, scan_path, data_home):
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(scan_path), plugin="napari-aunet")
    _strokes(_new_labels(viewer, image), 3)
    keeper = state_for(viewer).keeper
    viewer.close()
    keeper.flush()
    (entry,) = entries_for(scan_path)
    assert entry.edits == 3


def test_own_edits_are_not_offered_back_and_later_keeps_them(make_napari_viewer, qtbot, scan_path, data_home,
                                                              monkeypatch):
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(scan_path), plugin="napari-aunet")
    _strokes(_new_labels(viewer, image), 5)
    state_for(viewer).keeper.flush()
    assert len(entries_for(scan_path)) == 1

    second = make_napari_viewer()
    second.open(str(scan_path), plugin="napari-aunet")
    assert state_for(second).keeper.offer_dialog is None  # this session's own autosave

    monkeypatch.setattr(_recovery, "SESSION", "a later session")
    third = make_napari_viewer()
    third.open(str(scan_path), plugin="napari-aunet")
    dialog = state_for(third).keeper.offer_dialog
    next(b for b in dialog.buttons() if b.text() == "Later").click()
    assert len(entries_for(scan_path)) == 1 and [layer.name for layer in third.layers] == ["head"]

    fourth = make_napari_viewer()
    fourth.open(str(scan_path), plugin="napari-aunet")
    next(b for b in state_for(fourth).keeper.offer_dialog.buttons() if b.text() == "Discard").click()
    assert entries_for(scan_path) == []
    assert not _recovery.scan_folder(scan_path).exists()


def test_segmentation_edits_keep_class_names(make_napari_viewer, qtbot, scan_path, data_home, monkeypatch):
    """A Segment output layer (the scan's placement in its metadata) restores with its class names and colours."""
    from napari_aunet._segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(scan_path), plugin="napari-aunet")
    widget = SegmentWidget(viewer)
    widget._image.value = image
    widget._model.value = "phantom"
    widget._with_attention.value = False
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    labels = viewer.layers["head segmentation"]
    _strokes(labels, 5)
    state_for(viewer).keeper.flush()
    (entry,) = entries_for(scan_path)
    assert entry.class_names == {0: "background", 1: "organ", 2: "lesion"}

    monkeypatch.setattr(_recovery, "SESSION", "a later session")
    later = make_napari_viewer()
    later.open(str(scan_path), plugin="napari-aunet")
    next(b for b in state_for(later).keeper.offer_dialog.buttons() if b.text() == "Restore").click()
    restored = later.layers["head segmentation"]
    np.testing.assert_array_equal(restored.data, labels.data)
    assert list(restored.features["class"]) == ["background", "organ", "lesion"]
    assert state_for(later).is_user_edited(restored)  # a new Segment run never overwrites it
