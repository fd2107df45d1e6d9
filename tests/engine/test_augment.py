"""The brain recipe's augmentation: geometry moves image and labels together, coarser voxels blur, seeds repeat."""

from __future__ import annotations

import numpy as np
import torch

from napari_aunet.engine.augment import StrongAugmentation

STILL = dict(rotation=0.0, scale=(1.0, 1.0), bias=0.0, gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0,
             noise=0.0)


def _squares(count: int = 4, size: int = 64):
    """Bright squares on black with the square as label 1: the label must follow the bright pixels."""
    images = torch.zeros(count, 1, size, size)
    targets = torch.zeros(count, size, size, dtype=torch.long)
    images[:, :, 20:44, 16:40] = 1.0
    targets[:, 20:44, 16:40] = 1
    return images, targets


def test_a_smooth_deformation_moves_labels_with_the_image():
    images, targets = _squares()
    moved, moved_targets = StrongAugmentation(**STILL, elastic=0.05)(images, targets, torch.Generator().manual_seed(1))
    assert not torch.equal(moved_targets, targets)  # it did deform
    inside = moved[:, 0][moved_targets == 1]
    outside = moved[:, 0][moved_targets == 0]
    assert inside.mean() > 0.9 and outside.mean() < 0.05


def test_coarser_voxels_blur_edges_but_keep_the_labels():
    images, targets = _squares()
    blurred, flipped = StrongAugmentation(**STILL, low_resolution=1.0, max_voxel=3.0)(
        images, targets, torch.Generator().manual_seed(2))
    assert torch.equal(flipped.sum(dim=(1, 2)), targets.sum(dim=(1, 2)))  # only flipped: no label is resampled
    assert blurred[:, 0][flipped == 1].mean() > 0.8 and blurred[:, 0][flipped == 0].mean() < 0.1
    steps = (blurred[..., 1:] - blurred[..., :-1]).abs().amax(dim=(1, 2, 3))
    assert (steps < 0.99).all()  # every edge softened (it was a jump of 1)
    np.testing.assert_allclose(blurred.mean().item(), images.mean().item(), atol=0.02)  # intensity kept


def test_the_same_seed_gives_the_same_batch():
    images, targets = _squares()
    augmentation = StrongAugmentation(elastic=0.03, low_resolution=0.5)
    first = augmentation(images, targets, torch.Generator().manual_seed(3))
    second = augmentation(images, targets, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
