"""Correct -> retrain on small structures of an unseen real head: our fine-tuning against a 50-line script.

Task (benchmarks/small_structures.py): the FSL MNI152 6th-generation T1 with skull (no model here was trained
on it) and four deep grey structures from the Neuromorphometrics atlas (thalamus, caudate, putamen,
hippocampus; each 0.8-3 % of an axial slice). A user paints K axial slices: the given slices are the centres of
K equal bins over the axial extent of the structures; only they carry labels (background included). The test
set is every other axial slice holding any of the structures. Scores: mean Dice over the four classes on the
test slices (napari_aunet.engine.finetune.evaluate for ours, the script's own argmax for the baseline).

Rows, all in one process, one after another, same threads:
- ours from scratch: a seeded 2D Attention U-Net (the brain model's architecture and normalisation, five
  classes), `fine_tune` with a wall-clock budget B (a separate run per budget: the schedule fits the budget);
- ours from `brain`: the bundled brain model with a new head for the five classes (`fine_tune(...,
  class_names=...)`, what `aunet train --init brain` does);
- baseline: benchmarks/baseline_script.py, the script a user would otherwise write (plain U-Net, crops on the
  structures, CE + soft Dice, AdamW 2e-3), trained once for the longest budget with snapshots at each budget.

    make bench-data    # once: fetches the two wheels the task reads (benchmarks/.cache)
    python benchmarks/finetune_small.py [--ks 5 10] [--budgets 30 60 180] [--inits scratch brain]
        [--threads 2] [--json benchmarks/results/finetune_small.json]
Prints a table and writes JSON (per row: K, init, budget, steps, held-out mean and per-class Dice).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_script import run_baseline  # noqa: E402
from small_structures import small_structure_task  # noqa: E402

from napari_aunet.engine.bundled import load_model  # noqa: E402
from napari_aunet.engine.finetune import (  # noqa: E402
    FineTuneSettings,
    TrainingPair,
    _dice_iou,
    evaluate,
    fine_tune,
)
from napari_aunet.engine.interpolate import interpolate_between_slices  # noqa: E402
from napari_aunet.engine.model import AttentionUNet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def given_slices(structure_slices: list[int], k: int) -> list[int]:
    """K slices at the centres of K equal bins over the structures' axial extent (deterministic)."""
    lo, hi = structure_slices[0], structure_slices[-1]
    return sorted({int(round(lo + (hi - lo) * (i + 0.5) / k)) for i in range(k)})


def partial_labels(labels: np.ndarray, axis: int, slices: list[int]) -> np.ndarray:
    partial = np.zeros_like(labels)
    region = [slice(None)] * labels.ndim
    for s in slices:
        region[axis] = s
        partial[tuple(region)] = labels[tuple(region)]
    return partial


def start_model(init: str, class_names: tuple[str, ...], seed: int) -> AttentionUNet:
    brain = load_model("brain")
    if init == "brain":
        return brain.build_model()
    torch.manual_seed(seed)
    config = dataclasses.replace(brain.config, out_channels=len(class_names), class_names=class_names)
    return AttentionUNet(config)


def ours(task, partial: np.ndarray, test: list[int], k: int, init: str, budget: float, seed: int,
         overrides: dict) -> dict:
    """One fine-tuning run with the product's defaults (what `aunet train --init brain|none` runs)."""
    settings = FineTuneSettings(steps=None, time_budget=budget, seed=seed, from_scratch=init == "scratch",
                                **overrides)
    model = start_model(init, task.class_names, seed)
    pair = TrainingPair(task.image, partial, axis=task.axial_axis, name="t1")
    result = fine_tune(model, [pair], settings, class_names=task.class_names)
    scores = evaluate(result.model, task.image, task.labels, test, task.axial_axis)
    return {"k": k, "init": init, "budget": budget, "seed": seed, "steps": result.steps,
            "seconds": round(result.seconds, 1), "mean_dice": scores["mean_dice"], "dice": scores["dice"],
            "best_step": result.best_step, "validation": result.validation,
            "settings": dataclasses.asdict(result.settings)}


