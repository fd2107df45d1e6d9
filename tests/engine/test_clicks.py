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
