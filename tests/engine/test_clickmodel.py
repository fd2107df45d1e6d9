"""Click maps, simulated clicks, and the bundled click-guided model (v2) against v1."""

from __future__ import annotations

import numpy as np
import pytest

from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.clickmodel import (
    click_maps,
    deepest_point,
    is_click_model,
    next_click,
    random_component,
)
from napari_aunet.engine.clicks import Click, ClickSegmenter
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.phantoms import generate_phantom


def test_click_maps_are_gaussian_blobs_per_polarity():
    maps = click_maps((20, 30), positives=[(5, 6)], negatives=[(15, 20), (2, 28)])
    assert maps.shape == (2, 20, 30) and maps.dtype == np.float32
    assert maps[0, 5, 6] == pytest.approx(1.0) and maps[1, 15, 20] == pytest.approx(1.0)
    assert maps[0, 15, 20] < 1e-3 and maps[1].max() == pytest.approx(1.0)


def test_deepest_point_and_the_next_corrective_click():
    target = np.zeros((20, 20), bool)
    target[4:15, 4:15] = True
    assert deepest_point(target) == (9, 9)
    prediction = np.zeros_like(target)
    assert next_click(prediction, target) == ((9, 9), True)  # missed everything: click inside
    prediction = target.copy()
    prediction[0:3, 0:20] = True  # overflow at the top
    point, positive = next_click(prediction, target)
    assert not positive and point[0] < 3
    assert next_click(target, target) is None


def _dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _simulate(segmenter, image, target, clicks):
    session = ClickSegmenter(segmenter, image)
    current = np.zeros(target.shape, bool)
    click = (deepest_point(target), True)
    for _ in range(clicks):
        if click is None:
            break
        update = session.click(current, Click(*click), axis=0)
        current[update.region] = update.mask
        click = next_click(current, target)
    return _dice(current, target)


@pytest.mark.slow
def test_the_click_model_beats_v1_on_held_out_lesions():
    click = Segmenter(load_model("click"), device="cpu")
    assert is_click_model(click.config)
    v1 = Segmenter(load_model("phantom"), device="cpu")
    rng = np.random.default_rng(0)
    v1_scores, v2_scores = [], []
    for i in range(8):
        phantom = generate_phantom((128, 128), seed=10**9 + 7 * i, lesion_radius=(2.0, 8.0))
        target = random_component(phantom.labels == (2 if (phantom.labels == 2).any() else 1), rng, minimum=5)
        if target is None:
            continue
        v1_scores.append(_simulate(v1, phantom.image, target, 3))
        v2_scores.append(_simulate(click, phantom.image, target, 3))
    assert np.mean(v2_scores) > np.mean(v1_scores)
    assert np.mean(v2_scores) > 0.7


@pytest.mark.slow
def test_the_click_model_carries_an_organ_through_neighbouring_slices():
    """v2 in 3D: one click on the middle slice of a phantom organ; pseudo-clicks carry it to the other slices."""
    from napari_aunet.engine.clicks import segment_clicks

    phantom = generate_phantom((14, 96, 96), seed=7, lesions=(1, 2))
    organ = phantom.labels > 0
    centre = tuple(int(v) for v in np.argwhere(organ[7]).mean(axis=0))
    click = Segmenter(load_model("click"), device="cpu")
    mask = segment_clicks(click, phantom.image, [Click((7, *centre))], axis=0, three_d=True)
    with_organ = [i for i in range(14) if organ[i].any()]
    reached = [i for i in range(14) if mask[i].any()]
    assert set(reached) <= set(with_organ) and len(reached) >= len(with_organ) - 2
    assert _dice(mask, organ) > 0.8
    flat = segment_clicks(click, phantom.image, [Click((7, *centre))], axis=0, three_d=False)
    assert [i for i in range(14) if flat[i].any()] == [7]


def test_the_bundled_click_model_takes_boxes_and_names_its_training_sources():
    from napari_aunet.engine.clickmodel import takes_boxes

    checkpoint = load_model("click")
    assert takes_boxes(checkpoint.config)
    for source in ("previous mask", "Schaefer 2018", "THOMAS thalamic nuclei", "CC BY 4.0", "MIT", "MNI ICBM 2009a", "Hammers atlas"):
        assert source in checkpoint.model_card, source
    assert checkpoint.provenance["held_out"].startswith("the hammers atlas")


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_a_first_click_shown_smaller_keeps_the_object_and_the_gate_maps_on_the_image_grid(scale):
    """The first click may be shown to the model at a smaller scale (a window 1/scale times larger, shrunk): the
    object comes back on the image's own pixels, and each gate's cells still tile the clicked window exactly."""
    phantom = generate_phantom((128, 128), seed=3)
    organ = phantom.labels > 0
    session = ClickSegmenter(Segmenter(load_model("click"), device="cpu"), phantom.image)
    session.first_click_scale, session.keep_attention = scale, True
    update = session.click(np.zeros(organ.shape, bool), Click(deepest_point(organ)), axis=0)
    mask = np.zeros(organ.shape, bool)
    mask[update.region] = update.mask
    assert _dice(mask, organ) > 0.85
    window = update.region
    assert window[0].stop - window[0].start == 128  # the whole image (a window is never larger than the slice)
    for level, attention in session.last_attention.items():
        cell = 2 ** (level - 1) / scale  # image pixels a cell of this level spans
        assert attention.geometry.scale == pytest.approx((cell, cell))
        for axis in range(2):
            first_edge = attention.geometry.offset[axis] - cell / 2
            last_edge = first_edge + attention.data.shape[axis] * cell
            assert first_edge == pytest.approx(window[axis].start - 0.5)
            assert last_edge == pytest.approx(window[axis].stop - 0.5)


