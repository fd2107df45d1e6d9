"""Display placement: nearest-RAS permute/flip, scale/translate in mm, exact inverse (numpy only)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import axes_affine
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_aunet._orientation import (
    DisplayTransform,
    display_affine,
    display_placement,
    display_transform,
    file_order,
    is_oblique,
    layer_kwargs_for,
    oblique_angle,
    oblique_message,
)
from napari_aunet.io import Scan


def world_of_display_voxels(aff: np.ndarray, shape, dt: DisplayTransform) -> np.ndarray:
    """World coordinates (3, *display_shape) of each display voxel, computed through the file affine."""
    index = np.indices(shape, dtype=np.float64)  # (3, *file shape)
    world = np.einsum("ij,j...->i...", aff[:3, :3], index) + aff[:3, 3].reshape(3, 1, 1, 1)
    return np.stack([dt.to_display(world[c]) for c in range(3)])


def check_placement(aff: np.ndarray, shape) -> DisplayTransform:
    dt, scale, translate = display_placement(aff, shape)
    expected = world_of_display_voxels(aff, shape, dt)
    j = np.indices(dt.display_shape, dtype=np.float64)
    placed = np.asarray(translate).reshape(3, 1, 1, 1) + j * np.asarray(scale).reshape(3, 1, 1, 1)
    np.testing.assert_allclose(placed, expected, rtol=0, atol=1e-9)
    return dt


axis_setup = st.tuples(
    st.permutations([0, 1, 2]),
    st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    st.tuples(*[st.sampled_from([0.4, 0.7, 1.0, 2.5, 5.0])] * 3),
    st.tuples(*[st.floats(-300, 300, allow_nan=False)] * 3),
    st.tuples(*[st.integers(1, 7)] * 3),
)


@settings(max_examples=25, deadline=None)
@given(axis_setup)
def test_random_permutations_flips_spacings_origins(setup):
    perm, signs, spacing, origin, shape = setup
    aff = axes_affine(perm, signs, spacing, origin)
    dt = check_placement(aff, shape)
    a = np.random.default_rng(0).random(shape)
    d = dt.to_display(a)
    assert d.shape == dt.display_shape
    np.testing.assert_array_equal(dt.from_display(d), a)
    # with leading (time) axes
    a4 = np.random.default_rng(1).random((2, *shape))
    np.testing.assert_array_equal(dt.from_display(dt.to_display(a4, leading=1), leading=1), a4)
    assert not is_oblique(aff)
    # the display grid's own affine is RAS: diagonal, positive
    _, scale, translate = display_placement(aff, shape)
    assert nib.aff2axcodes(display_affine(scale, translate)) == ("R", "A", "S")


@pytest.mark.parametrize(
    ("perm", "signs", "codes"),
    [
        ((0, 1, 2), (-1, -1, 1), ("L", "P", "S")),  # LPS (DICOM-like)
        ((1, 2, 0), (-1, 1, 1), ("P", "S", "R")),  # sagittal stack
        ((0, 2, 1), (1, 1, -1), ("R", "S", "P")),
        ((2, 0, 1), (-1, -1, -1), ("I", "L", "P")),
    ],
)
def test_files_are_shown_on_ras_axes(perm, signs, codes):
    shape = (4, 5, 6)
    aff = axes_affine(perm, signs, (1.0, 2.0, 3.0), (10.0, -20.0, 30.0))
    assert nib.aff2axcodes(aff) == codes
    dt = check_placement(aff, shape)
    # display axis i is the file axis that lies along world axis i
    assert [perm[a] for a in dt.axes] == [0, 1, 2]
    assert dt.flips == tuple(signs[a] < 0 for a in dt.axes)


def test_lps_values_land_on_the_right_display_voxel():
    aff = axes_affine((0, 1, 2), (-1, -1, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    a = np.zeros((3, 4, 5))
    a[0, 0, 0] = 1  # file voxel 0 sits at the most right, most anterior corner
    dt, scale, translate = display_placement(aff, a.shape)
    d = dt.to_display(a)
    assert np.argwhere(d).tolist() == [[2, 3, 0]]
    assert translate == (-2.0, -3.0, 0.0) and scale == (1.0, 1.0, 1.0)


def test_coarser_grid_lines_up_with_the_fine_one():
    """An attention level s times coarser, cell centres at (s-1)/2 voxels, on an LPS scan."""
    aff = axes_affine((1, 2, 0), (-1, 1, -1), (0.8, 1.2, 2.0), (5.0, 7.0, -9.0))
    shape = (8, 12, 6)
    for s in (2, 4):
        grid = np.eye(4)
        grid[:3, :3] *= s
        grid[:3, 3] = (s - 1) / 2
        coarse = aff @ grid
        cshape = tuple(n // s for n in shape)
        dt = check_placement(coarse, cshape)
        fine_dt = display_transform(aff, shape)
        assert dt.axes == fine_dt.axes and dt.flips == fine_dt.flips
        # cell (0,0,0) of the coarse grid sits at the centre of fine voxels 0..s-1
        centre = aff @ np.r_[np.full(3, (s - 1) / 2), 1.0]
        np.testing.assert_allclose(coarse @ np.r_[0, 0, 0, 1.0], centre)


def test_two_d_files_use_their_first_two_axes():
    aff = axes_affine((1, 0, 2), (-1, 1, 1), (0.5, 0.25, 3.0), (1.0, 2.0, 3.0))
    dt, scale, translate = display_placement(aff, (4, 6))
    assert dt.axes == (1, 0) and dt.flips == (False, True)
    assert scale == (0.25, 0.5)
    assert translate == (1.0, 2.0 - 0.5 * 3)
    a = np.arange(24).reshape(4, 6)
    np.testing.assert_array_equal(dt.from_display(dt.to_display(a)), a)
    # a sagittal 2-D image (axes along A and S)
    sag = axes_affine((1, 2, 0), (1, 1, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    dt2, _, translate2 = display_placement(sag, (3, 4))
    assert dt2.axes == (0, 1) and len(translate2) == 2


def test_oblique_affine_uses_nearest_axes_and_says_by_how_much():
    theta = np.radians(12.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-1.0, -1.0, 2.0])
    aff[:3, 3] = (10, 20, 30)
    assert is_oblique(aff)
    assert oblique_angle(aff) == pytest.approx(12.0)
    dt, scale, translate = display_placement(aff, (4, 4, 4))
    assert dt.axes == (0, 1, 2) and dt.flips == (True, True, False)
    np.testing.assert_allclose(scale, (1.0, 1.0, 2.0))
    corner = aff @ np.array([3, 3, 0, 1.0])  # the file voxel shown at display (0, 0, 0)
    np.testing.assert_allclose(translate, corner[:3])
    msg = oblique_message("brain", aff)
    assert "oblique" in msg and "12.0°" in msg and "\n" not in msg


def test_metadata_round_trip_and_file_order():
    aff = axes_affine((2, 0, 1), (1, -1, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    shape = (3, 4, 5)
    kwargs = layer_kwargs_for(aff, shape, source="/x/y.nii.gz", format="nifti1")
    meta = kwargs["metadata"]
    rec = meta["aunet"]
    assert set(rec) == {"affine", "display", "source", "format", "oblique"}
    assert rec["source"] == "/x/y.nii.gz" and rec["format"] == "nifti1" and rec["oblique"] is False
    assert meta["aunet_header"] is None
    json.dumps(rec)
    np.testing.assert_array_equal(np.asarray(rec["affine"]), aff)
    dt = DisplayTransform.from_metadata(json.loads(json.dumps(rec["display"])))
    assert dt == display_transform(aff, shape)
    a = np.random.default_rng(0).random(shape)
    shown = dt.to_display(a)
    np.testing.assert_array_equal(file_order(shown, meta), a)
    np.testing.assert_array_equal(file_order(shown[None], meta)[0], a)  # leading axis
    np.testing.assert_array_equal(file_order(a, {}), a)  # no aunet metadata: unchanged
    with pytest.raises(ValueError, match="shape"):
        file_order(np.zeros((2, 2, 2)), meta)


def test_layer_kwargs_from_a_scan_with_a_leading_axis():
    aff = axes_affine((0, 1, 2), (-1, 1, 1), (2.0, 2.0, 2.0), (1.0, 2.0, 3.0))
    scan = Scan(data=np.zeros((3, 4, 5, 7)), affine=aff, header="HDR", path=None, format="nifti1")
    kwargs = layer_kwargs_for(scan, leading=1)
    assert kwargs["scale"] == (1.0, 2.0, 2.0, 2.0)
    assert kwargs["translate"] == (0.0, 1.0 - 4.0, 2.0, 3.0)
    assert kwargs["metadata"]["aunet_header"] == "HDR"
    assert kwargs["metadata"]["aunet"]["display"]["file_shape"] == [3, 4, 5]
