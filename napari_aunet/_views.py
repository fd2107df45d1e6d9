"""Standard radiological views of scans shown in the plugin's RAS display convention.

Display axes 0, 1, 2 run along R, A, S (see ``_orientation``). Axial: slices along S, anterior up, the patient's
right on the screen's left (radiological convention); coronal: along A, superior up; sagittal: along R,
superior up, anterior on the left.
"""

from __future__ import annotations

# plane -> (dims order with the sliced axis first, camera orientation of the two displayed axes)
VIEWS = {
    "axial": ((2, 1, 0), ("up", "left")),
    "coronal": ((1, 2, 0), ("up", "left")),
    "sagittal": ((0, 2, 1), ("up", "left")),
}


def show_plane(viewer, plane: str) -> None:
    """Slice the (last three) scan axes along ``plane`` and orient the 2D camera accordingly."""
    order, orientation = VIEWS[plane]
    leading = viewer.dims.ndim - 3
    if leading < 0:
        return
    viewer.dims.order = tuple(range(leading)) + tuple(leading + axis for axis in order)
    viewer.camera.orientation2d = orientation
    viewer.reset_view()


# CT display windows (width, level) in Hounsfield units, as radiology workstations name them.
CT_WINDOWS = {
    "brain": (80, 40),
    "subdural": (200, 80),
    "soft tissue": (400, 40),
    "liver": (150, 30),
    "bone": (1800, 400),
    "lung": (1500, -600),
}


def ct_window_limits(name: str) -> tuple[float, float]:
    """(lower, upper) contrast limits in HU of a named CT window."""
    width, level = CT_WINDOWS[name]
    return float(level - width / 2), float(level + width / 2)
