"""CPU performance of napari-aunet, section by section, with MONAI's Attention U-Net as the reference.

One entry point for the performance numbers; everything it uses is public (numpy, torch, nibabel, monai,
the standard library) and the scans ship in resources/samples. Sections (``--only NAME`` runs one):

  machine   CPU model and bf16/VNNI flags (/proc/cpuinfo), CPU count, threads used, library versions,
            git commit.
  cli       Whole processes, one after another in rounds (A B C .. A B C ..), each started fresh with
            OMP_NUM_THREADS=MKL_NUM_THREADS=--threads: `aunet segment` (brain model, one view, fp32 and,
            on a CPU with native bf16, bf16; the model's default three views at precision auto) against
            benchmarks/monai_segment.py (MONAI's AttentionUnet, the same widths, random weights, slices
            along the first axis in batches of 4; fp32 and bf16 autocast). Scans: the MNI T1 cut to
            181x217x181 uint8 as benchmarks/segment_cli.py makes it, and the ROBEX head (1.5 mm; our
            pipeline resamples it to the model's 1 mm in-plane, MONAI's script does not). Wall time and
            the child's peak RSS (os.wait4); "x MONAI fp32" = MONAI fp32's median time / the row's (>1:
            faster than MONAI); Dice of each of our rows' labels against our fp32 one-view labels (mean
            over the foreground classes present).
  steps     In process: the MNI T1 cut to 181x217x181, brain model, one view, fp32, the engine's steps
            switched on one by one (BatchNorm folded, channels-last, the air skipped), run in turn for
            --runs rounds: median seconds, ratio to the first, labels Dice against the first.
  accuracy  In process, on a head no model here trained on: the ROBEX head (1.5 mm, skull, face, neck) as it
            is, turned by 15 degrees and with 3 mm slices (benchmarks/brain_heads.py's cases), brain model,
            1 and 3 views. "before" = the engine as it was (BatchNorm not folded, NCHW, the whole field of
            view), fp32; "now" = the default engine (folded, channels-last, the air skipped) at fp32 and at
            bf16: brain Dice against the head's ROBEX brain mask (every non-background voxel, and the
            largest-component mask of --brain-mask), the labels' Dice against "before", and the seconds.
  network   In process: Segmenter.segment (2d, one view, attention returned) on a random float32
            48x224x192 volume for batch sizes 1-16, and MONAI's network called on the same slices: ms per
            slice, FLOPs per 224x192 slice (torch.utils.flop_counter), GFLOP/s, and that as a share of
            the convolution ceiling: F.conv2d of 16x64x224x192 by 64x64x3x3 measured in the same run
            (contiguous and channels-last, the better one per precision). "*" marks the fastest batch.
  sliding3d An untrained 3D Attention U-Net (widths 16-128, 2 classes) in a Segmenter, 3D sliding window
            (roi 96, overlap 0.25) on a random 128^3 volume: seconds and windows per second.
  click     First (cold) 2D click with the bundled click model on the MNI T1, axial, timed as
            benchmarks/click_latency.py does: median and p95 over 20 clicks.
  finetune  fine_tune of the brain model on the ROBEX head, labels = the brain model's own one-view
            segmentation of it (its 4 classes, so no new head), 30 steps, fp32 and auto: steps per second
            over all steps and after the first (the first pays for oneDNN's kernel set-up).
  bigct     A synthetic 512x512x300 int16 CT (air, a soft-tissue ellipse, a bone ring; 0.8x0.8x1.5 mm)
            written slab by slab, segmented by `aunet segment` with the phantom and the brain model (one
            view) and attention maps: wall seconds and peak RSS, one run each; the target is < 2 GB.

--quick: 2 rounds, only the middle 96 axial slices of the MNI T1 in `cli`, 16 slices and batch sizes 1, 4,
16 in `network`, a 4x64x224x192 ceiling, a 96^3 volume in `sliding3d`, 5 clicks, 5 fine-tune steps, a
256x256x100 CT (two to three minutes on one thread). Prints each table as it is done and all of them at the
end, and writes benchmarks/results/perf.json.

    python benchmarks/perf.py [--quick] [--only SECTION] [--runs 5] [--threads N] [--output PATH]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "resources" / "samples"
MNI_T1 = SAMPLES / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
ROBEX_T1 = SAMPLES / "robex_head_t1.nii.gz"
MONAI_WORKER = ROOT / "benchmarks" / "monai_segment.py"
SECTIONS = ("machine", "cli", "steps", "accuracy", "network", "sliding3d", "click", "finetune", "bigct")
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx512f")
MiB = 1024 * 1024

sys.path.insert(0, str(ROOT / "benchmarks"))
from segment_cli import make_t1  # noqa: E402  (the 181x217x181 uint8 T1 of benchmarks/segment_cli.py)

# --------------------------------------------------------------------------------------------------- helpers


def cpu_info() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def native_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_info()[1])


def precisions() -> tuple[str, ...]:
    """fp32, bf16 where the CPU has it natively, int8 where ONNX Runtime is installed (the [int8] extra)."""
    from napari_aunet.engine import int8

    return ("fp32", *(("bf16",) if native_bf16() else ()), *(("int8",) if int8.available() else ()))


def table(title: str, columns: list[tuple[str, str, str]], rows: list[dict]) -> str:
    """Rows as a text table; ``columns`` are (header, key, format spec); a missing or None value is "-"."""
    def cell(row: dict, key: str, spec: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        return format(value, spec) if spec else str(value)

    cells = [[cell(row, key, spec) for _, key, spec in columns] for row in rows]
    widths = [max([len(header)] + [len(line[i]) for line in cells])
              for i, (header, _, _) in enumerate(columns)]
    left = [not spec for _, _, spec in columns]  # text left, numbers right

    def joined(line: list[str]) -> str:
        padded = (c.ljust(w) if lft else c.rjust(w) for c, w, lft in zip(line, widths, left, strict=True))
        return "  ".join(padded).rstrip()

    lines = [title, joined([header for header, _, _ in columns]), *(joined(line) for line in cells)]
    return "\n".join(lines)


# Runs one command and reports its exit status, wall seconds and peak RSS (os.wait4), in its own small
# process (python -S, a few MiB): Linux carries a process's RSS high-water mark across exec, so a command
# forked straight from this script (by then holding torch and the in-process sections' memory) would report
# at least this script's resident size as its own peak.
LAUNCHER = """
import os, sys, time
result, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(result, "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {wall!r} {usage.ru_maxrss}")
"""


def run_process(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run ``argv`` as a fresh process: (wall seconds, peak RSS MiB of the process, from os.wait4)."""
    result = log.with_suffix(".result")
    with open(log, "wb") as errors:
        launcher = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(result), *argv], env=env,
                                    stdout=subprocess.DEVNULL, stderr=errors)
        launcher.wait()
    text = result.read_text() if launcher.returncode == 0 else f"launcher-failed-{launcher.returncode} 0 0"
    code, wall, peak_kib = text.split()
    if code != "0":
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(argv)}: exit status {code}\n{tail}")
    return float(wall), int(peak_kib) / 1024  # ru_maxrss is KiB on Linux


