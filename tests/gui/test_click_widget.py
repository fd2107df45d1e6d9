"""Clicks driven through the prompt Points layer: positive grows the object, negative removes, undo restores."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_aunet._click_widget import ClickWidget
from napari_aunet._orientation import file_order
from napari_aunet.engine.phantoms import generate_phantom

pytestmark = pytest.mark.gui

# Stored (S, A, R)-like with flips, so world -> file index mapping is really exercised.
AFFINE = np.array([[0.0, 0.0, -1.0, 40.0], [0.0, -1.0, 0.0, 30.0], [2.0, 0.0, 0.0, -20.0], [0, 0, 0, 1]])


@pytest.fixture
def scene(make_napari_viewer, tmp_path):
    phantom = generate_phantom((12, 96, 80), seed=3, lesions=(2, 3))
    path = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(phantom.image, AFFINE), path)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin="napari-aunet")
    widget = ClickWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.value = image
    widget._model.value = "phantom"
    widget._plane.value = "axial"  # display axis 2 = S = file axis 0
    return viewer, widget, phantom, image


def _world_of_file_voxel(voxel):
    return (AFFINE @ [*voxel, 1.0])[:3]


def test_positive_click_grows_negative_removes_undo_restores(scene):
    viewer, widget, phantom, image = scene
    points = widget.start()
    objects = widget._target.value
    assert objects.name == "phantom objects" and objects.data.shape == image.data.shape

    organ = phantom.labels[6] > 0
    centre = tuple(int(v) for v in np.argwhere(organ).mean(axis=0))
    points.add(_world_of_file_voxel((6, *centre)))  # a click, through the Points layer's data event
    in_file = file_order(objects.data, objects.metadata)  # display (R, A, S) back to the file's order
    object_mask = in_file == 1
    assert object_mask[6].sum() > 0.9 * organ.sum()
    assert not object_mask[5].any()  # 2D: one slice
    grown = objects.data.copy()

    widget._negative.value = True
    points.add(_world_of_file_voxel((6, *centre)))
    assert points.features["polarity"].tolist() == ["positive", "negative"]
    assert not (objects.data == 1).any()  # the negative click removed the object under it

    objects.undo()  # napari's own undo reverts the last click
    np.testing.assert_array_equal(objects.data, grown)


def test_next_object_and_3d_propagation(scene):
    viewer, widget, phantom, image = scene
    points = widget.start()
    widget._three_d.value = True
    organ = phantom.labels > 0
    centre = tuple(int(v) for v in np.argwhere(organ[6]).mean(axis=0))
    points.add(_world_of_file_voxel((6, *centre)))
    objects = widget._target.value
    in_file = file_order(objects.data, objects.metadata)
    assert len([i for i in range(12) if (in_file[i] == 1).any()]) >= 6
    widget.next_object()
    assert widget.object_id == 2 and objects.selected_label == 2


def test_clicking_without_an_image_is_a_notification(make_napari_viewer, monkeypatch):
    from napari_aunet import _click_widget as module

    messages = []
    monkeypatch.setattr(module, "show_warning", messages.append)
    viewer = make_napari_viewer()
    widget = ClickWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.start() is None and "Open a scan" in messages[-1]
