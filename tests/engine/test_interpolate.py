"""Interpolation of labels between annotated slices: shapes morph, labels end, user labels are kept."""

from __future__ import annotations

import numpy as np
import pytest

from napari_aunet.engine.interpolate import interpolate_between_slices, signed_distance


def _disk(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def test_signed_distance_is_negative_inside_and_grows_away_from_the_edge():
    mask = _disk((41, 41), (20, 20), 10)
    distance = signed_distance(mask)
    assert (distance[mask] < 0).all() and (distance[~mask] > 0).all()
    assert distance[20, 20] == pytest.approx(-9.5, abs=1.5)  # about the radius deep
    assert distance[20, 40] == pytest.approx(9.5, abs=1.5)


def test_a_disk_growing_between_two_slices_grows_on_the_slices_between():
    labels = np.zeros((5, 64, 64), np.uint8)
    labels[0][_disk((64, 64), (32, 26), 6)] = 3
    labels[4][_disk((64, 64), (32, 40), 14)] = 3
    filled, slices = interpolate_between_slices(labels, 0, [0, 4])
    assert slices == [1, 2, 3]
    areas = [(filled[k] == 3).sum() for k in range(5)]
    assert areas[0] < areas[1] < areas[2] < areas[3] < areas[4]  # grows steadily
    centres = [np.argwhere(filled[k] == 3).mean(axis=0)[1] for k in range(5)]
    assert centres[0] < centres[1] < centres[2] < centres[3] < centres[4]  # and moves across
    # Concentric disks of radius 6 and 14: the middle slice is the disk of radius 10.
    labels[4] = 0
    labels[4][_disk((64, 64), (32, 26), 14)] = 3
    middle = interpolate_between_slices(labels, 0, [0, 4])[0][2] == 3
    ideal = _disk((64, 64), (32, 26), 10)
    assert 2 * (middle & ideal).sum() / (middle.sum() + ideal.sum()) > 0.95


def test_only_labels_on_both_ends_are_carried_and_user_labels_are_kept():
    labels = np.zeros((64, 32, 5), np.uint16)  # slicing axis 2 this time
    labels[:, :, 0][_disk((64, 32), (20, 16), 8)] = 1
    labels[:, :, 4][_disk((64, 32), (22, 16), 8)] = 1
    labels[:, :, 0][_disk((64, 32), (50, 16), 5)] = 2  # label 2 ends: not on slice 4
    labels[20, 16, 2] = 7  # something the user already painted between them
    filled, slices = interpolate_between_slices(labels, 2, [0, 4])
    assert slices == [1, 2, 3]
    assert not (filled[:, :, 1:4] == 2).any()
    assert filled[20, 16, 2] == 7
    assert (filled[:, :, 2] == 1).sum() > 150
    np.testing.assert_array_equal(filled[:, :, [0, 4]], labels[:, :, [0, 4]])


def test_adjacent_or_single_annotated_slices_change_nothing():
    labels = np.zeros((4, 16, 16), np.uint8)
    labels[1, 4:8, 4:8] = 1
    labels[2, 4:8, 4:8] = 1
    filled, slices = interpolate_between_slices(labels, 0, [1, 2])
    assert slices == [] and np.array_equal(filled, labels)
    with pytest.raises(ValueError, match="3D"):
        interpolate_between_slices(labels[0], 0, [0])
