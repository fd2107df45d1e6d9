"""`aunet demo`: napari with a real head T1 (skull, face, neck; a person no model here trained on), segmented by the
brain model through the plugin's widgets.

With ``--screenshot`` it waits for the segmentation, shows the level-2 attention map over the scan (the level
chosen in the Compare widget; the segmentation outlined) with the comparison table filled in, saves a screenshot
of the whole window and exits.
"""

from __future__ import annotations

import sys
import time

SAMPLE_KEY, SAMPLE = "head_t1", "head T1"


def run_demo(screenshot: str | None = None) -> int:
    import napari

    viewer = napari.Viewer(title="napari-aunet demo", show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open_sample("napari-aunet", SAMPLE_KEY)
    _, segment = viewer.window.add_plugin_dock_widget("napari-aunet", "Segment")
    _, compare = viewer.window.add_plugin_dock_widget("napari-aunet", "Compare attention levels")
    segment.reset_choices()
    segment._image.value = viewer.layers[SAMPLE]
    segment.select_model("brain")
    segment._view.value = "axial"
    segment.run()
    if not screenshot:
        napari.run()
        return 0

    if not wait_until_done(segment, 300):
        print("aunet: error: the demo segmentation did not finish in 5 minutes", file=sys.stderr)
        return 1
    compare.reset_choices()
    compare._image.value = SAMPLE
    compare.update_table()
    compare._level.value = 2  # as a user picks it: only that level's map over the scan
    viewer.dims.set_current_step(2, 150)  # an axial slice through the lateral ventricles (1 mm world steps)
    focus(viewer, "Compare attention levels", 560)
    viewer.reset_view()
    save_window(viewer, screenshot)
    print(screenshot)
    return 0


def focus(viewer, name: str, height: int) -> None:
    """Give the dock of widget ``name`` ``height`` px; the other docks of the column share the rest."""
    from qtpy.QtCore import Qt

    docks = dict(viewer.window._dock_widgets)
    ours = [dock for key, dock in docks.items() if key.endswith("(napari-aunet)")]
    chosen = docks[f"{name} (napari-aunet)"]
    viewer.window._qt_window.resizeDocks(ours, [height if dock is chosen else 60 for dock in ours], Qt.Vertical)


def wait_until_done(widget, seconds: float) -> bool:
    """Run the Qt event loop until ``widget.running`` turns False (True) or ``seconds`` pass (False)."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + seconds
    while widget.running and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    return not widget.running


def save_window(viewer, path: str, close: bool = True) -> None:
    """Let Qt draw, save a screenshot of the whole window to ``path`` and (unless told not to) close the viewer."""
    from qtpy.QtWidgets import QApplication

    try:  # pop-up notifications (e.g. napari's PyQt5 deprecation warning) would cover the canvas
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()
    except ImportError:
        pass
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    viewer.screenshot(path, canvas_only=False)
    if close:
        viewer.close()
