"""Time `aunet segment` (labels + attention maps) on a 181x217x181 uint8 T1 on the CPU.

The T1 is the MNI ICBM 2009a template shipped in resources/samples, cropped from 197x233x189 to
181x217x181 (8 voxels off each side), written as uint8 NIfTI with its affine shifted to match.
Prints a table and writes benchmarks/results/segment_cli.json.

    python benchmarks/segment_cli.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
T1 = ROOT / "resources" / "samples" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def make_t1(folder: Path) -> Path:
    image = nib.load(T1)
    data = np.asarray(image.dataobj)[8:-8, 8:-8, 4:-4]
    assert data.shape == (181, 217, 181), data.shape
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ [8, 8, 4] + image.affine[:3, 3]
    path = folder / "t1_181x217x181.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine, image.header), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (OMP_NUM_THREADS)")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    aunet = str(Path(sys.executable).parent / "aunet")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scan = make_t1(folder)
        for precision in ("fp32", "bf16"):
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                subprocess.run(
                    [aunet, "segment", str(scan), "-o", str(folder / "labels.nii.gz"), "--model", args.model,
                     "--device", "cpu", "--precision", precision, "--attention-dir", str(folder / "maps"), "-q"],
                    check=True, env=env,
                )
                times.append(time.perf_counter() - started)
            labels = nib.load(folder / "labels.nii.gz")
            assert labels.shape == (181, 217, 181)
            assert np.allclose(labels.affine, nib.load(scan).affine)
            rows.append({"precision": precision, "median_s": statistics.median(times), "min_s": min(times),
                         "max_s": max(times), "runs": len(times)})
    print(f"aunet segment, 181x217x181 uint8 T1, model {args.model}, {args.threads} CPU threads, whole command")
    print(f"{'precision':<10}{'median s':>10}{'min s':>8}{'max s':>8}{'runs':>6}")
    for row in rows:
        print(f"{row['precision']:<10}{row['median_s']:>10.2f}{row['min_s']:>8.2f}{row['max_s']:>8.2f}{row['runs']:>6}")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "segment_cli.json").write_text(json.dumps(
        {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
         "model": args.model, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