def shown_argv(argv: list[str], folder: Path) -> list[str]:
    """``argv`` as the JSON records it: program names without their folders, TMP for the temporary folder."""
    names = {sys.executable: "python", str(Path(sys.executable).parent / "aunet"): "aunet"}
    return [names.get(a, a.replace(str(folder), "TMP")) for a in argv]


def thread_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def dice(labels: np.ndarray, reference: np.ndarray) -> float:
    """Mean Dice over the non-background classes present in either volume."""
    scores = []
    for value in np.union1d(np.unique(labels), np.unique(reference)):
        if value == 0:
            continue
        a, b = labels == value, reference == value
        scores.append(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
    return float(np.mean(scores)) if scores else float("nan")


def best_of(function: Callable[[], object], reps: int) -> float:
    function()  # warm-up: oneDNN picks and builds its kernels on the first call
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def median_of(function: Callable[[], object], runs: int) -> tuple[float, float]:
    function()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times)


# --------------------------------------------------------------------------------------------------- sections


def section_machine(args: argparse.Namespace) -> dict:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "nibabel": nib.__version__}
    try:
        import monai

        versions["monai"] = monai.__version__
    except ImportError:
        versions["monai"] = None
    model, flags = cpu_info()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {"cpu": model, "flags": {flag: flag in flags for flag in CPU_FLAGS}, "native_bf16": native_bf16(),
            "cpus": os.cpu_count(), "threads": args.threads, **versions, "napari_aunet_commit": commit,
            "uncommitted_changes": dirty}


