"""Largest-component clean-up and the brain mask built from a tissue map."""

from __future__ import annotations

import numpy as np

from napari_aunet.engine.postprocess import brain_mask, largest_component


def _head_with_a_blob_in_the_neck() -> np.ndarray:
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:20, 5:25, 10:25] = 2  # "white matter"
    labels[5:20, 5:25, 10:12] = 1  # a grey rim, same group
    labels[10:14, 10:14, 15:18] = 3  # a "ventricle" inside: a different class, not a hole
    labels[8:12, 8:12, 16] = 0  # a real hole in the labels
    labels[25:28, 12:15, 2:5] = 1  # a separate blob "in the neck"
    labels[0, 0, 29] = 2  # a single stray voxel
    return labels


def test_largest_component_drops_groups_apart_from_the_brain_and_keeps_classes():
    labels = _head_with_a_blob_in_the_neck()
    cleaned = largest_component(labels)
    assert cleaned[25:28, 12:15, 2:5].max() == 0 and cleaned[0, 0, 29] == 0
    kept = labels[5:20, 5:25, 10:25]
    np.testing.assert_array_equal(cleaned[5:20, 5:25, 10:25], kept)
    assert cleaned.dtype == labels.dtype


def test_groups_touching_only_by_an_edge_are_apart():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0:2, 0:2, 0:2] = 1
    labels[2, 2, 1] = 1  # touches the cube by an edge only
    assert largest_component(labels)[2, 2, 1] == 0


def test_brain_mask_fills_holes_and_is_binary():
    labels = _head_with_a_blob_in_the_neck()
    mask = brain_mask(labels)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask[8:12, 8:12, 16].all()  # the hole is brain
    assert mask.sum() == 15 * 20 * 15
    assert not mask[25:28, 12:15, 2:5].any()


def test_an_empty_map_gives_an_empty_mask():
    assert not brain_mask(np.zeros((4, 4, 4), np.uint8)).any()
