"""Fine-tune widget end to end: paint corrections, train, compare, use the new model, save, revert."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_aunet._finetune_widget import FineTuneWidget
from napari_aunet._segment_widget import SegmentWidget
from napari_aunet.engine.checkpoint import load_checkpoint
from napari_aunet.engine.phantoms import generate_phantom

pytestmark = pytest.mark.gui


def _docked_widget(viewer, image, labels) -> FineTuneWidget:
    """A docked Fine-tune widget on ``image`` and ``labels``, slicing along display axis 0 (sagittal here)."""
    tune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(tune)
    tune.reset_choices()
    tune._image.value, tune._labels_layer.value = image, labels
    tune._plane.value = "sagittal"
    return tune


def _paint_slice(labels, index: int, plane: np.ndarray) -> None:
    """Write ``plane`` on slice ``index`` and end with a real brush stroke (which emits napari's paint event)."""
    coords = np.argwhere(plane >= 0)
    labels.data_setitem((np.full(len(coords), index), coords[:, 0], coords[:, 1]), plane[coords[:, 0], coords[:, 1]])
    labels.paint((index, 0, 0), int(plane[0, 0]))



def _corrected_phantom(make_napari_viewer, painted: tuple[int, ...], with_segment: bool = True):
    """A phantom scan with its true labels painted on ``painted`` slices, the Fine-tune widget on them starting
    from the phantom model, and (``with_segment``) a Segment widget using that model. Returns (viewer, labels,
    tune, segment)."""
    phantom = generate_phantom((12, 48, 48), seed=5, lesions=(2, 3))
    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.image, name="scan")
    labels = viewer.add_labels(np.zeros_like(phantom.labels), name="truth")
    segment = None
    if with_segment:
        segment = SegmentWidget(viewer)
        viewer.window.add_dock_widget(segment)
        segment._model.value = "phantom"
    tune = _docked_widget(viewer, image, labels)
    tune._model.value = "phantom"
    for index in painted:
        _paint_slice(labels, index, phantom.labels[index])
    return viewer, labels, tune, segment


def test_correct_then_fine_tune_end_to_end(make_napari_viewer, qtbot, tmp_path):
    phantom = generate_phantom((16, 48, 48), seed=5, lesions=(2, 3))
    path = tmp_path / "inverted.nii.gz"
    nib.save(nib.Nifti1Image((-phantom.image).astype(np.float32), np.eye(4)), path)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin="napari-aunet")
    segment = SegmentWidget(viewer)
    tune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(segment)
    viewer.window.add_dock_widget(tune)
    segment._image.value = image
    segment._model.value = "phantom"
    segment.run()
    qtbot.waitUntil(lambda: not segment.running, timeout=60_000)
    labels = viewer.layers["inverted segmentation"]

    tune.reset_choices()
    tune._image.value, tune._labels_layer.value, tune._model.value = image, labels, "phantom"
    tune._plane.value = "sagittal"  # display axis 0 (R) = file axis 0 here
    assert tune.annotated_display_slices() == []  # Segment's output is not an annotation
    # The user corrects slices 5 and 9 with the brush (napari's paint path), marks 7 reviewed.
    for index in (5, 9):
        mask = phantom.labels[index]
        for value in (0, 1, 2):
            coords = np.argwhere(mask == value)
            labels.data_setitem((np.full(len(coords), index), coords[:, 0], coords[:, 1]), value)
        labels.paint((index, 0, 0), int(mask[0, 0]))  # a real brush stroke emits the paint event
    viewer.dims.set_point(0, 7)
    tune.mark_reviewed()
    assert tune.annotated_display_slices() == [5, 7, 9]

    tune._steps.value, tune._budget.value, tune._val_fraction.value = 25, 0, 0.34
    tune._learning_rate.value = 3e-3
    tune.run()
    qtbot.waitUntil(lambda: not tune.running, timeout=120_000)
    assert len(tune._plot.loss) == 25
    table = tune._table.value["data"]
    assert "organ" in [row[0] for row in table] and all(row[2] != "–" for row in table)

    name = tune.use_new_model()
    assert segment._model.value == name  # the segment widget picked it up, no restart
    saved = tune.save_model(tmp_path / "tuned.safetensors")
    checkpoint = load_checkpoint(saved)
    assert checkpoint.provenance["annotated_slices"] == [5, 7, 9]
    assert len(checkpoint.history["loss"]) == 25
    tune.revert()
    assert segment._model.value == "phantom"


