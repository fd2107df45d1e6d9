"""How the attention maps look after Segment, and the Compare widget's one-level / grid display."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_aunet._attention_widget import GRID_SCAN, AttentionWidget
from napari_aunet._segment_widget import SegmentWidget
from napari_aunet.engine.phantoms import generate_phantom

pytestmark = pytest.mark.gui

LEVELS = {1: "phantom attention L1 (1/1)", 2: "phantom attention L2 (1/2)", 3: "phantom attention L3 (1/4)"}


@pytest.fixture
def segmented(make_napari_viewer, qtbot, tmp_path):
    """A phantom opened from a file and segmented with attention maps, Compare docked: (viewer, compare, segment)."""
    phantom = generate_phantom((20, 45, 38), seed=11)
    path = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image((phantom.image * 100).astype(np.int16), np.diag([2.0, 1.2, 1.0, 1.0])), path)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin="napari-aunet")
    compare, segment = AttentionWidget(viewer), SegmentWidget(viewer)
    viewer.window.add_dock_widget(compare)
    viewer.window.add_dock_widget(segment)
    segment._image.value = image
    segment._model.value = "phantom"
    _segment(segment, qtbot)
    return viewer, compare, segment


def _segment(widget, qtbot) -> None:
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)


def _visible_maps(viewer) -> list[str]:
    return [name for name in LEVELS.values() if viewer.layers[name].visible]


def _colorbars(viewer) -> list[str]:
    return [name for name in LEVELS.values() if viewer.layers[name].colorbar.visible]


def test_one_level_shows_over_the_scan_with_the_labels_outlined(segmented):
    """After Segment: the scan, one map (the finest) with its colour bar, the segmentation outlined above it."""
    viewer, compare, _ = segmented
    assert _visible_maps(viewer) == [LEVELS[1]] and _colorbars(viewer) == [LEVELS[1]]
    assert viewer.layers["phantom"].visible and not viewer.canvas.grid.enabled
    labels = viewer.layers["phantom segmentation"]
    assert labels.visible and labels.contour >= 1
    assert viewer.layers.index(labels) > max(viewer.layers.index(name) for name in LEVELS.values())
    level = viewer.layers[LEVELS[1]]
    assert level.blending == "translucent"
    colours = level.colormap.map(np.array([0.0, 0.5, 1.0]))
    assert colours[0, 3] == 0 and 0 < colours[1, 3] < colours[2, 3] < 1  # clear at 0, never opaque

    compare._level.value = 3  # the level selector switches which single level is visible
    assert _visible_maps(viewer) == [LEVELS[3]] and _colorbars(viewer) == [LEVELS[3]]
    assert labels.visible and viewer.layers["phantom"].visible


def test_grid_is_one_click_away_and_puts_the_scan_under_each_level(segmented):
    viewer, compare, _ = segmented
    order = [layer.name for layer in viewer.layers]
    compare._grid.value = True
    grid = viewer.canvas.grid
    assert grid.enabled
    assert _visible_maps(viewer) == list(LEVELS.values())
    layers = list(viewer.layers)
    cells = {}
    for index, layer in enumerate(layers):
        if layer.visible:
            cells.setdefault(grid.position(index, layers), []).append(layer)
    assert len(cells) == 4  # three levels and the segmentation, each over the scan
    for name in LEVELS.values():
        (cell,) = [members for members in cells.values() if viewer.layers[name] in members]
        scan, drawn = cell  # bottom first: the scan under the map
        assert scan.metadata[GRID_SCAN] == "phantom" and scan.data is viewer.layers["phantom"].data
        assert drawn.name == name and drawn.name_overlay.visible
    assert grid.position(layers.index(viewer.layers[LEVELS[1]]), layers) == (0, 0)  # the finest top left
    (last,) = [members for members in cells.values() if viewer.layers["phantom segmentation"] in members]
    assert [layer.name for layer in last] == ["phantom", "phantom segmentation"]

    compare._level.value = 2  # in the grid every level stays; the choice shows when the grid is off
    assert _visible_maps(viewer) == list(LEVELS.values())
    compare._grid.value = False
    assert not viewer.canvas.grid.enabled
    assert [layer.name for layer in viewer.layers] == order  # copies gone, the layer list as it was
    assert _visible_maps(viewer) == [LEVELS[2]] and _colorbars(viewer) == [LEVELS[2]]
    assert viewer.layers["phantom segmentation"].visible and viewer.layers["phantom"].visible
    assert not any(viewer.layers[name].name_overlay.visible for name in LEVELS.values())


def test_napari_grid_button_and_the_box_agree(segmented):
    viewer, compare, _ = segmented
    compare._grid.value = True
    viewer.canvas.grid.enabled = False  # napari's own grid button
    assert not compare._grid.value
    assert not any(GRID_SCAN in layer.metadata for layer in viewer.layers)
    assert _visible_maps(viewer) == [LEVELS[1]]
    viewer.canvas.grid.enabled = True
    assert compare._grid.value


def test_a_rerun_keeps_the_chosen_level_and_the_users_fill(segmented, qtbot):
    """Segmenting again shows the level chosen in Compare, not the finest; labels switched back to filled stay so."""
    viewer, compare, segment = segmented
    order = [layer.name for layer in viewer.layers]
    compare._level.value = 2
    viewer.layers["phantom segmentation"].contour = 0
    _segment(segment, qtbot)
    assert _visible_maps(viewer) == [LEVELS[2]] and _colorbars(viewer) == [LEVELS[2]]
    assert viewer.layers["phantom segmentation"].contour == 0

    compare._grid.value = True
    _segment(segment, qtbot)  # the grid stays, rebuilt: one scan copy per level
    assert viewer.canvas.grid.enabled and compare._grid.value
    assert sum(GRID_SCAN in layer.metadata for layer in viewer.layers) == 3
    layers = list(viewer.layers)
    cells = {viewer.canvas.grid.position(index, layers) for index, layer in enumerate(layers) if layer.visible}
    assert len(cells) == 4
    compare._grid.value = False
    assert [layer.name for layer in viewer.layers] == order
