"""Click -> mask latency of click-to-segment (v1) on a real scan, on the CPU.

Scan: the MNI ICBM 2009a T1 shipped in resources/samples (197x233x189, 1 mm; notice in
resources/samples/MNI152_NOTICE.txt). Clicks: N simulated clicks at random brain voxels (T1 above its
60th percentile), axial slices (file axis 2). Each click is timed from the click to the object's mask,
as the widget does it (model on a window around the click, connected component, cache per slice):
  - 2D cold:   the first click on a slice (the model runs);
  - 2D cached: a second click on the same slice (the model's output is reused);
  - 3D ROI:    a click propagated through up to 24 neighbouring slices each way (models run per slice).
Models: v1 with the bundled `phantom` model (widths 8-64) and, for the size a real-data model has, an
untrained 16-32-64-128 network (latency does not depend on the weights); v2 with the bundled `click` model
(16-32-64-128, image + click maps; every click runs the model with all of the object's clicks on the slice,
so "2D cached" is a second click on the same slice, not a cache hit; 3D runs it once per slice).
Prints a table and writes benchmarks/results/click_latency.json.

    python benchmarks/click_latency.py [--clicks 50] [--threads 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_aunet.engine.bundled import load_model, resources_dir
from napari_aunet.engine.clicks import Click, ClickSegmenter
from napari_aunet.engine.config import ModelConfig, Normalization
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.model import AttentionUNet
from napari_aunet.io import load_scan

ROOT = Path(__file__).resolve().parents[1]


def models() -> dict[str, AttentionUNet]:
    torch.manual_seed(0)
    wide = ModelConfig(spatial_dims=2, out_channels=3, widths=(16, 32, 64, 128), gated_levels=(1, 2, 3),
                       class_names=("background", "a", "b"), normalization=Normalization(mode="percentile"))
    return {"phantom (8-64)": load_model("phantom").build_model(), "16-128 untrained": AttentionUNet(wide).eval(),
            "click v2 (16-128)": load_model("click").build_model()}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t1 = load_scan(resources_dir() / "samples" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").data
    rng = np.random.default_rng(args.seed)
    brain = np.argwhere(t1 > np.percentile(t1, 60))
    points = [tuple(int(v) for v in brain[i]) for i in rng.choice(len(brain), args.clicks, replace=False)]
    rows = []
    for name, model in models().items():
        timings: dict[str, list[float]] = {"2D cold": [], "2D cached": [], "3D ROI": []}
        segmenter = Segmenter(model, device="cpu")
        session = ClickSegmenter(segmenter, t1)
        session.click(np.zeros(t1.shape, bool), Click(points[0]), axis=2)  # warm-up
        for point in points:
            session._cache.clear()
            session.new_object()
            current = np.zeros(t1.shape, bool)
            for label, three_d in (("2D cold", False), ("2D cached", False)):
                started = time.perf_counter()
                update = session.click(current, Click(point), axis=2, three_d=three_d)
                timings[label].append(time.perf_counter() - started)
                current[update.region] = update.mask
        for point in points:
            session._cache.clear()
            session.new_object()
            started = time.perf_counter()
            session.click(np.zeros(t1.shape, bool), Click(point), axis=2, three_d=True)
            timings["3D ROI"].append(time.perf_counter() - started)
        for label, values in timings.items():
            rows.append({"model": name, "kind": label, "clicks": len(values), "p50_ms": percentile(values, 50),
                         "p95_ms": percentile(values, 95), "max_ms": percentile(values, 100)})
    print(f"click -> mask latency, MNI152 T1 {t1.shape}, axial, {args.threads} CPU threads, {args.clicks} clicks")
    print(f"{'model':<18}{'kind':<11}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for row in rows:
        print(f"{row['model']:<18}{row['kind']:<11}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}{row['max_ms']:>9.1f}")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "click_latency.json").write_text(json.dumps(
        {"machine": platform.processor() or platform.machine(), "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
