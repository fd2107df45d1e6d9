"""A napari screenshot of click-to-segment with the click model's attention layers on the MNI152 T1 sample.

    python benchmarks/click_screenshot.py docs/click_attention.png

One positive click on the white matter of axial slice 95 (file voxel 60, 120, 95), then the level-2 gate map
of the clicked window over the scan with the object's contour.
"""

from __future__ import annotations

import sys

import numpy as np


def main(path: str) -> int:
    import napari

    from napari_aunet._demo import save_window
    from napari_aunet._views import show_plane

    viewer = napari.Viewer(title="click attention", show=True)
    viewer.window._qt_window.resize(1300, 850)
    viewer.open_sample("napari-aunet", "mni152_t1")
    image = viewer.layers[0]
    _, widget = viewer.window.add_plugin_dock_widget("napari-aunet", "Click to segment")
    widget.reset_choices()
    widget._image.value = image
    widget._model.value = "click"
    widget._attention.value = True
    widget._plane.value = "axial"
    points = widget.start()
    voxel = np.array([60, 120, 95, 1.0])
    world = (image.metadata["aunet"]["affine"] @ voxel)[:3] if "aunet" in image.metadata else voxel[:3]
    points.add(np.asarray(world)[-image.ndim:])
    objects = widget._target.value
    objects.contour = 1
    for layer in viewer.layers:
        if layer.name.startswith("click attention"):
            layer.visible = "L2" in layer.name
    show_plane(viewer, "axial")
    viewer.dims.set_point(2, float(world[2]))
    print(widget._status.value)
    save_window(viewer, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "click_attention.png"))
