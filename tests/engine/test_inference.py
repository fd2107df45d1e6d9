"""Segmenter: shapes, geometry of attention maps, slice-wise and windowed modes, progress, cancel, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import tiny_model

from napari_aunet.engine.geometry import GridGeometry
from napari_aunet.engine.inference import Cancelled, Segmenter, decide, gaussian_weight, resolve_device
from napari_aunet.engine.intensity import BadVolumeError, normalize


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    return (rng.normal(100, 20, size=(11, 19, 14))).astype(np.int16)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slicewise_outputs_follow_the_input_shape_and_axis(tiny_model_2d, volume, axis):
    segmenter = Segmenter(tiny_model_2d, device="cpu", precision="fp32", batch_size=4)
    result = segmenter.segment(volume, mode="2d", axis=axis, return_probabilities=True)
    assert result.labels.shape == volume.shape and result.labels.dtype == np.uint8
    assert result.probabilities.shape == (3, *volume.shape)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(axis=0))
    assert sorted(result.attention) == [1, 2]
    for level, attention in result.attention.items():
        factor = 2 ** (level - 1)
        expected = tuple(n if a == axis else -(-n // factor) for a, n in enumerate(volume.shape))
        assert attention.data.shape == expected and attention.data.dtype == np.float16
        assert attention.geometry.scale[axis] == 1.0 and attention.geometry.offset[axis] == 0.0
        assert all(s == factor for a, s in enumerate(attention.geometry.scale) if a != axis)
        assert 0.0 <= attention.data.min() and attention.data.max() <= 1.0


def test_slicewise_equals_the_model_on_each_slice(tiny_model_2d, volume):
    result = Segmenter(tiny_model_2d, device="cpu", precision="fp32", batch_size=3).segment(volume, axis=1, return_probabilities=True)
    normalized = normalize(volume, tiny_model_2d.config.normalization)
    with torch.no_grad():
        logits, attention = tiny_model_2d(torch.from_numpy(normalized[:, 7])[None, None], return_attention=True)
    np.testing.assert_allclose(result.probabilities[:, :, 7], torch.softmax(logits, 1)[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(result.attention[2].data[:, 7], attention[2][0, 0].numpy(), atol=2e-3)


def test_foreground_rule_calls_background_only_when_more_likely_than_all_classes_together():
    # P(background) 0.4 against grey 0.35 + CSF 0.25: "brain" is more likely, so the most likely tissue wins.
    probabilities = np.array([[0.4, 0.6, 0.2], [0.35, 0.1, 0.5], [0.0, 0.1, 0.2], [0.25, 0.2, 0.1]], np.float32)
    np.testing.assert_array_equal(decide(probabilities, rule="foreground"), [1, 0, 1])
    np.testing.assert_array_equal(decide(probabilities), [0, 0, 1])  # the default: the plain argmax
    two = np.array([[0.4, 0.6], [0.6, 0.4]], np.float32)  # two classes: both rules agree
    np.testing.assert_array_equal(decide(two, rule="foreground"), [1, 0])
    np.testing.assert_array_equal(decide(probabilities.T, class_axis=1, rule="foreground"), [1, 0, 1])
    from napari_aunet.engine.bundled import load_model

    assert load_model("brain").config.decision == "foreground"


@pytest.fixture(scope="module")
def thick():
    """A volume at least MIN_VIEW_SLICES thick along every axis."""
    return np.random.default_rng(1).normal(100, 20, size=(32, 36, 34)).astype(np.int16)


def test_three_views_average_the_three_slicing_directions(tiny_model_2d, thick, volume):
    segmenter = Segmenter(tiny_model_2d, device="cpu", precision="fp32", batch_size=4)
    single = [segmenter.segment(thick, axis=a, views=1, return_probabilities=True) for a in range(3)]
    seen = []
    result = segmenter.segment(thick, axis=2, views=3, return_probabilities=True, progress=lambda *v: seen.append(v))
    mean = sum(r.probabilities for r in single) / 3
    np.testing.assert_allclose(result.probabilities, mean, atol=1e-5)
    np.testing.assert_array_equal(result.labels, decide(mean))  # the tiny model decides by argmax
    # attention comes from the chosen axis alone; progress counts every view's batches once, in order
    np.testing.assert_array_equal(result.attention[2].data, single[2].attention[2].data)
    assert result.axis == 2 and result.views == 3 and single[0].views == 1
    total = 9 + 8 + 9  # ceil(34 / 4) + ceil(32 / 4) + ceil(36 / 4)
    assert seen == [(k, total) for k in range(1, total + 1)]
    assert segmenter.segment(thick, views=3).probabilities is None
    with pytest.raises(ValueError, match="views must be 1 or 3"):
        segmenter.segment(thick, views=2)
    # a slab thinner than MIN_VIEW_SLICES (11 slices here) has no usable side views: one view, and it says so
    thin = segmenter.segment(volume, axis=0, views=3)
    assert thin.views == 1
    np.testing.assert_array_equal(thin.labels, segmenter.segment(volume, axis=0, views=1).labels)


def test_batch_size_does_not_change_the_result(tiny_model_2d, volume):
    one = Segmenter(tiny_model_2d, device="cpu", precision="fp32", batch_size=1).segment(volume, axis=0)
    many = Segmenter(tiny_model_2d, device="cpu", precision="fp32", batch_size=16).segment(volume, axis=0)
    np.testing.assert_array_equal(one.labels, many.labels)


def test_a_2d_image_gives_2d_outputs(tiny_model_2d):
    image = np.random.default_rng(1).random((21, 30)).astype(np.float32)
    result = Segmenter(tiny_model_2d, device="cpu", precision="fp32").segment(image)
    assert result.labels.shape == (21, 30)
    assert result.attention[2].data.shape == (11, 15)
    assert result.attention[2].geometry == GridGeometry((2.0, 2.0), (0.5, 0.5))


def test_windowed_3d_matches_one_big_window(tiny_model_3d):
    volume = np.random.default_rng(2).normal(size=(13, 18, 10)).astype(np.float32)
    whole = Segmenter(tiny_model_3d, device="cpu", precision="fp32").segment(volume, mode="3d", roi_size=32, return_probabilities=True)
    windows = Segmenter(tiny_model_3d, device="cpu", precision="fp32", batch_size=2).segment(
        volume, mode="3d", roi_size=8, overlap=0.5, return_probabilities=True
    )
    assert windows.labels.shape == volume.shape
    assert windows.probabilities.shape == (3, *volume.shape)
    np.testing.assert_allclose(windows.probabilities.sum(0), 1.0, atol=1e-5)
    for level in (1, 2):
        factor = 2 ** (level - 1)
        assert windows.attention[level].data.shape == tuple(-(-n // factor) for n in volume.shape)
        assert windows.attention[level].geometry == GridGeometry.pooled(3, factor)
    # Windowing changes the receptive field at window borders only: most voxels agree with one pass.
    agreement = (windows.labels == whole.labels).mean()
    assert agreement > 0.8


def test_gaussian_weight_peaks_in_the_middle():
    weight = gaussian_weight((8, 6, 4))
    assert weight.shape == (8, 6, 4) and weight.max() == pytest.approx(1.0) and weight.min() > 0
    assert np.unravel_index(weight.argmax(), weight.shape) in [(3, 2, 1), (4, 3, 2), (3, 3, 2), (4, 2, 1)]


def test_progress_and_cancel(tiny_model_2d, volume):
    calls = []
    Segmenter(tiny_model_2d, device="cpu", precision="fp32", batch_size=4).segment(volume, axis=0, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]

    flag = threading.Event()

    def cancel_after_first(done, total):
        flag.set()

    with pytest.raises(Cancelled):
        Segmenter(tiny_model_2d, device="cpu", precision="fp32", batch_size=4).segment(
            volume, axis=0, progress=cancel_after_first, cancel=flag
        )


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((4, 8, 8), np.nan, np.float32), "NaN or infinite"),
        (np.zeros((2, 2, 8, 8)), "2D or 3D volume"),
        (np.zeros((0, 8)), "empty"),
        (np.array([["a", "b"]]), "not numbers"),
    ],
)
def test_bad_volumes_give_plain_messages(tiny_model_2d, bad, message):
    with pytest.raises(BadVolumeError, match=message):
        Segmenter(tiny_model_2d, device="cpu", precision="fp32").segment(bad)


def test_mode_must_fit_the_model(tiny_model_2d, tiny_model_3d):
    with pytest.raises(ValueError, match="2D model"):
        Segmenter(tiny_model_2d, device="cpu", precision="fp32").segment(np.zeros((8, 8, 8)), mode="3d")
    with pytest.raises(ValueError, match="3D model"):
        Segmenter(tiny_model_3d, device="cpu", precision="fp32").segment(np.zeros((8, 8, 8)), mode="2d")
    with pytest.raises(BadVolumeError, match="input channels"):
        Segmenter(tiny_model(2, in_channels=3), device="cpu").segment(np.zeros((8, 8)))


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_bf16_stays_close_to_fp32(tiny_model_2d, volume):
    fp32 = Segmenter(tiny_model_2d, device="cpu", precision="fp32").segment(volume, return_probabilities=True)
    bf16 = Segmenter(tiny_model_2d, device="cpu", precision="bf16").segment(volume, return_probabilities=True)
    assert np.abs(fp32.probabilities - bf16.probabilities).max() < 0.05


def test_grid_geometry_places_a_pooled_delta_on_its_voxel():
    """A delta at voxel p lands in cell p // s; the cell's centre per the geometry is within s/2 of p."""
    shape = (16, 12)
    for factor in (1, 2, 4):
        geometry = GridGeometry.pooled(2, factor)
        for point in [(0, 0), (5, 7), (15, 11), (9, 2)]:
            delta = np.zeros(shape, np.float32)
            delta[point] = 1
            pooled = torch.nn.functional.max_pool2d(torch.from_numpy(delta)[None, None], factor)[0, 0].numpy()
            cell = np.unravel_index(pooled.argmax(), pooled.shape)
            centre = geometry.affine(np.eye(3)) @ np.array([*cell, 1.0])
            assert all(abs(c - p) <= (factor - 1) / 2 for c, p in zip(centre[:2], point, strict=True))
    affine = np.diag([0.5, 2.0, 3.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    level = GridGeometry.pooled(3, 4, axes=(0, 1))
    np.testing.assert_allclose(level.affine(affine) @ [0, 0, 0, 1], [10 + 1.5 * 0.5, 20 + 1.5 * 2.0, 30, 1])
    assert level.world((0.5, 2.0, 3.0), (10, 20, 30)) == ((2.0, 8.0, 3.0), (10.75, 23.0, 30.0))


def test_generator_form_yields_per_batch_and_returns_the_result(tiny_model_2d, volume):
    steps = Segmenter(tiny_model_2d, device="cpu", precision="fp32", batch_size=4).iter_segment(volume, axis=2)
    seen = []
    try:
        while True:
            seen.append(next(steps))
    except StopIteration as finished:
        result = finished.value
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.labels.shape == volume.shape
    # Closing early (a GUI's cancel) just stops: no result, no error.
    steps = Segmenter(tiny_model_2d, device="cpu", precision="fp32", batch_size=4).iter_segment(volume, axis=2)
    assert next(steps) == (1, 4)
    steps.close()


def test_a_scan_at_another_spacing_is_resampled_to_the_models_and_mapped_back():
    import dataclasses

    from napari_aunet.engine.bundled import load_model
    from napari_aunet.engine.phantoms import generate_phantom

    checkpoint = load_model("phantom")
    model = checkpoint.build_model()
    model.config = dataclasses.replace(model.config, spacing=(1.0, 1.0))  # "trained at 1 mm"
    segmenter = Segmenter(model, device="cpu", precision="fp32")
    phantom = generate_phantom((96, 80), seed=4)
    reference = segmenter.segment(phantom.image)
    fine = np.kron(phantom.image, np.ones((2, 2), np.float32))  # the same object at 0.5 mm
    assert segmenter.adapted_shape(fine.shape, (0.5, 0.5), None) == (96, 80)
    assert segmenter.adapted_shape(fine.shape, (0.9, 1.1), None) is None  # within 20 %: no resampling
    result = segmenter.segment(fine, spacing=(0.5, 0.5))
    assert result.labels.shape == fine.shape and result.resampled_shape == (96, 80)
    expected = np.kron(reference.labels, np.ones((2, 2), np.uint8))
    assert (result.labels == expected).mean() > 0.97
    level2 = result.attention[2]
    assert level2.data.shape == (48, 40)  # native on the model's grid, not upsampled
    assert level2.geometry == GridGeometry((4.0, 4.0), (1.5, 1.5))  # a 1 mm level-2 cell = 4 fine voxels


def test_three_views_adapt_every_axis_to_the_models_spacing(thick):
    import dataclasses

    model = tiny_model(2)
    model.config = dataclasses.replace(model.config, spacing=(1.0, 1.0), views=3)  # the model's default: 3 views
    segmenter = Segmenter(model, device="cpu", precision="fp32")
    result = segmenter.segment(thick, axis=0, spacing=(2.0, 1.0, 1.0), return_probabilities=True)
    assert result.resampled_shape == (64, 36, 34)  # the slicing axis too, so that all three views share one grid
    assert result.views == 3
    assert result.labels.shape == thick.shape and result.probabilities.shape == (3, *thick.shape)
    one = segmenter.segment(thick, axis=0, spacing=(2.0, 1.0, 1.0), views=1)
    assert one.resampled_shape is None  # one view: the slicing axis keeps its slices (in-plane is at 1 mm)


def test_nan_voxels_become_the_scans_minimum_and_are_counted_or_refused(tiny_model_2d, volume):
    segmenter = Segmenter(tiny_model_2d, device="cpu", precision="fp32")
    holed = volume.astype(np.float32)
    holed[0, :3, :4] = np.nan  # outside a resampled scan's field of view
    holed[1, 0, 0] = np.inf
    result = segmenter.segment(holed, axis=0)
    assert result.non_finite == 13
    filled = np.where(np.isfinite(holed), holed, holed[np.isfinite(holed)].min())
    np.testing.assert_array_equal(result.labels, segmenter.segment(filled, axis=0).labels)
    assert segmenter.segment(volume, axis=0).non_finite == 0
    with pytest.raises(BadVolumeError, match="13 NaN or infinite voxel"):
        segmenter.segment(holed, axis=0, nan="refuse")