def machine_table(machine: dict) -> str:
    rows = [{"item": "CPU", "value": machine["cpu"]},
            {"item": "flags",
             "value": " ".join(f"{k}={'yes' if v else 'no'}" for k, v in machine["flags"].items())},
            {"item": "CPUs / threads used", "value": f"{machine['cpus']} / {machine['threads']}"}]
    rows += [{"item": name, "value": machine[name]}
             for name in ("python", "torch", "monai", "numpy", "nibabel")]
    commit = machine["napari_aunet_commit"]
    rows.append({"item": "napari_aunet commit",
                 "value": f"{commit}{' + uncommitted changes' if machine['uncommitted_changes'] else ''}"})
    return table("machine", [("item", "item", ""), ("value", "value", "")], rows)


def axial_slab(path: Path, slices: int) -> Path:
    """The middle ``slices`` slices of the last (axial) axis of a scan, affine moved to match (--quick)."""
    image = nib.load(path)
    first = (image.shape[2] - slices) // 2
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ [0, 0, first] + image.affine[:3, 3]
    out = path.with_name(f"{path.name.split('.')[0]}_slab{slices}.nii.gz")
    data = np.asarray(image.dataobj)[:, :, first : first + slices]
    nib.save(nib.Nifti1Image(data, affine, image.header), out)
    return out


def section_cli(args: argparse.Namespace, folder: Path) -> list[dict]:
    aunet = str(Path(sys.executable).parent / "aunet")
    env = thread_env(args.threads)
    if args.quick:
        scans = {"MNI T1 181x217x96 (quick)": axial_slab(make_t1(folder), 96)}
    else:
        scans = {"MNI T1 181x217x181": make_t1(folder), "ROBEX head 116x150x155": ROBEX_T1}
    rows = []
    for scan_name, scan in scans.items():
        commands: dict[str, list[str]] = {}
        for precision in precisions():
            commands[f"ours {precision} 1 view"] = ["--views", "1", "--precision", precision]
        commands["ours auto, model's views"] = ["--precision", "auto"]
        for precision in precisions():
            if precision != "int8":
                commands[f"MONAI {precision}"] = ["--precision", precision]
        outputs = {name: folder / f"cli_{index}.nii.gz" for index, name in enumerate(commands)}
        argv = {}
        for name, options in commands.items():
            if name.startswith("MONAI"):
                argv[name] = [sys.executable, str(MONAI_WORKER), str(scan), "-o", str(outputs[name]),
                              "--batch", "4", *options]
            else:
                argv[name] = [aunet, "segment", str(scan), "-o", str(outputs[name]), "--model", "brain",
                              "--device", "cpu", *options, "-q"]
        walls: dict[str, list[float]] = {name: [] for name in commands}
        peaks: dict[str, list[float]] = {name: [] for name in commands}
        calibration = {}
        for name in commands:
            if "int8" in name:  # the first int8 run calibrates and fills the cache; the timed runs reuse it
                calibration[name] = run_process(argv[name], env, folder / "stderr.txt")[0]
                print(f"  cli {scan_name} {name}: calibration run (untimed) {calibration[name]:.2f} s", flush=True)
        for round_index in range(args.runs):
            for name in commands:
                wall, peak = run_process(argv[name], env, folder / "stderr.txt")
                walls[name].append(wall)
                peaks[name].append(peak)
                print(f"  cli {scan_name} round {round_index + 1}/{args.runs} {name}: {wall:.2f} s, "
                      f"{peak:.0f} MiB", flush=True)
        reference = np.asarray(nib.load(outputs[f"ours {precisions()[0]} 1 view"]).dataobj)
        monai_median = statistics.median(walls["MONAI fp32"])
        for name in commands:
            median = statistics.median(walls[name])
            row = {"scan": scan_name, "command": name, "median_s": median, "min_s": min(walls[name]),
                   "peak_rss_mib": max(peaks[name]), "vs_monai_fp32": monai_median / median,
                   "runs": args.runs, "dice_vs_ours_fp32": None, "calibration_run_s": calibration.get(name),
                   "argv": shown_argv(argv[name], folder)}
            if name.startswith("ours"):
                row["dice_vs_ours_fp32"] = dice(np.asarray(nib.load(outputs[name]).dataobj), reference)
            rows.append(row)
    return rows


