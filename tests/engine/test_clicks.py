"""Click to segment (v1): positive clicks add the predicted object under them, negative ones remove it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.clicks import Click, ClickSegmenter, flood_fill, segment_clicks
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.phantoms import generate_phantom


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom((12, 96, 80), seed=3, lesions=(2, 3))


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(load_model("phantom"), device="cpu")


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_flood_fill_keeps_only_the_connected_part():
    mask = np.zeros((10, 10), bool)
    mask[1:4, 1:4] = True
    mask[6:9, 6:9] = True
    component = flood_fill(mask, (2, 2))
    assert component[1:4, 1:4].all() and not component[6:9, 6:9].any()
    assert not flood_fill(mask, (5, 5)).any()
    cube = np.zeros((6, 6, 6), bool)
    cube[1:3, 1:3, 1:3] = cube[4:, 4:, 4:] = True
    assert flood_fill(cube, (1, 1, 1)).sum() == 8


def test_a_positive_click_segments_the_organ_on_its_slice(phantom, segmenter):
    organ = phantom.labels[6] > 0
    centre = tuple(int(v) for v in np.argwhere(organ).mean(axis=0))
    mask = segment_clicks(segmenter, phantom.image, [Click((6, *centre))], axis=0)
    assert mask[6].any() and not mask[5].any() and not mask[7].any()  # 2D: that slice only
    assert _dice(mask[6], organ) > 0.9


def test_a_negative_click_removes_the_part_under_it(phantom, segmenter):
    organ = phantom.labels[6] > 0
    centre = tuple(int(v) for v in np.argwhere(organ).mean(axis=0))
    session = ClickSegmenter(segmenter, phantom.image)
    current = np.zeros(phantom.image.shape, bool)
    update = session.click(current, Click((6, *centre)), axis=0)
    current[update.region] = update.mask
    assert current.any()
    update = session.click(current, Click((6, *centre), positive=False), axis=0)
    current[update.region] = update.mask
    assert not current.any()
    assert len(session._cache) == 1  # the second click on the slice reused the model's output


def test_3d_clicks_propagate_through_neighbouring_slices(phantom, segmenter):
    organ = phantom.labels > 0
    centre = tuple(int(v) for v in np.argwhere(organ[6]).mean(axis=0))
    mask = segment_clicks(segmenter, phantom.image, [Click((6, *centre))], axis=0, three_d=True)
    covered = [index for index in range(12) if mask[index].any()]
    assert len(covered) >= 6
    assert _dice(mask, organ) > 0.8


def test_a_click_outside_the_volume_is_refused(phantom, segmenter):
    with pytest.raises(ValueError, match="outside the volume"):
        segment_clicks(segmenter, phantom.image, [Click((40, 0, 0))])


def test_flood_fill_from_a_seed_mask_keeps_every_touched_component():
    mask = np.zeros((10, 10), bool)
    mask[1:4, 1:4] = mask[6:9, 6:9] = mask[1:3, 7:9] = True
    seeds = np.zeros_like(mask)
    seeds[2, 2] = seeds[7, 7] = True
    component = flood_fill(mask, seeds)
    assert component[1:4, 1:4].all() and component[6:9, 6:9].all() and not component[1:3, 7:9].any()


def test_nan_voxels_are_clicked_on_as_background(phantom, segmenter):
    """As Segment does: NaN/Inf (outside a resampled scan's field of view) become the scan's minimum."""
    organ = phantom.labels[6] > 0
    centre = tuple(int(v) for v in np.argwhere(organ).mean(axis=0))
    holed = phantom.image.astype(np.float32)
    holed[:, :4, :4] = np.nan
    session = ClickSegmenter(segmenter, holed)
    assert session.non_finite == 16 * holed.shape[0]
    update = session.click(np.zeros(holed.shape, bool), Click((6, *centre)), axis=0)
    assert update.mask.any()


@pytest.mark.parametrize("model", ["phantom", "click"])
def test_no_mask_is_cut_by_the_window_the_window_grows_to_the_object(model):
    """An organ 200 px across on a 300 x 300 image: the first 128-px window cannot hold it; the window grows
    (re-centred on the object) until the mask no longer reaches one of its inner edges."""
    from napari_aunet.engine.clicks import cut_by_window

    phantom = generate_phantom((300, 300), seed=4, lesions=(1, 1))
    organ = phantom.labels > 0
    rows, cols = np.nonzero(organ)
    assert max(np.ptp(rows), np.ptp(cols)) > 150
    session = ClickSegmenter(Segmenter(load_model(model), device="cpu"), phantom.image)
    current = np.zeros(organ.shape, bool)
    update = session.click(current, Click(tuple(int(v) for v in np.argwhere(organ).mean(axis=0))), axis=0)
    assert not cut_by_window(update.mask, update.region, organ.shape)
    if model == "phantom":  # the segmentation model sees the whole organ: it is found whole, beyond 128 px
        found_rows, found_cols = np.nonzero(update.mask)
        assert max(np.ptp(found_rows), np.ptp(found_cols)) > 128
        current[update.region] = update.mask
        assert _dice(current, organ) > 0.8


@pytest.mark.parametrize("model", ["phantom", "click"])
def test_a_box_segments_the_object_inside_it(phantom, model):
    """A box around one lesion gives what lies inside it; a box outside the slice is one plain error."""
    from scipy import ndimage

    parts, count = ndimage.label(phantom.labels[6] == 2)
    sizes = ndimage.sum_labels(np.ones_like(parts), parts, range(1, count + 1))
    lesion = parts == 1 + int(np.argmax(sizes))
    rows, cols = np.nonzero(lesion)
    box = (6, (rows.min() - 2, cols.min() - 2, rows.max() + 2, cols.max() + 2))
    mask = segment_clicks(Segmenter(load_model(model), device="cpu"), phantom.image, [], axis=0, box=box)
    assert mask[6].any() and not mask[5].any()
    inside = np.zeros(lesion.shape, bool)
    inside[box[1][0] : box[1][2] + 1, box[1][1] : box[1][3] + 1] = True
    assert not (mask[6] & ~inside).any()  # nothing outside the box
    # the segmentation model (v1) cannot tell a lesion from the organ around it; the click model can
    assert _dice(mask[6], lesion) > (0.5 if model == "click" else 0.3)
    with pytest.raises(ValueError, match="does not cover"):
        ClickSegmenter(Segmenter(load_model(model), device="cpu"), phantom.image).box(
            np.zeros(phantom.image.shape, bool), 0, 6, (200, 200, 210, 210))
