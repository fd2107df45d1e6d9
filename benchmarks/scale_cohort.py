"""Cohort scaling: `aunet segment FOLDER -o OUT` in one process against Dask LocalClusters of 1 and 2 workers.

Whole processes (start-up, model loading and the cluster's start included), run in turn A B C A B C … so a drift of
the machine's speed falls on all of them; each run starts from an empty output folder. The scans are copies of the
real head bundled with the plugin (`robex_head_t1.nii.gz`, 1.5 mm, 115 × 130 × 115 after resampling to 1 mm); the
brain model, one slice direction (`--views 1`) unless `--views 3`.

    python benchmarks/scale_cohort.py [--scans 8] [--runs 3] [--views 1] [--json OUT.json]

Prints a table (median seconds per run, per scan, and the speed-up over one process) and an estimate for 1,000 scans.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from napari_aunet.engine.bundled import resources_dir
from napari_aunet.training_data import ROBEX_SAMPLE


def _aunet() -> str:
    return str(Path(sys.executable).with_name("aunet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--views", type=int, choices=(1, 3), default=1)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aunet-scale-"))
    scans = work / "scans"
    scans.mkdir()
    for index in range(args.scans):
        shutil.copyfile(resources_dir() / "samples" / ROBEX_SAMPLE, scans / f"head{index:02d}.nii.gz")
    common = ["--model", "brain", "--views", str(args.views), "-q"]
    variants = {
        "one process (2 threads)": [],
        "Dask, 1 worker (2 threads)": ["--dask", "local", "--workers", "1"],
        "Dask, 2 workers (1 thread each)": ["--dask", "local", "--workers", "2"],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, extra in variants.items():
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            subprocess.run([_aunet(), "segment", str(scans), "-o", str(out), *common, *extra], check=True,
                           stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - started)
    shutil.rmtree(work, ignore_errors=True)

    reference = statistics.median(times["one process (2 threads)"])
    print(f"{args.scans} scans, brain model, {args.views} view(s), {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print(f"{'run':34} {'median s':>9} {'s / scan':>9} {'speed-up':>9} {'1,000 scans':>12}")
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        per_scan = median / args.scans
        rows.append({"run": name, "median_s": round(median, 2), "per_scan_s": round(per_scan, 2),
                     "speedup": round(reference / median, 2), "runs": [round(v, 2) for v in values]})
        print(f"{name:34} {median:9.1f} {per_scan:9.2f} {reference / median:8.2f}x {per_scan * 1000 / 3600:10.1f} h")
    if args.json:
        Path(args.json).write_text(json.dumps({"scans": args.scans, "views": args.views, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