CLI_COLUMNS = [("scan", "scan", ""), ("command", "command", ""), ("median s", "median_s", ".2f"),
               ("min s", "min_s", ".2f"), ("peak RSS MiB", "peak_rss_mib", ".0f"),
               ("x MONAI fp32", "vs_monai_fp32", ".2f"), ("Dice vs ours fp32", "dice_vs_ours_fp32", ".4f"),
               ("calibration run s", "calibration_run_s", ".2f")]


STEPS = (("before: BatchNorm apart, NCHW, whole field of view", False, False, False),
         ("+ BatchNorm folded into the convolutions", True, False, False),
         ("+ channels-last", True, True, False),
         ("+ the air skipped", True, True, True))


def section_steps(args: argparse.Namespace, folder: Path) -> list[dict]:
    from napari_aunet.engine.bundled import load_model
    from napari_aunet.engine.inference import Segmenter

    volume = np.asarray(nib.load(make_t1(folder)).dataobj)
    checkpoint = load_model("brain")
    segmenters = []
    for _, fold, channels_last, crop in STEPS:
        segmenter = Segmenter(checkpoint, device="cpu", precision="fp32")
        segmenter.fuse, segmenter.channels_last = fold, channels_last
        segmenter.segment(volume[:, :, :8], axis=2, views=1, crop=crop)  # oneDNN's set-up, once each
        segmenters.append((segmenter, crop))
    times: list[list[float]] = [[] for _ in STEPS]
    labels: list[np.ndarray | None] = [None] * len(STEPS)
    for _ in range(args.runs):
        for index, (segmenter, crop) in enumerate(segmenters):
            started = time.perf_counter()
            labels[index] = segmenter.segment(volume, axis=2, views=1, crop=crop, return_attention=False).labels
            times[index].append(time.perf_counter() - started)
    first = statistics.median(times[0])
    return [{"engine": name, "median_s": round(statistics.median(spent), 3),
             "ratio": round(statistics.median(spent) / first, 3), "dice_vs_before": round(dice(found, labels[0]), 4)}
            for (name, *_), spent, found in zip(STEPS, times, labels, strict=True)]


STEPS_COLUMNS = [("engine", "engine", ""), ("median s", "median_s", ".2f"), ("x before", "ratio", ".2f"),
                 ("labels Dice vs before", "dice_vs_before", ".4f")]


def section_accuracy(args: argparse.Namespace) -> list[dict]:
    from brain_heads import score_brain, thick_slices, turned

    from napari_aunet.engine.bundled import load_model
    from napari_aunet.engine.inference import Segmenter
    from napari_aunet.training_data import robex, spacing_of

    head = robex()
    cases = {"ROBEX head": (head.image, head.labels), "ROBEX turned 15 deg": turned(head)[:2],
             "ROBEX 3 mm slices": thick_slices(head)[:2]}
    affines = {"ROBEX head": head.affine, "ROBEX turned 15 deg": head.affine,
               "ROBEX 3 mm slices": thick_slices(head)[2]}
    checkpoint = load_model("brain")
    engines = [("before, fp32", "fp32", False), ("now, fp32", "fp32", True)]
    engines += [("now, bf16", "bf16", True)] if native_bf16() else []
    # int8 calibrates on the first scan it sees (the head, 1 view) and reuses that for the other cases
    engines += [("now, int8", "int8", True)] if "int8" in precisions() else []
    rows = []
    for case, (image, labels) in cases.items():
        spacing = spacing_of(affines[case])
        for views in (1, 3):
            reference = None
            for name, precision, fast in engines:
                segmenter = Segmenter(checkpoint, device="cpu", precision=precision)
                segmenter.fuse = fast
                started = time.perf_counter()
                result = segmenter.segment(image, mode="2d", axis=2, spacing=spacing, views=views, crop=fast,
                                           return_attention=False)
                seconds = time.perf_counter() - started
                reference = result.labels if reference is None else reference
                scores = score_brain(result.labels, labels > 0, spacing)
                rows.append({"case": case, "views": views, "engine": name, "seconds": round(seconds, 2),
                             "brain_dice": round(scores["brain Dice"], 4), "mask_dice": round(scores["mask Dice"], 4),
                             "dice_vs_before": round(dice(result.labels, reference), 4)})
                print(f"  accuracy {case} {views} view(s) {name}: brain Dice {rows[-1]['brain_dice']}, "
                      f"{seconds:.1f} s", flush=True)
    return rows


