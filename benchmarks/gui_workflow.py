"""Screenshots of the whole workflow in one napari window, every widget of the plugin docked, at a laptop's size.

Opens the real head sample, segments it with the brain model through the Segment widget, fills Compare's table,
paints a correction on two slices and runs a short fine-tune, then saves the window at each step. Used for
docs/gui.md (issue 17: the window must fit 1366x768 with all widgets docked) — look at the PNGs.

    xvfb-run -a -s "-screen 0 1920x1080x24" python benchmarks/gui_workflow.py --size 1366x768 --out docs/gui
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

WIDGETS = ("Segment", "Compare attention levels", "Click to segment", "Fine-tune", "Label names and colours")


def dock_all(viewer) -> dict:
    widgets = {}
    for name in WIDGETS:
        _, widget = viewer.window.add_plugin_dock_widget("napari-aunet", name)
        widgets[name] = widget
    return widgets


def sizes(viewer, widgets: dict) -> dict:
    """Minimum size hint of each docked widget, and of the whole window, in pixels."""
    def pair(size) -> list[int]:
        return [size.width(), size.height()]

    out = {name: pair(widget.native.sizeHint()) for name, widget in widgets.items()}
    out["window"] = pair(viewer.window._qt_window.minimumSizeHint())
    out["window now"] = pair(viewer.window._qt_window.size())
    return out


def main() -> None:
    import napari

    from napari_aunet._demo import SAMPLE, SAMPLE_KEY, focus, save_window, wait_until_done

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1366x768", help="window size WIDTHxHEIGHT (default 1366x768)")
    parser.add_argument("--out", type=Path, default=Path("docs/gui"), help="folder for the PNGs")
    parser.add_argument("--tag", default="", help="suffix of the file names (e.g. -before)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-aunet workflow", show=True)
    viewer.window._qt_window.resize(width, height)
    viewer.open_sample("napari-aunet", SAMPLE_KEY)
    widgets = dock_all(viewer)
    segment = widgets["Segment"]
    segment.reset_choices()
    segment._image.value = viewer.layers[SAMPLE]
    segment.select_model("brain")
    segment._view.value = "axial"
    segment.run()
    wait_until_done(segment, 600)
    viewer.dims.set_current_step(2, 150)  # an axial slice through the ventricles
    report = sizes(viewer, widgets)
    print(json.dumps(report))
    if args.tag == "-before":  # the layout as it was: one picture
        save_window(viewer, str(args.out / f"workflow-{width}x{height}{args.tag}.png"))
        return
    focus(viewer, "Compare attention levels", height - 300)
    save_window(viewer, str(args.out / f"segment-{width}x{height}.png"), close=False)

    # fine-tune on three slices the user reviewed (the model's own labels there, accepted as they are)
    tune = widgets["Fine-tune"]
    tune.reset_choices()
    tune._image.value = viewer.layers[SAMPLE]
    tune._labels_layer.value = viewer.layers[f"{SAMPLE} segmentation"]
    tune._plane.value = "axial"
    for index in (130, 150, 170):  # world mm along the axial axis: through the ventricles
        viewer.dims.set_current_step(2, index)
        tune.mark_reviewed()
    tune._budget.value = 20
    focus(viewer, "Fine-tune", height - 260)
    tune.run()
    wait_until_done(tune, 300)
    viewer.dims.set_current_step(2, 150)
    tune.native.ensureWidgetVisible(tune._table.native)
    save_window(viewer, str(args.out / f"finetune-{width}x{height}.png"))



if __name__ == "__main__":
    main()
