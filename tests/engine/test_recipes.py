"""The brain recipe's data: heads with 4-class labels, tilted copies, repeatable batches, a clear missing-wheel line."""

from __future__ import annotations

import numpy as np
import pytest

from napari_aunet.cli import main
from napari_aunet.recipes import brain_batches
from napari_aunet.training_data import CLASS_NAMES, mni2009a, robex, tilted


@pytest.fixture(scope="module")
def template():
    return mni2009a()


def test_template_labels_split_the_brain_into_grey_white_and_csf(template):
    assert CLASS_NAMES == ("background", "grey matter", "white matter", "csf")
    assert set(np.unique(template.labels)) == {0, 1, 2, 3}
    assert (template.labels > 0).sum() == (template.image > 0).sum()  # brain = the skull-stripped voxels
    means = [template.image[template.labels == k].mean() for k in (3, 1, 2)]
    assert means == sorted(means)  # on a T1: CSF < grey < white


def test_held_out_head_has_skull_and_its_own_mask():
    head = robex()
    assert head.spacing == pytest.approx((1.5, 1.5, 1.5))
    brain_ml = head.brain.sum() * 1.5**3 / 1000
    assert 1000 < brain_ml < 1500
    outside = head.image[~head.brain]
    assert (outside > np.percentile(head.image[head.brain], 50)).sum() > 10_000  # bright scalp/neck around it


def test_tilted_copy_turns_image_and_labels_together(template):
    turned = tilted(template, (0.0, 0.0, 90.0))  # a quarter turn in the axial plane: exact on the grid
    middle = template.image.shape[2] // 2
    assert abs(int((turned.labels > 0).sum()) - int((template.labels > 0).sum())) < 0.02 * (template.labels > 0).sum()
    inside = turned.image[turned.labels == 2]
    assert inside.mean() > np.percentile(template.image[template.image > 0], 60)  # white matter stays bright
    assert turned.labels[:, :, middle].any()


def test_brain_batches_repeat_for_a_seed_and_hold_crops_of_every_class(template):
    first = next(brain_batches([template], 8, 64, seed=5))
    second = next(brain_batches([template], 8, 64, seed=5))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    images, targets = first
    assert images.shape == (8, 1, 64, 64) and targets.shape == (8, 64, 64)
    assert set(np.unique(targets)) <= {0, 1, 2, 3}


def test_build_model_without_the_wheels_says_how_to_fetch_them(tmp_path, capsys):
    assert main(["build-model", "brain", "--data", str(tmp_path), "-o", str(tmp_path / "b.safetensors"), "-q"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert "no nimare wheel" in error and "pip download --no-deps nimare==0.22.1" in error
    assert not (tmp_path / "b.safetensors").exists()
