"""Label names and colours in and out as ITK-SNAP files, on a real labels layer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_aunet._labels_widget import LabelsWidget
from napari_aunet.io.labeldesc import read_label_descriptions

pytestmark = pytest.mark.gui


def test_apply_then_save_an_itk_snap_label_file(make_napari_viewer, tmp_path, monkeypatch):
    from napari_aunet import _labels_widget as module

    errors = []
    monkeypatch.setattr(module, "show_error", errors.append)
    viewer = make_napari_viewer()
    data = np.zeros((4, 20, 20), np.uint8)
    data[:, 2:8, 2:8], data[:, 10:18, 10:18], data[0, 0, 0] = 1, 12, 5
    layer = viewer.add_labels(data, name="atlas")
    widget = LabelsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._labels_layer.value = layer
    source = tmp_path / "snap.txt"
    source.write_text('    0 0 0 0 0 0 0 "Clear Label"\n    1 255 0 0 1 1 1 "Caudate"\n'
                      '   12 0 0 255 0.5 1 1 "Putamen"\n')
    assert [e.name for e in widget.apply_file(source)] == ["Clear Label", "Caudate", "Putamen"]
    np.testing.assert_allclose(layer.get_color(1), [1, 0, 0, 1])
    np.testing.assert_allclose(layer.get_color(12), [0, 0, 1, 0.5])
    assert dict(zip(layer.features["index"], layer.features["class"], strict=True))[12] == "Putamen"
    assert "without a name in the file: 5" in widget._status.value

    saved = widget.save_file(tmp_path / "out")
    entries = {e.value: e for e in read_label_descriptions(saved)}
    assert saved.name == "out.txt" and sorted(entries) == [0, 1, 5, 12]
    assert entries[1].name == "Caudate" and entries[1].rgb == (255, 0, 0)
    assert entries[12].alpha == 0.5 and entries[5].name == "Label 5"

    bad = tmp_path / "bad.txt"
    bad.write_text("this is not a label file\n")
    assert widget.apply_file(bad) == [] and "not an ITK-SNAP label line" in errors[-1]


def test_segment_output_names_go_out_as_an_itk_snap_file(make_napari_viewer, tmp_path):
    """The class names and colours Segment gives its labels layer are what the file holds."""
    from napari_aunet._layers import labels_appearance

    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.array([[0, 1], [2, 2]], np.uint8), name="seg",
                              **labels_appearance(("background", "grey matter", "white matter")))
    widget = LabelsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._labels_layer.value = layer
    entries = {e.value: e for e in read_label_descriptions(widget.save_file(tmp_path / "tissue.txt"))}
    assert entries[1].name == "grey matter" and entries[2].name == "white matter"
    assert entries[1].rgb == (230, 25, 75)  # the fixed colour of class 1