def fill_between(task, partial: np.ndarray, train: list[int], test: list[int], k: int) -> dict:
    """The classical baseline: ITK-SNAP's fill between slices (engine.interpolate) from the K given slices."""
    started = time.perf_counter()
    filled, _ = interpolate_between_slices(partial, task.axial_axis, train)
    scores = _dice_iou(np.take(filled, test, task.axial_axis), np.take(task.labels, test, task.axial_axis),
                       task.class_names)
    return {"k": k, "init": "fill", "budget": 0.0, "seed": 0, "steps": 0,
            "seconds": round(time.perf_counter() - started, 1), "mean_dice": scores["mean_dice"],
            "dice": scores["dice"]}


def report(row: dict, class_names: tuple[str, ...]) -> None:
    name = "script" if row["init"] == "script" else row["init"]
    print(f"{row['k']:>3} {name:<9} {row['seed']:>4} {row['budget']:>8.0f} {row['steps']:>6} {row['mean_dice']:>9.3f}  "
          + " ".join(f"{row['dice'].get(n, float('nan')):>11.3f}" for n in class_names[1:]), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--budgets", type=float, nargs="+", default=[30, 60, 180])
    parser.add_argument("--inits", nargs="+", default=["scratch", "brain"], choices=["scratch", "brain"])
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a FineTuneSettings field for our rows (JSON value), e.g. --set batch_size=8")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "finetune_small.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = json.loads(value)  # numbers, true/false, null, lists

    task = small_structure_task()
    axis = task.axial_axis
    other = tuple(a for a in range(3) if a != axis)
    structure_slices = [int(s) for s in np.flatnonzero(np.any(task.labels != 0, axis=other))]
    rows: list[dict] = []
    print(f"task: {task.image.shape} {task.class_names[1:]}, structures on axial slices "
          f"{structure_slices[0]}-{structure_slices[-1]}; threads {args.threads}; {platform.processor() or ''}")
    print(f"{'K':>3} {'start':<9} {'seed':>4} {'budget s':>8} {'steps':>6} {'mean Dice':>9}  "
          + " ".join(f"{n[:11]:>11}" for n in task.class_names[1:]))
    for k in args.ks:
        train = given_slices(structure_slices, k)
        test = [s for s in structure_slices if s not in train]
        partial = partial_labels(task.labels, axis, train)
        print(f"K={k}: given slices {train}; {len(test)} test slices")
        for seed in args.seeds:
            for init in args.inits:
                for budget in args.budgets:
                    rows.append(ours(task, partial, test, k, init, budget, seed, overrides))
                    report(rows[-1], task.class_names)
            if not args.no_baseline:
                if seed == args.seeds[0]:  # deterministic: once per K
                    rows.append(fill_between(task, partial, train, test, k))
                    report(rows[-1], task.class_names)
                snapshots = run_baseline(task.image, task.labels, axis, train, test,
                                         checkpoints=tuple(args.budgets), threads=args.threads, seed=seed)
                for snapshot in snapshots:
                    dice = {task.class_names[int(c)]: v for c, v in snapshot["dice"].items()}
                    rows.append({"k": k, "init": "script", "budget": snapshot["seconds"], "seed": seed,
                                 "steps": snapshot["steps"], "mean_dice": snapshot["mean_dice"], "dice": dice})
                    report(rows[-1], task.class_names)
    print("\nheld-out mean Dice, mean (min-max) over seeds", args.seeds)
    print(f"{'K':>3} {'start':<9} " + " ".join(f"{f'{b:.0f} s':>18}" for b in args.budgets))
    for k in args.ks:
        for init in [*args.inits, *([] if args.no_baseline else ["script", "fill"])]:
            cells = []
            for budget in args.budgets:
                values = [r["mean_dice"] for r in rows if r["k"] == k and r["init"] == init and r["budget"] == budget]
                if init == "fill":
                    values = [r["mean_dice"] for r in rows if r["k"] == k and r["init"] == "fill"]
                cells.append(f"{np.mean(values):.3f} ({min(values):.2f}-{max(values):.2f})" if values else "-")
            print(f"{k:>3} {init:<9} " + " ".join(f"{c:>18}" for c in cells))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.platform(), "threads": args.threads,
                                     "torch": torch.__version__, "source": task.source, "rows": rows},
                                    indent=1, default=float))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
