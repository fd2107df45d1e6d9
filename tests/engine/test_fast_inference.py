"""What makes inference fast and lean: BatchNorm folded into a channels-last copy of the model, the air around a
scan skipped, labels decided a batch at a time (no class probabilities of the whole scan unless asked for)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from conftest import tiny_model

from napari_aunet.engine.importance import forced_gate
from napari_aunet.engine.inference import Segmenter, foreground_box
from napari_aunet.engine.model import fused_for_inference


def _trained_looking(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random BatchNorm statistics and affine parameters, as a trained model has (the defaults fold to nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.2)
    return model.eval()


@pytest.mark.parametrize("dims,grid", [(2, "fine"), (2, "coarse"), (3, "fine")])
def test_the_folded_copy_computes_what_the_model_computes_and_leaves_it_alone(dims, grid):
    model = _trained_looking(tiny_model(dims, gate_grid=grid))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    fused = fused_for_inference(model, channels_last=True)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)) for m in fused.modules())
    x = torch.randn(3, 1, *(24,) * dims)
    with torch.inference_mode():
        logits, attention = model(x, return_attention=True)
        fused_logits, fused_attention = fused(x, return_attention=True)
    torch.testing.assert_close(fused_logits, logits, atol=1e-4, rtol=1e-4)
    for level, psi in attention.items():
        torch.testing.assert_close(fused_attention[level], psi, atol=1e-5, rtol=1e-4)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_the_segmenter_follows_a_model_that_changes_under_it():
    """A fine-tuning step or a forced gate changes the model in place: the next segmentation uses the change."""
    model = _trained_looking(tiny_model(2))
    volume = np.random.default_rng(0).normal(100, 20, size=(6, 32, 32)).astype(np.float32)
    segmenter = Segmenter(model, device="cpu", precision="fp32")
    first = segmenter.segment(volume, return_probabilities=True, crop=False).probabilities
    with torch.no_grad():
        model.head.bias.add_(torch.tensor([3.0, 0.0, 0.0]))  # background far more likely
    second = segmenter.segment(volume, return_probabilities=True, crop=False).probabilities
    assert second[0].mean() > first[0].mean() + 0.2
    with forced_gate(model, 1, 0.0):
        closed = segmenter.segment(volume, crop=False).attention[1].data
    assert float(np.abs(closed).max()) == 0.0
    assert float(segmenter.segment(volume, crop=False).attention[1].data.max()) > 0.0


@pytest.fixture(scope="module")
def head_in_air():
    """40 slices of air with an object in slices 12-27, 40 x 36 pixels of a 96 x 96 plane."""
    rng = np.random.default_rng(3)
    volume = rng.normal(2.0, 1.0, size=(40, 96, 96)).clip(0).astype(np.float32)
    volume[12:28, 30:70, 28:64] = rng.normal(100.0, 15.0, size=(16, 40, 36))
    return volume


def test_empty_slices_are_skipped_and_the_air_is_background(head_in_air):
    model = _trained_looking(tiny_model(2))
    segmenter = Segmenter(model, device="cpu", precision="fp32", batch_size=4)
    box = foreground_box(head_in_air, model.config.size_multiple, slicing_axis=0)
    assert box[0] == slice(12, 28)  # exactly the slices that hold the object
    assert box[1].start <= 30 - 16 and box[1].stop >= 70 + 16 - 1
    steps = []
    result = segmenter.segment(head_in_air, axis=0, return_probabilities=True, progress=lambda d, t: steps.append(t))
    assert steps[-1] == 4  # 16 slices in batches of 4, not 40
    whole = segmenter.segment(head_in_air, axis=0, return_probabilities=True, crop=False)
    assert result.labels.shape == whole.labels.shape
    outside = np.ones(head_in_air.shape, bool)
    outside[box] = False
    assert not result.labels[outside].any()
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.probabilities[0][outside], 1.0)
    # where the object is, the labels are the uncropped run's (the margin keeps the network's surroundings)
    inside = np.zeros(head_in_air.shape, bool)
    inside[12:28, 30:70, 28:64] = True
    assert (result.labels[inside] == whole.labels[inside]).mean() > 0.99
    for level, found in result.attention.items():
        assert found.data.shape == whole.attention[level].data.shape
        assert found.geometry == whole.attention[level].geometry
        assert not found.data[:12].any() and not found.data[28:].any()


def test_a_scan_of_noise_everywhere_keeps_its_whole_field_of_view():
    volume = np.random.default_rng(0).normal(100, 20, size=(20, 64, 64))
    assert foreground_box(volume, 4) is None
    assert foreground_box(np.zeros((8, 16, 16)), 4) is None


def test_labels_are_decided_a_batch_at_a_time_without_the_whole_scans_probabilities():
    """Without probabilities asked for, no array of the scan's size times its classes is ever made."""
    model = _trained_looking(tiny_model(2))  # 3 classes
    volume = np.random.default_rng(0).integers(0, 1000, size=(48, 128, 128)).astype(np.int16)
    segmenter = Segmenter(model, device="cpu", precision="fp32", batch_size=4)
    segmenter.segment(volume[:4])

    def peak(**options) -> int:
        tracemalloc.start()
        try:
            result = segmenter.segment(volume, return_attention=True, crop=False, **options)
            return tracemalloc.get_traced_memory()[1], result
        finally:
            tracemalloc.stop()

    lean, result = peak()
    full, with_probabilities = peak(return_probabilities=True)
    np.testing.assert_array_equal(result.labels, with_probabilities.labels)
    probabilities_size = 3 * volume.size * 4
    assert lean + 0.9 * probabilities_size < full, (lean, full, probabilities_size)
