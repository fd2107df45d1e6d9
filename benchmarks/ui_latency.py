"""Does napari stay responsive while the Segment widget runs? Event-loop lateness against torch's thread count.

A real napari viewer (run it under Xvfb: `xvfb-run -a python benchmarks/ui_latency.py`) with the MNI T1 opened
through the plugin and the Segment widget docked (brain model, its defaults: 3 views, the CPU, `auto` precision).
A Qt timer asks to fire every 16 ms (60 frames a second) and records how late each tick comes; every 100 ms the
displayed slice moves one step (napari slices the volume and redraws the canvas, as when a user scrolls). Reported
per setting: the segmentation's wall time and the tick lateness (median, 95th percentile, max), and, as a
reference, the same probe with nothing running. Settings, alternating over --rounds: torch using every core
(torch's default, what the widget used before) and one core fewer. Prints a table and writes
benchmarks/results/ui_latency.json.

    xvfb-run -a python benchmarks/ui_latency.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
T1 = ROOT / "resources" / "samples" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TICK_MS = 16
SCROLL_MS = 100


def probe(app, viewer, run_for, busy=None) -> dict:
    """Tick lateness (ms) while ``busy()`` is true, or for ``run_for`` seconds when ``busy`` is None."""
    from qtpy.QtCore import QTimer

    lateness: list[float] = []
    last = [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        lateness.append(max(0.0, (now - last[0]) * 1000 - TICK_MS))
        last[0] = now

    def scroll():
        step = list(viewer.dims.current_step)
        axis = viewer.dims.not_displayed[0]
        step[axis] = 60 + (step[axis] + 1 - 60) % 60
        viewer.dims.current_step = tuple(step)

    timer, scroller = QTimer(), QTimer()
    timer.setInterval(TICK_MS)
    scroller.setInterval(SCROLL_MS)
    timer.timeout.connect(tick)
    scroller.timeout.connect(scroll)
    started = time.perf_counter()
    timer.start()
    scroller.start()
    while (busy() if busy is not None else time.perf_counter() - started < run_for):
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    scroller.stop()
    values = np.array(lateness[1:] or [0.0])
    return {"wall_s": time.perf_counter() - started, "ticks": int(values.size),
            "late_median_ms": float(np.median(values)), "late_p95_ms": float(np.percentile(values, 95)),
            "late_max_ms": float(values.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "ui_latency.json")
    args = parser.parse_args()

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_aunet._segment_widget import SegmentWidget

    cores = os.cpu_count() or 1
    settings = {f"torch on all {cores} cores": cores}
    if cores > 1:
        settings[f"torch on {cores - 1} core(s), one left to napari"] = cores - 1
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    (layer,) = viewer.open(str(T1), plugin="napari-aunet")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    widget._image.value = layer
    widget._model.value = "brain"
    rows: dict[str, list[dict]] = {"nothing running": [], **{name: [] for name in settings}}
    for round_index in range(args.rounds):
        rows["nothing running"].append(probe(app, viewer, run_for=3.0))
        for name, threads in settings.items():
            torch.set_num_threads(threads)
            widget.run()
            if not widget.running:
                raise SystemExit("the Segment widget did not start")
            rows[name].append(probe(app, viewer, None, busy=lambda: widget.running))
            print(f"round {round_index + 1}/{args.rounds} {name}: {rows[name][-1]['wall_s']:.1f} s, p95 "
                  f"lateness {rows[name][-1]['late_p95_ms']:.1f} ms", flush=True)
    torch.set_num_threads(cores)

    summary = []
    for name, runs in rows.items():
        summary.append({"setting": name, "runs": len(runs),
                        **{key: statistics.median(r[key] for r in runs)
                           for key in ("wall_s", "late_median_ms", "late_p95_ms", "late_max_ms")}})
    header = f"{'setting':<44}{'wall s':>8}{'late median ms':>16}{'late p95 ms':>13}{'late max ms':>13}"
    print(f"\nQt timer every {TICK_MS} ms, a slice scrolled every {SCROLL_MS} ms; brain model, 3 views, "
          f"precision auto, {cores} CPUs; medians over {args.rounds} rounds\n{header}")
    for row in summary:
        print(f"{row['setting']:<44}{row['wall_s']:>8.1f}{row['late_median_ms']:>16.1f}{row['late_p95_ms']:>13.1f}"
              f"{row['late_max_ms']:>13.1f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"cores": cores, "torch": torch.__version__, "summary": summary,
                                       "rounds": rows}, indent=1))
    print(f"wrote {args.output}")
    viewer.close()


if __name__ == "__main__":
    sys.exit(main())