def test_one_click_takes_an_organ_larger_than_any_training_object():
    """The click model learnt objects of a few hundred pixels; a slice's first click is shown to it smaller
    (FIRST_CLICK_SCALE), so one click takes a 12,000-pixel organ whole instead of a disk inside it."""
    from napari_aunet.engine.clicks import FIRST_CLICK_SCALE

    phantom = generate_phantom((192, 192), seed=3)
    organ = phantom.labels > 0
    scores = {}
    for scale in (1.0, FIRST_CLICK_SCALE):
        session = ClickSegmenter(Segmenter(load_model("click"), device="cpu"), phantom.image)
        session.first_click_scale = scale
        update = session.click(np.zeros(organ.shape, bool), Click(deepest_point(organ)), axis=0)
        mask = np.zeros(organ.shape, bool)
        mask[update.region] = update.mask
        scores[scale] = _dice(mask, organ)
    assert organ.sum() > 12_000 and scores[FIRST_CLICK_SCALE] > 0.95 > 0.75 > scores[1.0]


def test_a_click_model_extended_with_the_previous_mask_answers_as_before_until_trained():
    """The previous-mask channel is added with input weights 0: the wider model's answer is the 4-channel
    model's, whatever mask it is shown."""
    from dataclasses import replace

    import torch

    from napari_aunet.engine.clickmodel import (
        MASK_CHANNELS,
        predict_object,
        takes_previous,
        with_previous_mask,
    )
    from napari_aunet.engine.model import AttentionUNet

    torch.manual_seed(0)  # a 4-channel click model (the bundled one has the channel already)
    narrow = AttentionUNet(replace(load_model("click").config, in_channels=MASK_CHANNELS - 1)).eval()
    wide = with_previous_mask(narrow).eval()
    assert takes_previous(wide.config) and not takes_previous(narrow.config)
    phantom = generate_phantom((96, 96), seed=5)
    window = (phantom.image - phantom.image.min()) / np.ptp(phantom.image)
    previous = np.zeros(window.shape, bool)
    previous[20:60, 30:70] = True
    before = predict_object(narrow, window, [(40, 50)], [(10, 10)])
    after = predict_object(wide, window, [(40, 50)], [(10, 10)], previous=previous)
    np.testing.assert_allclose(after, before, atol=1e-5)
    with pytest.raises(ValueError, match="extended"):
        with_previous_mask(wide)


def test_a_correction_shows_the_model_the_object_as_it_stands_and_a_first_click_shows_none():
    """RITM's design: each click after the first on a slice gives the model the object's current mask on that
    slice (what the user sees, brush edits included); the first click, and a click on another slice, an empty one."""
    from napari_aunet.engine.clickmodel import takes_previous

    segmenter = Segmenter(load_model("click"), device="cpu")
    assert takes_previous(segmenter.config)
    seen = []
    hook = segmenter.model.encoders[0].register_forward_pre_hook(lambda _, args: seen.append(args[0][0, 4].numpy()))
    phantom = generate_phantom((128, 128), seed=3)
    organ = phantom.labels > 0
    volume = np.stack([phantom.image] * 3)
    session = ClickSegmenter(segmenter, volume)
    current = np.zeros(volume.shape, bool)
    first = session.click(current, Click((1, *deepest_point(organ))), axis=0)
    current[first.region] |= first.mask
    assert seen and not any(plane.any() for plane in seen)  # a first click: no previous mask
    current[1, :5] = True  # a brush stroke the user added on the slice
    seen.clear()
    rows, cols = np.nonzero(~organ & ~current[1])
    session.click(current, Click((1, int(rows[len(rows) // 2]), int(cols[len(cols) // 2])), positive=False), axis=0)
    shown = seen[0] > 0.5
    assert shown.shape == (128, 128) and np.array_equal(shown, current[1])  # the whole slice is the window here
    seen.clear()
    session.click(current, Click((0, *deepest_point(organ))), axis=0)  # the same object, another slice
    assert not seen[0].any()
    hook.remove()


def test_a_click_model_with_the_previous_mask_still_trains_on_boxes():
    """The second training stage (and fine-tuning) of a 5-channel click model shows boxes as often as asked: a
    model that never sees one in training forgets what a box means."""
    from napari_aunet.engine.clickmodel import BOX_CHANNELS, MASK_CHANNELS, simulated_click_batches

    phantom = generate_phantom((64, 64), seed=2)
    window = ((phantom.image - phantom.image.min()) / np.ptp(phantom.image)).astype(np.float32)
    organ = phantom.labels > 0
    model = load_model("click").build_model()
    assert model.config.in_channels == MASK_CHANNELS
    inputs, targets = next(simulated_click_batches(lambda rng: (window, organ), model, 8, seed=0, box_share=1.0))
    boxes = inputs[:, BOX_CHANNELS - 1]
    assert inputs.shape == (8, MASK_CHANNELS, 64, 64) and np.array_equal(targets[0], organ)
    assert all(box.any() for box in boxes)  # every sample prompted with a box
    assert all(box[organ].mean() > 0.5 for box in boxes)  # drawn around the object