def test_a_worse_model_is_not_used_without_confirmation(make_napari_viewer, qtbot, monkeypatch):
    """A run that lowers held-out Dice says so; the first *Use* only asks, the second (the user insisting) uses
    it. Progress shows steps and time; the held-out line names the slices."""
    from napari_aunet import _finetune_widget as module

    messages = []
    monkeypatch.setattr(module, "show_warning", messages.append)
    viewer, labels, tune, segment = _corrected_phantom(make_napari_viewer, (2, 4, 6, 8))
    # a learning rate of 1 wrecks any network in a few steps: worse on the held-out slices by construction
    tune._steps.value, tune._budget.value, tune._val_fraction.value, tune._learning_rate.value = 6, 0, 0.5, 1.0
    tune.run()
    qtbot.waitUntil(lambda: not tune.running, timeout=120_000)
    assert tune._worse and "worse than 'phantom'" in tune._status.value and "stays active" in messages[-1]
    assert tune._progress_line.value.startswith("6 steps in")
    assert "held-out Dice: mean over classes on 2 annotated slice(s) not trained on" in tune._progress_line.value

    assert tune.use_new_model() is None and segment._model.value == "phantom"  # asked, not taken
    assert "to use it all the same" in messages[-1]
    name = tune.use_new_model()  # the user insists
    assert name is not None and segment._model.value == name


def test_progress_text_counts_steps_and_time_left():
    from napari_aunet._finetune_widget import progress_text

    assert progress_text(100, 400, 20.0, None) == "step 100 of 400 · 20 s · about 60 s left"
    assert progress_text(100, None, 20.0, 60.0) == "step 100 · 20 s · about 40 s left"
    assert progress_text(100, 400, 20.0, 30.0) == "step 100 of 400 · 20 s · about 10 s left"
    assert progress_text(5, None, 2.0, None) == "step 5 · 2 s"


def test_fine_tune_without_annotations_is_a_notification(make_napari_viewer, monkeypatch):
    from napari_aunet import _finetune_widget as module

    messages = []
    monkeypatch.setattr(module, "show_warning", messages.append)
    monkeypatch.setattr(module, "show_error", messages.append)
    viewer = make_napari_viewer()
    tune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(tune)
    tune.run()
    assert "Choose the image" in messages[-1]
    viewer.add_image(np.zeros((4, 16, 16), np.float32), name="scan")
    viewer.add_labels(np.zeros((4, 16, 16), np.uint8), name="labels")
    tune.reset_choices()
    tune.run()
    assert "no annotated slice" in messages[-1]


def test_fill_between_annotated_slices_is_one_undoable_edit(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((9, 40, 40), np.float32), name="scan")
    labels = viewer.add_labels(np.zeros((9, 40, 40), np.uint8), name="labels")
    tune = _docked_widget(viewer, image, labels)
    rows, cols = np.ogrid[:40, :40]
    for index, radius in ((2, 5), (6, 9)):  # the user paints a disk on slices 2 and 6
        disk = np.argwhere((rows - 20) ** 2 + (cols - 20) ** 2 <= radius**2)
        labels.data_setitem((np.full(len(disk), index), disk[:, 0], disk[:, 1]), 1)
    assert tune.annotated_display_slices() == [2, 6]
    before = labels.data.copy()
    assert tune.fill_between() == [3, 4, 5]
    areas = [int((labels.data[k] == 1).sum()) for k in range(2, 7)]
    assert areas == sorted(areas) and areas[0] < areas[2] < areas[4]
    assert not labels.data[[0, 1, 7, 8]].any()  # nothing outside the gap
    assert tune.annotated_display_slices() == [2, 3, 4, 5, 6]  # the filled slices now count (the user checks them)
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)


def test_fine_tune_from_brain_onto_the_users_own_classes(make_napari_viewer, qtbot, tmp_path):
    """Structures the brain model has no class for, named in the labels layer: a new head; the names travel
    into the saved checkpoint, the Segment widget's description and the layer Segment then makes."""
    phantom = generate_phantom((12, 48, 48), seed=3, lesions=(2, 3))
    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.image, name="scan")
    painted = np.zeros_like(phantom.labels)
    labels = viewer.add_labels(painted, name="my structures")
    labels.features = {"index": [0, 1, 2, 3], "class": ["background", "liver", "lesion", "vessel"]}
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment)
    tune = _docked_widget(viewer, image, labels)
    tune._model.value = "brain"
    for index in (3, 6, 9):
        truth = phantom.labels[index].copy()
        truth[:6, :6] = 3  # a third structure
        _paint_slice(labels, index, truth)
    tune._steps.value, tune._budget.value, tune._val_fraction.value = 4, 0, 0.34
    tune.run()
    qtbot.waitUntil(lambda: not tune.running, timeout=120_000)
    # 4 steps of a new head on one held-out slice: better or worse than before is a coin toss (Dice ~0.01 both)
    worse = "worse than 'brain'" in tune._status.value
    assert worse or ("new output head for 4 classes" in tune._status.value and "'brain'" in tune._status.value)
    assert {row[0] for row in tune._table.value["data"]} <= {"liver", "lesion", "vessel"}

    name = tune.use_new_model() or tune.use_new_model()  # a worse model is taken on the second press
    assert segment._model.value == name and "liver, lesion, vessel" in segment._card.value
    saved = load_checkpoint(tune.save_model(tmp_path / "structures.safetensors"))
    assert saved.config.class_names == ("background", "liver", "lesion", "vessel")
    segment._image.value = image
    segment.run()
    qtbot.waitUntil(lambda: not segment.running, timeout=60_000)
    made = viewer.layers["scan segmentation"]
    assert list(made.features["class"]) == ["background", "liver", "lesion", "vessel"]


