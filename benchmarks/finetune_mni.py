"""Learning curve of fine-tuning a fresh 2D Attention U-Net on the MNI152 T1 with only K axial slices labelled.

Data: the MNI ICBM 2009a non-linear symmetric template shipped in resources/samples (T1 and grey/white
matter probability maps, 197x233x189, 1 mm, RAS, uint8; see resources/samples/MNI152_NOTICE.txt).

Label rule (applied voxel by voxel to the uint8 maps gm, wm in 0..255, where 128 means p >= 0.5):
    0 background      everywhere else
    1 grey matter     gm >= wm and gm >= 128
    2 white matter    wm > gm  and wm >= 128

Slices: axial = file axis 2 (the S axis of RAS). The brain's extent is the range of axial slices holding
any label (2..153 here). For each K the given slices are the centres of K equal bins over that range,
round(lo + (hi - lo) * (i + 0.5) / K) for i = 0..K-1; the training labels are the full labels on those
slices and nothing elsewhere. The test set is every remaining brain slice at least 3 slices away from
every given slice (|s - g| >= 3 for all given g).

Model: a fresh, seeded 2D Attention U-Net (widths 16-32-64-128, gates at levels 1-3, 3 classes,
percentile 0.5-99.5 normalisation) trained from scratch with `fine_tune` for a wall-clock budget per row.
The bundled `phantom` model is not used as a starting point: its classes (organ, lesion) are not these.
Scores are Dice per class on the test slices from `evaluate`.
Prints a table and writes benchmarks/results/finetune_mni.json.

    python benchmarks/finetune_mni.py [--ks 2 5 10 20] [--budgets 60 180] [--threads 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_aunet.engine.finetune import FineTuneSettings, TrainingPair, annotated_slices, evaluate, fine_tune
from napari_aunet.engine.model import AttentionUNet
from napari_aunet.recipes import BRAIN_CONFIG, mni_tissue

ROOT = Path(__file__).resolve().parents[1]
AXIS = 2  # axial in RAS
MIN_GAP = 3  # test slices are at least this many slices away from every given slice
# The brain model's architecture and normalisation on the three classes of mni_tissue, without a training spacing
# (no resampling anywhere).
CONFIG = dataclasses.replace(BRAIN_CONFIG, spacing=None, out_channels=3, class_names=BRAIN_CONFIG.class_names[:3])


def load_mni() -> tuple[np.ndarray, np.ndarray]:
    """The T1 (uint8, file order, RAS) and its 3-class labels (rule in the module docstring)."""
    return mni_tissue()


def given_slices(brain: list[int], k: int) -> list[int]:
    """K slices at the centres of K equal bins over the brain's axial extent (deterministic)."""
    lo, hi = brain[0], brain[-1]
    return sorted({int(round(lo + (hi - lo) * (i + 0.5) / k)) for i in range(k)})


def test_slices(brain: list[int], given: list[int]) -> list[int]:
    return [s for s in brain if min(abs(s - g) for g in given) >= MIN_GAP]


def partial_labels(labels: np.ndarray, given: list[int]) -> np.ndarray:
    partial = np.zeros_like(labels)
    partial[:, :, given] = labels[:, :, given]
    return partial


def _finite(value: float) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 5, 10, 20], help="numbers of labelled slices")
    parser.add_argument("--budgets", type=float, nargs="+", default=[60.0, 180.0], help="training seconds")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t1, labels = load_mni()
    brain = annotated_slices(labels, AXIS)
    print(f"MNI152 T1 {t1.shape}, brain on axial slices {brain[0]}..{brain[-1]} ({len(brain)} slices), "
          f"{args.threads} CPU threads, seed {args.seed}")
    rows = []
    for k in args.ks:
        given = given_slices(brain, k)
        test = test_slices(brain, given)
        print(f"K={k}: given {given}; {len(test)} test slices")
        partial = partial_labels(labels, given)
        for budget in args.budgets:
            torch.manual_seed(args.seed)
            model = AttentionUNet(CONFIG)
            settings = FineTuneSettings(steps=None, time_budget=budget, learning_rate=3e-3, batch_size=8,
                                        val_fraction=0.0, seed=args.seed, freeze_batchnorm=False)
            result = fine_tune(model, [TrainingPair(t1, partial, axis=AXIS, name="mni152")], settings)
            started = time.perf_counter()
            scores = evaluate(result.model, t1, labels, test, axis=AXIS)
            eval_seconds = time.perf_counter() - started
            row = {
                "k": k, "budget_s": budget, "steps": result.steps, "train_s": round(result.seconds, 2),
                "eval_s": round(eval_seconds, 2),
                "dice_gm": scores["dice"].get("grey matter", float("nan")),
                "dice_wm": scores["dice"].get("white matter", float("nan")),
                "mean_dice": scores["mean_dice"], "iou": scores["iou"],
                "given_slices": given, "test_slices": len(test),
                "final_loss": result.loss[-1] if result.loss else None,
            }
            rows.append(row)
            print(f"  budget {budget:g} s: {row['steps']} steps, mean Dice {row['mean_dice']:.3f}", flush=True)

    print()
    print(f"{'K':>4}{'budget s':>10}{'steps':>7}{'Dice GM':>9}{'Dice WM':>9}{'mean Dice':>11}")
    for row in rows:
        print(f"{row['k']:>4}{row['budget_s']:>10g}{row['steps']:>7}{row['dice_gm']:>9.3f}{row['dice_wm']:>9.3f}"
              f"{row['mean_dice']:>11.3f}")
    for row in rows:  # JSON has no NaN
        row.update({key: _finite(row[key]) for key in ("dice_gm", "dice_wm", "mean_dice")})
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "finetune_mni.json").write_text(json.dumps(
        {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
         "torch": torch.__version__, "seed": args.seed, "axis": AXIS, "min_gap": MIN_GAP,
         "label_rule": "1 GM: gm >= wm and gm >= 128; 2 WM: wm > gm and wm >= 128; else 0",
         "brain_slices": [brain[0], brain[-1]], "config": CONFIG.to_dict(),
         "settings": {"learning_rate": 3e-3, "batch_size": 8, "val_fraction": 0.0, "freeze_batchnorm": False},
         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