ACCURACY_COLUMNS = [("case", "case", ""), ("views", "views", "d"), ("engine", "engine", ""),
                    ("brain Dice", "brain_dice", ".4f"), ("mask Dice", "mask_dice", ".4f"),
                    ("labels Dice vs before", "dice_vs_before", ".4f"), ("s", "seconds", ".2f")]


def flops_per_slice(network, shape: tuple[int, int], **kwargs) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(torch.zeros(1, 1, *shape), **kwargs)
    return counter.get_total_flops()


def conv_ceiling(batch: int, reps: int) -> list[dict]:
    """GFLOP/s of one 3x3 convolution, 64 -> 64 channels at 224x192: about the best this CPU does on a layer
    of this network's kind."""
    import contextlib

    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    rows = []
    flops = 2 * batch * 64 * 64 * 9 * 224 * 192
    for precision in precisions():
        for layout in ("contiguous", "channels_last"):
            memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            inputs = torch.randn(batch, 64, 224, 192).contiguous(memory_format=memory_format)
            weight = torch.randn(64, 64, 3, 3).contiguous(memory_format=memory_format)
            autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                        else contextlib.nullcontext())

            def convolve(inputs=inputs, weight=weight, autocast=autocast) -> None:
                with torch.inference_mode(), autocast:
                    F.conv2d(inputs, weight, padding=1)

            seconds = best_of(convolve, reps)
            rows.append({"precision": precision, "layout": layout, "input": f"{batch}x64x224x192",
                         "best_s": seconds, "gflops": flops / seconds / 1e9})
    return rows


def section_network(args: argparse.Namespace) -> dict[str, list[dict]]:
    import contextlib

    import torch
    from monai_segment import build_network

    from napari_aunet.engine.bundled import load_model
    from napari_aunet.engine.inference import Segmenter

    slices = 16 if args.quick else 48
    batch_sizes = (1, 4, 16) if args.quick else (1, 2, 4, 8, 16)
    plane = (224, 192)
    volume = np.random.default_rng(0).random((slices, *plane), dtype=np.float32)
    checkpoint = load_model("brain")
    ours_flops = flops_per_slice(checkpoint.build_model().eval(), plane, return_attention=True)
    monai_network = build_network()
    monai_flops = flops_per_slice(monai_network, plane)
    ceiling = conv_ceiling(4 if args.quick else 16, 3 if args.quick else 5)
    best_ceiling = {p: max(r["gflops"] for r in ceiling if r["precision"] == p) for p in precisions()}
    rows = []
    for precision in precisions():
        for batch in batch_sizes:
            segmenter = Segmenter(checkpoint, device="cpu", precision=precision, batch_size=batch)
            median, fastest = median_of(
                lambda segmenter=segmenter: segmenter.segment(volume, mode="2d", axis=0, views=1,
                                                              return_attention=True), args.runs)
            rows.append({"network": "ours (Segmenter.segment)", "precision": precision, "batch": batch,
                         "seconds": median, "min_s": fastest, "flops_per_slice": ours_flops})
        for batch in batch_sizes:
            autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                        else contextlib.nullcontext())

            def forward(batch=batch, autocast=autocast) -> None:
                with torch.inference_mode(), autocast:
                    for start in range(0, slices, batch):
                        monai_network(torch.from_numpy(volume[start : start + batch])[:, None])

            median, fastest = median_of(forward, args.runs)
            rows.append({"network": "MONAI AttentionUnet", "precision": precision, "batch": batch,
                         "seconds": median, "min_s": fastest, "flops_per_slice": monai_flops})
    for row in rows:
        per_slice = row["seconds"] / slices
        flops = row["flops_per_slice"]
        row.update(slices=slices, ms_per_slice=1000 * per_slice, gflops_per_slice=flops / 1e9,
                   gflops=flops / per_slice / 1e9)
        row["percent_of_ceiling"] = 100 * row["gflops"] / best_ceiling[row["precision"]]
    for network in ("ours (Segmenter.segment)", "MONAI AttentionUnet"):
        for precision in precisions():
            group = [r for r in rows if r["network"] == network and r["precision"] == precision]
            fastest = min(group, key=lambda r: r["ms_per_slice"])
            for row in group:
                row["best"] = "*" if row is fastest else ""
    return {"network": rows, "conv_ceiling": ceiling}


CEILING_COLUMNS = [("precision", "precision", ""), ("layout", "layout", ""), ("input", "input", ""),
                   ("best s", "best_s", ".3f"), ("GFLOP/s", "gflops", ".1f")]