def test_fine_tune_from_scratch_is_a_choice(make_napari_viewer, qtbot):
    from napari_aunet._finetune_widget import SCRATCH

    phantom = generate_phantom((8, 48, 48), seed=4)
    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.image, name="scan")
    labels = viewer.add_labels(np.zeros_like(phantom.labels), name="labels")
    tune = _docked_widget(viewer, image, labels)
    tune._model.value = SCRATCH
    for index in (2, 5):
        _paint_slice(labels, index, phantom.labels[index])
    tune._steps.value, tune._budget.value, tune._val_fraction.value = 3, 0, 0.0
    tune.run()
    qtbot.waitUntil(lambda: not tune.running, timeout=60_000)
    assert "from a new network" in tune._status.value
    assert tune._result.config.class_names == ("background", "label 1", "label 2")


def test_the_annotated_line_follows_the_brush(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((6, 32, 32), np.float32), name="scan")
    labels = viewer.add_labels(np.zeros((6, 32, 32), np.uint8), name="labels")
    tune = _docked_widget(viewer, image, labels)
    assert "none yet" in tune._annotated.value
    labels.paint((3, 16, 16), 1)  # one brush stroke on slice 3, nothing else done in the widget
    qtbot.waitUntil(lambda: tune._annotated.value.startswith("1 slice(s): 3"), timeout=5_000)


def test_fine_tune_follows_the_layer_selected_in_the_layer_list(make_napari_viewer):
    viewer = make_napari_viewer()
    scans = [viewer.add_image(np.zeros((4, 16, 16), np.float32), name=name) for name in ("first", "second")]
    masks = [viewer.add_labels(np.zeros((4, 16, 16), np.uint8), name=name) for name in ("first labels", "second labels")]
    tune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(tune)
    tune.reset_choices()
    for layer, widget in ((scans[0], tune._image), (masks[0], tune._labels_layer), (scans[1], tune._image)):
        viewer.layers.selection.active = layer
        assert widget.value is layer
    assert tune._labels_layer.value is masks[0]  # choosing an image leaves the labels choice alone


def test_cancel_during_fine_tuning_keeps_the_active_model(make_napari_viewer, qtbot, monkeypatch):
    from napari_aunet import _finetune_widget as module

    warnings = []
    monkeypatch.setattr(module, "show_warning", warnings.append)
    viewer, labels, tune, segment = _corrected_phantom(make_napari_viewer, (2, 6, 9))
    tune._steps.value, tune._budget.value = 0, 60
    tune.run()
    tune.run()  # a second press while it runs
    assert warnings == ["Fine-tuning is already running: wait for it or press Cancel."]
    qtbot.waitUntil(lambda: len(tune._plot.loss) >= 2, timeout=60_000)
    tune.cancel()
    qtbot.waitUntil(lambda: not tune.running, timeout=60_000)
    assert "cancelled: the model is unchanged" in tune._status.value
    assert not tune._use.enabled and segment._model.value == "phantom"


def test_deleting_the_labels_layer_during_fine_tuning_still_ends_with_a_model(make_napari_viewer, qtbot):
    """The run trains on a copy of the corrected slices taken at the start: deleting the layer mid-run loses
    nothing and breaks nothing."""
    viewer, labels, tune, _ = _corrected_phantom(make_napari_viewer, (2, 6, 9), with_segment=False)
    tune._steps.value, tune._budget.value = 8, 0
    tune.run()
    viewer.layers.remove(labels)
    qtbot.waitUntil(lambda: not tune.running, timeout=60_000)
    assert tune._status.value.startswith("from 'phantom': 8 steps") and tune._use.enabled


def test_closing_the_viewer_during_fine_tuning_stops_it_quietly(make_napari_viewer, qtbot):
    viewer, labels, tune, _ = _corrected_phantom(make_napari_viewer, (2, 6, 9), with_segment=False)
    tune._steps.value, tune._budget.value = 0, 60
    tune.run()
    worker = tune._worker
    qtbot.waitUntil(lambda: len(tune._plot.loss) >= 1, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    qtbot.wait(50)
    assert worker.abort_requested