NETWORK_COLUMNS = [("network", "network", ""), ("precision", "precision", ""), ("batch", "batch", "d"),
                   ("best", "best", ""), ("ms/slice", "ms_per_slice", ".1f"),
                   ("GFLOP/slice", "gflops_per_slice", ".2f"),
                   ("GFLOP/s", "gflops", ".1f"), ("% of conv ceiling", "percent_of_ceiling", ".0f")]


def window_count(shape: tuple[int, ...], roi: int, overlap: float, multiple: int) -> int:
    """Windows of Segmenter's 3D sliding window: the volume padded to a multiple of the coarsest grid, starts
    every ``roi * (1 - overlap)`` voxels (rounded down to the multiple) plus one flush with the far end."""
    count = 1
    for length in shape:
        padded = max(-(-length // multiple) * multiple, 1)
        window = min(-(-roi // multiple) * multiple, padded)
        step = max(multiple, int(window * (1 - overlap)) // multiple * multiple)
        starts = list(range(0, padded - window + 1, step))
        count *= len(starts) + (starts[-1] != padded - window)
    return count


def section_sliding3d(args: argparse.Namespace) -> list[dict]:
    import torch

    from napari_aunet.engine.config import ModelConfig
    from napari_aunet.engine.inference import Segmenter
    from napari_aunet.engine.model import AttentionUNet

    side = 96 if args.quick else 128
    config = ModelConfig(spatial_dims=3, out_channels=2, widths=(16, 32, 64, 128), gated_levels=(1, 2, 3))
    torch.manual_seed(0)
    model = AttentionUNet(config).eval()
    volume = np.random.default_rng(0).standard_normal((side,) * 3, dtype=np.float32)
    windows = window_count(volume.shape, 96, 0.25, config.size_multiple)
    rows = []
    for precision in precisions():
        segmenter = Segmenter(model, device="cpu", precision=precision)
        median, fastest = median_of(
            lambda segmenter=segmenter: segmenter.segment(volume, mode="3d", roi_size=96, overlap=0.25),
            args.runs)
        rows.append({"volume": "x".join([str(side)] * 3), "precision": precision, "windows": windows,
                     "median_s": median, "min_s": fastest, "windows_per_s": windows / median,
                     "runs": args.runs})
    return rows


SLIDING_COLUMNS = [("volume", "volume", ""), ("precision", "precision", ""), ("windows", "windows", "d"),
                   ("median s", "median_s", ".2f"), ("min s", "min_s", ".2f"),
                   ("windows/s", "windows_per_s", ".2f")]


def section_click(args: argparse.Namespace) -> list[dict]:
    from napari_aunet.engine.bundled import load_model
    from napari_aunet.engine.clicks import Click, ClickSegmenter
    from napari_aunet.engine.inference import Segmenter
    from napari_aunet.io import load_scan

    count = 5 if args.quick else 20
    t1 = load_scan(MNI_T1).data
    rng = np.random.default_rng(0)
    brain = np.argwhere(t1 > np.percentile(t1, 60))
    points = [tuple(int(v) for v in brain[i]) for i in rng.choice(len(brain), count, replace=False)]
    rows = []
    for precision in ("fp32", "auto"):
        segmenter = Segmenter(load_model("click"), device="cpu", precision=precision)
        session = ClickSegmenter(segmenter, t1)
        session.click(np.zeros(t1.shape, bool), Click(points[0]), axis=2)  # warm-up
        times = []
        for point in points:
            session._cache.clear()  # as benchmarks/click_latency.py: every click is the first on its slice
            session.new_object()
            started = time.perf_counter()
            session.click(np.zeros(t1.shape, bool), Click(point), axis=2)
            times.append(time.perf_counter() - started)
        ms = np.asarray(times) * 1000
        rows.append({"model": "click (16-128)", "precision": f"{precision} ({segmenter.precision})",
                     "clicks": count,
                     "median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
                     "max_ms": float(ms.max())})
    return rows


CLICK_COLUMNS = [("model", "model", ""), ("precision", "precision", ""), ("clicks", "clicks", "d"),
                 ("median ms", "median_ms", ".1f"), ("p95 ms", "p95_ms", ".1f"), ("max ms", "max_ms", ".1f")]


def section_finetune(args: argparse.Namespace) -> list[dict]:
    from napari_aunet.engine.bundled import load_model
    from napari_aunet.engine.finetune import FineTuneSettings, TrainingPair, fine_tune
    from napari_aunet.engine.inference import Segmenter
    from napari_aunet.io import load_scan

    steps = 5 if args.quick else 30
    scan = load_scan(ROBEX_T1)
    image = np.asarray(scan.data)
    checkpoint = load_model("brain")
    labels = Segmenter(checkpoint, device="cpu").segment(image, axis=0, views=1, spacing=scan.spacing,
                                                         return_attention=False).labels
    pair = TrainingPair(image=image, labels=labels.astype(np.int64), axis=0, name="robex",
                        spacing=scan.spacing)
    model = checkpoint.build_model()
    rows = []
    for precision in ("fp32", "auto"):
        stamps: list[float] = []
        settings = FineTuneSettings(steps=steps, precision=precision, validations=0, val_fraction=0.0)
        started = time.perf_counter()
        result = fine_tune(model, [pair], settings, device="cpu",
                           progress=lambda *_, stamps=stamps: stamps.append(time.perf_counter()))
        total = time.perf_counter() - started
        after_first = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
        used = precision if precision != "auto" else ("bf16" if native_bf16() else "fp32")
        rows.append({"precision": f"{precision} ({used})", "steps": result.steps,
                     "batch": f"{result.settings.batch_size} x {result.settings.patch_size}px",
                     "steps_per_s": result.steps / result.seconds, "steps_per_s_after_first": after_first,
                     "train_s": result.seconds, "call_s": total})
    return rows


FINETUNE_COLUMNS = [("precision", "precision", ""), ("steps", "steps", "d"), ("batch", "batch", ""),
                    ("steps/s", "steps_per_s", ".2f"),
                    ("steps/s after 1st", "steps_per_s_after_first", ".2f"),
                    ("training s", "train_s", ".1f"), ("fine_tune() s", "call_s", ".1f")]


def write_ct(path: Path, shape: tuple[int, int, int], spacing=(0.8, 0.8, 1.5), chunk: int = 16) -> None:
    """A synthetic int16 CT written a slab of ``chunk`` slices at a time (never the whole volume in memory):
    air -1000 HU, a body ellipse of soft tissue 40 +- 20 HU, a bone ring of about 700 HU inside it."""
    nx, ny, nz = shape
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_zooms(spacing)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) * s / 2 for n, s in zip(shape, spacing, strict=True)]
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["vox_offset"] = 352
    x = (np.arange(nx, dtype=np.float32)[:, None] - (nx - 1) / 2) / (0.45 * nx)
    y = (np.arange(ny, dtype=np.float32)[None, :] - (ny - 1) / 2) / (0.32 * ny)
    rng = np.random.default_rng(0)
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(header.binaryblock)
        stream.write(b"\x00" * 4)  # no extensions
        for start in range(0, nz, chunk):
            stop = min(start + chunk, nz)
            slab = np.full((nx, ny, stop - start), -1000, dtype=np.int16)
            for k in range(start, stop):
                scale = 1.0 - 0.15 * abs((k - nz / 2) / (nz / 2))  # the body narrows towards both ends
                radius = np.sqrt(x**2 + y**2) / scale
                plane = slab[:, :, k - start]  # a view: writes land in the slab
                body, ring = radius < 1.0, (radius > 0.55) & (radius < 0.65)
                plane[body] = (40 + 20 * rng.standard_normal(int(body.sum()))).astype(np.int16)
                plane[ring] = (700 + 50 * rng.standard_normal(int(ring.sum()))).astype(np.int16)
            stream.write(slab.tobytes(order="F"))


def section_bigct(args: argparse.Namespace, folder: Path) -> list[dict]:
    shape = (256, 256, 100) if args.quick else (512, 512, 300)
    ct = folder / "ct.nii.gz"
    started = time.perf_counter()
    write_ct(ct, shape)
    written = time.perf_counter() - started
    check = nib.load(ct)
    assert check.shape == shape and check.get_data_dtype() == np.int16, (check.shape, check.get_data_dtype())
    print(f"  bigct: wrote {'x'.join(map(str, shape))} int16 CT in {written:.1f} s "
          f"({ct.stat().st_size / MiB:.0f} MiB .nii.gz)", flush=True)
    aunet = str(Path(sys.executable).parent / "aunet")
    rows = []
    for model, options in (("phantom", []), ("brain", ["--views", "1"])):
        argv = [aunet, "segment", str(ct), "-o", str(folder / f"ct_{model}.nii.gz"), "--model", model,
                "--device", "cpu", *options, "--attention-dir", str(folder / f"maps_{model}"), "-q"]
        wall, peak = run_process(argv, thread_env(args.threads), folder / "stderr.txt")
        rows.append({"scan": f"CT {'x'.join(map(str, shape))} int16",
                     "model": f"{model} {' '.join(options)}".strip(),
                     "wall_s": wall, "peak_rss_mib": peak, "under_2gb": "yes" if peak < 2048 else "NO",
                     "argv": shown_argv(argv, folder)})
    return rows


BIGCT_COLUMNS = [("scan", "scan", ""), ("model", "model", ""), ("wall s", "wall_s", ".1f"),
                 ("peak RSS MiB", "peak_rss_mib", ".0f"), ("< 2 GB", "under_2gb", "")]


# --------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=SECTIONS,
                        help="run one section (the machine section is always there)")
    parser.add_argument("--runs", type=int, default=None,
                        help="rounds / timed repeats (default 5; --quick 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch CPU threads, and OMP_NUM_THREADS of the processes started "
                             "(default: all CPUs)")
    parser.add_argument("--quick", action="store_true",
                        help="2 runs and small sizes (about three minutes on one thread)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "perf.json")
    args = parser.parse_args()
    args.runs = args.runs or (2 if args.quick else 5)

    import torch

    torch.set_num_threads(args.threads)
    machine = section_machine(args)
    tables = [machine_table(machine)]
    print(tables[0], flush=True)
    results: dict[str, list[dict]] = {}
    wanted = [args.only] if args.only else list(SECTIONS[1:])
    with tempfile.TemporaryDirectory(prefix="aunet-perf-") as tmp:
        folder = Path(tmp)
        os.environ["AUNET_CACHE_DIR"] = str(folder / "cache")  # int8 calibrates afresh in every run of this file
        for name in wanted:
            if name == "machine":
                continue
            started = time.perf_counter()
            print(f"\n== {name} ==", flush=True)
            if name == "cli":
                results["cli"] = section_cli(args, folder)
                title = f"whole process, brain-model widths, {args.threads} threads, {args.runs} rounds"
                shown = [table(title, CLI_COLUMNS, results["cli"])]
            elif name == "steps":
                results["steps"] = section_steps(args, folder)
                shown = [table(f"the engine's steps one by one, MNI T1 181x217x181, fp32, {args.threads} threads, "
                               f"{args.runs} rounds", STEPS_COLUMNS, results["steps"])]
            elif name == "accuracy":
                results["accuracy"] = section_accuracy(args)
                shown = [table("held-out head: the engine before and now, brain model", ACCURACY_COLUMNS,
                               results["accuracy"])]
            elif name == "network":
                results.update(section_network(args))
                shown = [table("convolution ceiling (F.conv2d 3x3, 64 -> 64 channels, 224x192)",
                               CEILING_COLUMNS, results["conv_ceiling"]),
                         table(f"network only, in process, 224x192 slices, {args.threads} threads",
                               NETWORK_COLUMNS, results["network"])]
            elif name == "sliding3d":
                results["sliding3d"] = section_sliding3d(args)
                shown = [table("3D sliding window, untrained 16-128 network, roi 96, overlap 0.25",
                               SLIDING_COLUMNS, results["sliding3d"])]
            elif name == "click":
                results["click"] = section_click(args)
                shown = [table("first click -> mask, MNI T1, axial (2D, cold)", CLICK_COLUMNS,
                               results["click"])]
            elif name == "finetune":
                results["finetune"] = section_finetune(args)
                shown = [table("fine-tune, brain model on the ROBEX head", FINETUNE_COLUMNS,
                               results["finetune"])]
            else:
                results["bigct"] = section_bigct(args, folder)
                shown = [table("big CT, whole process, with attention maps", BIGCT_COLUMNS, results["bigct"])]
            print("\n\n".join(shown), flush=True)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  ({name}: {time.perf_counter() - started:.0f} s; this script's peak RSS so far "
                  f"{peak:.0f} MiB)", flush=True)
            tables.extend(shown)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": machine, "sections": results, "quick": args.quick,
                                       "runs": args.runs, "command": sys.argv}, indent=2))
    print("\n" + "\n\n".join(tables))
    print(f"\nwrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")


if __name__ == "__main__":
    main()
