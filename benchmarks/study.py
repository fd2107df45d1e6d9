"""U-Net vs Attention U-Net study on the CPU: same data, same budget, same augmentation, paired seeds.

Variants, a ladder from the plain U-Net up (one AttentionUNet class, gates switched per level):
  unet                    no gates (plain U-Net)
  gate L1 / L2 / L3       one gate, at that level only (the seed's "add one AG, then all" path)
  attention               every skip gated at the skip's own grid, g = the upsampled features (DESIGN.md)
  attention-interpolated  every skip gated at the skip's grid, g = the coarser features resized
                          bilinearly (gate_grid="interpolated": no 2-pixel dot grid in the maps)
  attention-coarse        every skip gated, Oktay et al.'s gate at the coarser grid (strided W_x, psi
                          upsampled)
  attention+self-attn     every skip gated (fine grid) and, one step beyond the gate, the deepest encoder's
                          features pass through one multi-head self-attention block over the flattened
                          positions (pre-LayerNorm, residual), in the spirit of TransUNet (Chen et al., 2021);
                          defined in this file only, 2D only
Data:
  (a) mni      MNI152 2009a T1 tissue (background / grey matter / white matter from the GM/WM maps, the
               brain model's rule), 2D axial slices; split by slab: train on axial slices below z = 80, test
               on slices from z = 90 up (a 10-slice gap); 96x96 training crops; score = mean Dice of GM and
               WM on whole slices.
  (b) r4-6, r2-3, r1-1.5   small-lesion phantoms (organ + lesions, engine.phantoms), 64x64, lesion radius
               4-6, 2-3, 1-1.5 px; fresh phantoms each step, a fixed test set of 48 phantoms per size;
               score = lesion Dice.
  (c) 3d       3D phantoms, 32^3, lesion radius 2-3 voxels, widths 8-16-32, batch 4, fewer steps; 24 fixed
               test phantoms; unet / attention / attention-interpolated / attention-coarse only.
Each run: AdamW + one-cycle (max lr 3e-3), fixed steps, batch 8 (3D: 4), flips/rotations/intensity
augmentation. Seeds 0..S-1 are paired: for one seed every variant sees the same batches in the same order (the
data stream is drawn from its own generator seeded by the seed) and the same test set; torch's initialisation
is seeded too. Budgets: one measured U-Net run (seed 0) rose on the smallest lesions (r1-1.5) at step ~250 and
stayed at 0.985-0.992 from step 1000 of 1500; on the 3D phantoms it rose at steps 150-350 and reached 0.95 by
step 500 of 600; MNI tissue is past 0.8 after 60 steps. The default budgets leave room for variants that start
later (the one-cycle schedule anneals to the budget, so a run settles by its end; the flattening table checks it).

Reported, per data set and variant: final test Dice and IoU (mean ± sample std over seeds); the test Dice
every --evaluate-every steps (curves; MNI: on every 4th test slice) and whether the curve flattened (the
seed-mean curve's last 20 % of points: mean of its second half minus mean of its first half, |change| <
0.005) and when each run took off (the first evaluated step with test Dice >= 0.5: the lesion runs sit at 0
until then, and a run that never takes off is flat too); the paired difference to the U-Net per seed (mean,
95 % t interval with n-1 degrees of freedom, paired t-test p, Holm-adjusted within the data set, Wilcoxon
signed-rank p from 6 seeds on) and a verdict
(helps: interval above 0; hurts: below 0; else no difference shown); parameters and CPU inference ms
(128x128 slice, 3D: 32^3 volume, batch 1, fastest of 20 repeats); and for every all-gate variant's seed-0 model
on the 2D data, engine.importance.level_importance on test data (Dice when each gate is forced open/closed).
Outputs in docs/study/ (--quick: benchmarks/results/study_quick/): study.json (everything),
curves_*.png, attention_*.png (every level's map on a fixed test image, seed 0, each all-gate variant),
printed tables, and with --markdown PATH the tables as Markdown for docs/study.md.

Resumable: every finished run is written at once to runs/<data>/<steps>-steps/<variant>-seed<k>.json under the output folder
(its curve, final Dice/IoU, seconds, machine and date; the seed-0 all-gate runs also their level-importance
table). A later invocation with the same settings (steps, evaluation interval, test-set size) reads those
instead of training again, so the study can be run in parts (--data mni, then --data 3d r2-3 ...) and on
several processes at once (each its own --data, or the same arguments: a process claims a run before training it
and the others skip it), and a last invocation over everything only writes the tables;
--fresh trains every run again. The runs of one data set are paired across variants, so run a data set's
variants on one machine (the records say which).

    python benchmarks/study.py [--seeds 5] [--mni-steps 1500] [--phantom-steps 1000] [--steps-3d 600]
    python benchmarks/study.py --quick --threads 1 --markdown /tmp/study_quick.md   # smoke run, minutes
    python benchmarks/study.py --estimate-only                                      # the estimate, then exit
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import nn

from napari_aunet.engine.config import ModelConfig, Normalization
from napari_aunet.engine.finetune import _dice_iou
from napari_aunet.engine.importance import level_importance
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.model import AttentionUNet, count_parameters
from napari_aunet.engine.phantoms import generate_phantom
from napari_aunet.engine.training import augment, masked_loss, seed_everything
from napari_aunet.recipes import mni_tissue

MNI_CLASSES = ("background", "grey matter", "white matter")  # the labels of recipes.mni_tissue
PHANTOM_CLASSES = ("background", "organ", "lesion")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# gates: the gated skip levels, or "all"; bottleneck: the self-attention extension (SelfAttentionUNet)
VARIANTS: dict[str, dict] = {
    "unet": {"gates": ()},
    "gate L1": {"gates": (1,)},
    "gate L2": {"gates": (2,)},
    "gate L3": {"gates": (3,)},
    "attention": {"gates": "all"},
    "attention-interpolated": {"gates": "all", "gate_grid": "interpolated"},
    "attention-coarse": {"gates": "all", "gate_grid": "coarse"},
    "attention+self-attn": {"gates": "all", "bottleneck": True},
}
VARIANTS_3D = ("unet", "attention", "attention-interpolated", "attention-coarse")
ALL_GATES = tuple(name for name, spec in VARIANTS.items() if spec["gates"] == "all")
BASELINE = "unet"
LESION_SIZES = {"r4-6": (4.0, 6.0), "r2-3": (2.0, 3.0), "r1-1.5": (1.0, 1.5)}
LESION_3D = (2.0, 3.0)
DATA_KEYS = ("mni", *LESION_SIZES, "3d")
# the study of docs/study.md: MNI tissue, the smallest lesions, 3D; r4-6 and r2-3 run when asked for
DEFAULT_DATA = ("mni", "r1-1.5", "3d")
TAKE_OFF = 0.5  # test Dice a run has "taken off" at (the lesion runs sit at 0 until they do)
MNI_TRAIN_BELOW, MNI_TEST_FROM, CROP = 80, 90, 96
FULL = {"seeds": 5, "mni_steps": 1500, "phantom_steps": 1000, "steps_3d": 600, "evaluate_every": 50,
        "mni_test": None, "phantom_test": 48, "test_3d": 24, "importance_slices": 8, "timing_repeats": 20}
QUICK = {"seeds": 2, "mni_steps": 60, "phantom_steps": 60, "steps_3d": 30, "evaluate_every": 10,
         "mni_test": 6, "phantom_test": 8, "test_3d": 4, "importance_slices": 3, "timing_repeats": 5}


# ------------------------------------------------------------ models


class SelfAttentionBottleneck(nn.Module):
    """``x + MHA(LN(x))`` over the flattened positions of ``(N, C, H, W)`` features: one multi-head
    self-attention block with a pre-LayerNorm and a residual (TransUNet's encoder layer cut down to its
    attention). No position embedding: the input size varies (96x96 crops, whole slices), and the
    convolutional features below carry position through their zero padding."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (N, H*W, C)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return x + attended.transpose(1, 2).reshape(x.shape)


class SelfAttentionUNet(AttentionUNet):
    """An AttentionUNet (2D) whose deepest encoder block is followed by a
    :class:`SelfAttentionBottleneck` (one head per 32 channels). Everything else, the gates included, is the
    parent's."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if config.spatial_dims != 2:
            raise ValueError("the self-attention bottleneck is 2D only here")
        width = config.widths[-1]
        bottleneck = SelfAttentionBottleneck(width, heads=max(1, width // 32))
        self.encoders[-1] = nn.Sequential(self.encoders[-1], bottleneck)


def config_for(kind: str, variant: str) -> ModelConfig:
    spec = VARIANTS[variant]
    if kind == "mni":
        dims, widths, classes = 2, (16, 32, 64, 128), MNI_CLASSES
    elif kind == "phantom":
        dims, widths, classes = 2, (8, 16, 32, 64), PHANTOM_CLASSES
    else:
        dims, widths, classes = 3, (8, 16, 32), PHANTOM_CLASSES
    gates = tuple(range(1, len(widths))) if spec["gates"] == "all" else spec["gates"]
    return ModelConfig(spatial_dims=dims, out_channels=3, widths=widths, class_names=classes,
                       normalization=Normalization(mode="none"), gated_levels=gates,
                       gate_grid=spec.get("gate_grid", "fine"))


def build_model(kind: str, variant: str) -> AttentionUNet:
    config = config_for(kind, variant)
    return SelfAttentionUNet(config) if VARIANTS[variant].get("bottleneck") else AttentionUNet(config)


# ------------------------------------------------------------ data


def _normalize(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return np.clip((image - lo) / (hi - lo), 0, 1).astype(np.float32)


class MniData:
    kind, batch, score_name = "mni", 8, "mean Dice of GM and WM"

    def __init__(self, test_count: int | None) -> None:
        self.key, self.name = "mni", "MNI152 tissue"
        image, labels = mni_tissue()
        self.image = _normalize(image.astype(np.float32))
        self.labels = labels
        brain = [z for z in range(labels.shape[2]) if labels[:, :, z].any()]
        self.train = [z for z in brain if z < MNI_TRAIN_BELOW]
        test = [z for z in brain if z >= MNI_TEST_FROM]
        if test_count is not None and test_count < len(test):
            test = [test[i] for i in np.linspace(0, len(test) - 1, test_count).round().astype(int)]
        self.test = test
        self.test_images = np.moveaxis(self.image[:, :, self.test], 2, 0)[:, None].astype(np.float32)
        self.test_labels = np.moveaxis(self.labels[:, :, self.test], 2, 0)
        # the curves score every 4th test slice (a quarter of the evaluation time); the final Dice all of them
        self.curve_subset = slice(None, None, 4) if len(self.test) >= 16 else slice(None)

    def batches(self, rng: np.random.Generator):
        while True:
            images, targets = [], []
            for _ in range(self.batch):
                z = int(rng.choice(self.train))
                plane, target = self.image[:, :, z], self.labels[:, :, z]
                corner = [int(rng.integers(n - CROP + 1)) for n in plane.shape]
                window = tuple(slice(c, c + CROP) for c in corner)
                image, label = augment(plane[window], target[window], rng)
                images.append(image[None])
                targets.append(label.astype(np.int64))
            yield np.stack(images), np.stack(targets)

    def importance_input(self, count: int) -> dict:
        """The whole normalised volume, sliced along z at ``count`` evenly spaced test slices."""
        picks = np.linspace(0, len(self.test) - 1, min(count, len(self.test))).round().astype(int)
        return {"volume": self.image, "labels": self.labels, "axis": 2,
                "slices": sorted({self.test[i] for i in picks})}


class PhantomData:
    score_name = "lesion Dice"
    curve_subset = slice(None)  # the curves score the whole test set

    def __init__(self, key: str, radius: tuple[float, float], test_count: int, dims: int = 2) -> None:
        self.key, self.radius, self.dims = key, radius, dims
        self.kind = "phantom" if dims == 2 else "phantom3d"
        self.shape = (64, 64) if dims == 2 else (32, 32, 32)
        self.batch = 8 if dims == 2 else 4
        self.name = f"lesions r{key[1:]}" if dims == 2 else f"3D lesions r{radius[0]:g}-{radius[1]:g}"
        phantoms = [generate_phantom(self.shape, seed=10**8 + i, lesions=(2, 4), lesion_radius=radius)
                    for i in range(test_count)]
        self.test_images = np.stack([_normalize(p.image) for p in phantoms])[:, None]
        self.test_labels = np.stack([p.labels for p in phantoms])

    def batches(self, rng: np.random.Generator):
        while True:
            images, targets = [], []
            for _ in range(self.batch):
                phantom = generate_phantom(self.shape, seed=int(rng.integers(10**8)), lesions=(2, 4),
                                           lesion_radius=self.radius, noise=float(rng.uniform(0.05, 0.25)))
                image, label = augment(_normalize(phantom.image), phantom.labels, rng)
                images.append(image[None])
                targets.append(label.astype(np.int64))
            yield np.stack(images), np.stack(targets)

    def importance_input(self, count: int) -> dict:
        """The stack of test phantoms as one volume, sliced along axis 0 (2D only)."""
        return {"volume": self.test_images[:, 0], "labels": self.test_labels, "axis": 0,
                "slices": list(range(min(2 * count, len(self.test_images))))}


def variants_for(data, wanted: list[str]) -> list[str]:
    allowed = VARIANTS_3D if data.kind == "phantom3d" else tuple(VARIANTS)
    return [v for v in wanted if v in allowed]


# ------------------------------------------------------------ training


def predict(model: AttentionUNet, images: np.ndarray) -> np.ndarray:
    model.eval()
    out = []
    chunk = 16 if model.config.spatial_dims == 2 else 2
    with torch.inference_mode():
        for start in range(0, len(images), chunk):
            out.append(model(torch.from_numpy(images[start : start + chunk])).argmax(1).numpy())
    return np.concatenate(out)


def scores(model: AttentionUNet, data, subset: slice = slice(None)) -> tuple[float, float]:
    """(Dice, IoU) on the test set (``subset`` of it): MNI the mean over GM and WM, phantoms the lesion's."""
    images, labels = data.test_images[subset], data.test_labels[subset]
    result = _dice_iou(predict(model, images), labels, model.config.class_names)
    if data.kind == "mni":
        return float(result["mean_dice"]), float(np.mean(list(result["iou"].values())))
    return float(result["dice"].get("lesion", 0.0)), float(result["iou"].get("lesion", 0.0))


def train_step(model, optimizer, schedule, batches) -> float:
    model.train()
    images, targets = next(batches)
    loss = masked_loss(model(torch.from_numpy(images)), torch.from_numpy(targets))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if schedule is not None:
        schedule.step()
    return float(loss.detach())


def run(data, variant: str, seed: int, steps: int, evaluate_every: int) -> dict:
    seed_everything(seed)
    model = build_model(data.kind, variant)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    batches = data.batches(np.random.default_rng(seed))  # the seed's data stream, the same for every variant
    curve = []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        train_step(model, optimizer, schedule, batches)
        if step % evaluate_every == 0 or step == steps:
            curve.append((step, round(scores(model, data, data.curve_subset)[0], 5)))
    dice, iou = scores(model, data)
    return {"data": data.name, "variant": variant, "seed": seed, "steps": steps, "curve": curve,
            "dice": dice, "iou": iou, "train_s": round(time.perf_counter() - started, 1), "model": model}


def inference_ms(kind: str, variant: str, repeats: int) -> float:
    model = build_model(kind, variant).eval()
    x = torch.randn(1, 1, 128, 128) if model.config.spatial_dims == 2 else torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - started)
    return float(np.min(times) * 1000)  # the fastest repeat: the least disturbed by other work on the machine


# ------------------------------------------------------------ run records (resuming)


def record_path(out: Path, data, variant: str, seed: int, steps: int) -> Path:
    """One file per run; runs of other budgets sit beside it (the same variant at 600 and 1500 steps)."""
    return out / "runs" / slug(data.name) / f"{steps}-steps" / f"{slug(variant)}-seed{seed}.json"


def settings(data, steps: int, evaluate_every: int) -> dict:
    """What a recorded run must share with this invocation to be read instead of trained again."""
    return {"steps": steps, "evaluate_every": evaluate_every, "test_images": len(data.test_images),
            "batch": data.batch}


def read_record(path: Path, wanted: dict) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("settings") == wanted else None


def claim(path: Path) -> bool:
    """Take the run of ``path`` for this process (a ``.claim`` file holding its PID, created exclusively), unless
    another live process holds it: several processes with the same arguments share the runs between them."""
    marker = path.with_suffix(".claim")
    marker.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(marker.read_text() or 0)
                os.kill(holder, 0)  # raises when that process is gone
                return False
            except (ValueError, ProcessLookupError, FileNotFoundError):
                marker.unlink(missing_ok=True)  # left behind by a process that stopped: take it over
                continue
            except PermissionError:
                return False
        with os.fdopen(descriptor, "w") as stream:
            stream.write(str(os.getpid()))
        return True
    return False


def write_record(path: Path, record: dict) -> None:
    """Atomically: a run killed half-way through writing leaves no half a record behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1, allow_nan=True))
    os.replace(temporary, path)


# ------------------------------------------------------------ time estimate


def probe_speed(datasets: list, variants: dict[str, list[str]], quick: bool) -> dict:
    """Seconds per training step of every (data kind, variant) and per curve evaluation, from a few steps
    each."""
    timed = 1 if quick else 3
    speed = {}
    for data in datasets:
        if data.kind in {k for k, _ in speed}:
            continue
        for variant in variants[data.key]:
            seed_everything(0)
            model = build_model(data.kind, variant)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            batches = data.batches(np.random.default_rng(0))
            train_step(model, optimizer, None, batches)  # warm-up
            started = time.perf_counter()
            for _ in range(timed):
                train_step(model, optimizer, None, batches)
            step_s = (time.perf_counter() - started) / timed
            started = time.perf_counter()
            scores(model, data, data.curve_subset)
            speed[data.kind, variant] = {"step_s": step_s, "evaluate_s": time.perf_counter() - started}
    return speed


def run_seconds(speed: dict, data, variant: str, steps: int, evaluate_every: int) -> float:
    entry = speed[data.kind, variant]
    evaluations = math.ceil(steps / evaluate_every) + 1
    # the 2D phantom sizes share one probe: same network, same image and test-set sizes
    return steps * entry["step_s"] + evaluations * entry["evaluate_s"]


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


# ------------------------------------------------------------ statistics


NOTHING_LEARNT = 0.02  # a tail whose seed-mean Dice stays below this is flat at zero, not settled


def flattening(curves: list[list], tail: float, tolerance: float) -> dict:
    """The seed-mean curve's last ``tail`` share of points (at least 2), split in halves:
    mean(second) - mean(first); flattened when |change| < ``tolerance``."""
    values = np.array([[v for _, v in c] for c in curves], dtype=float).mean(0)
    steps = [s for s, _ in curves[0]]
    if len(values) < 2:
        return {"change": float("nan"), "flattened": False, "near_zero": False, "points": len(values),
                "from_step": None}
    count = min(len(values), max(2, math.ceil(tail * len(values))))
    last = values[-count:]
    first = count - count // 2
    change = float(last[first:].mean() - last[:first].mean())
    return {"change": change, "flattened": bool(abs(change) < tolerance),
            "near_zero": bool(last.max() < NOTHING_LEARNT), "points": len(values),
            "from_step": int(steps[-count])}


def take_off(curve: list, level: float = TAKE_OFF) -> int | None:
    """The first evaluated step at which a run's test Dice reached ``level``; None when it never did."""
    return next((int(step) for step, dice in curve if dice >= level), None)


def take_off_cells(steps: list[int | None]) -> list[str]:
    """Table cells of one variant's take-off steps: per seed, their median, how many never took off."""
    reached = [t for t in steps if t is not None]
    return [" ".join("never" if t is None else str(t) for t in steps),
            str(int(np.median(reached))) if reached else "–", str(len(steps) - len(reached))]


def paired(variant_dice: dict[int, float], baseline_dice: dict[int, float]) -> dict:
    """variant - baseline per common seed: mean, 95 % t interval, paired t-test p, Wilcoxon p (n >= 6) and
    the verdict."""
    seeds = sorted(set(variant_dice) & set(baseline_dice))
    a = np.array([variant_dice[s] for s in seeds])
    b = np.array([baseline_dice[s] for s in seeds])
    diff = a - b
    n = len(diff)
    out = {"seeds": seeds, "differences": [round(float(d), 5) for d in diff], "n": n,
           "mean": float(diff.mean()) if n else float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
           "p_t": float("nan"), "p_wilcoxon": None, "better_on": int((diff > 0).sum()),
           "verdict": "n/a (fewer than 2 seeds)"}
    if n < 2:
        return out
    sd = float(diff.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    if sd > 0:
        out["p_t"] = float(stats.ttest_rel(a, b).pvalue)
    else:  # every seed moved by the same amount: no spread to test against
        out["p_t"] = 1.0 if out["mean"] == 0 else 0.0
    if n >= 6:
        try:
            out["p_wilcoxon"] = float(stats.wilcoxon(diff).pvalue)
        except ValueError:  # all differences zero
            out["p_wilcoxon"] = 1.0
    if out["ci_low"] > 0:
        out["verdict"] = "helps"
    elif out["ci_high"] < 0:
        out["verdict"] = "hurts"
    else:
        out["verdict"] = "no difference shown"
    return out


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (NaN stays NaN)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [float("nan")] * len(pvalues)
    running, m = 0.0, len(order)
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


# ------------------------------------------------------------ plots


def slug(name: str) -> str:
    return name.replace(" ", "_").replace(".", "")


def plot_curves(runs: list[dict], data, variants: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    styles = {"gate L1": ":", "gate L2": ":", "gate L3": ":", "attention+self-attn": "-."}
    for variant in variants:
        curves = [r["curve"] for r in runs if r["variant"] == variant and r["data"] == data.name]
        if not curves:
            continue
        steps = [s for s, _ in curves[0]]
        values = np.array([[v for _, v in c] for c in curves])
        axis.plot(steps, values.mean(0), styles.get(variant, "-"), label=variant,
                  linewidth=2 if variant in (BASELINE, "attention") else 1.2)
        axis.fill_between(steps, values.min(0), values.max(0), alpha=0.10)
    axis.set_xlabel("training step")
    axis.set_ylabel(f"test {data.score_name}" + (" (every 4th test slice)" if data.kind == "mni" else ""))
    axis.set_title(f"{data.name}: mean over seeds, band = min-max")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_attention(model: AttentionUNet, image: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    with torch.inference_mode():
        logits, attention = model(torch.from_numpy(image[None, None]), return_attention=True)
    levels = sorted(attention)
    figure, axes = plt.subplots(1, 2 + len(levels), figsize=(3 * (2 + len(levels)), 3.2))
    axes[0].imshow(image.T, cmap="gray", origin="lower")
    axes[0].set_title("image")
    axes[1].imshow(logits.argmax(1)[0].numpy().T, cmap="viridis", origin="lower", vmin=0, vmax=2)
    axes[1].set_title("prediction")
    for axis, level in zip(axes[2:], levels, strict=True):
        axis.imshow(attention[level][0, 0].numpy().T, cmap="inferno", origin="lower", vmin=0, vmax=1)
        axis.set_title(f"attention L{level} (1/{2 ** (level - 1)})")
    for axis in axes:
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ------------------------------------------------------------ tables


def fmt(value, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_p(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2g}" if value >= 0.001 else "<0.001"


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


# ------------------------------------------------------------ main


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = str(RESULTS / "study_quick" if args.quick else ROOT / "docs" / "study")
    unknown = [d for d in args.data if d not in DATA_KEYS]
    if unknown:
        raise SystemExit(f"unknown data {unknown}: choose from {', '.join(DATA_KEYS)}")
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variants {bad}: choose from {', '.join(VARIANTS)}")
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 seeds, 60 steps (3D 30), tiny test sets; the defaults below "
                             "become these")
    parser.add_argument("--seeds", type=int, help="seeds 0..S-1, paired across variants (default 5)")
    parser.add_argument("--mni-steps", type=int, help="training steps on MNI tissue (default 1500)")
    parser.add_argument("--phantom-steps", type=int, help="training steps per 2D phantom set (default 1000)")
    parser.add_argument("--steps-3d", type=int, help="training steps on the 3D phantoms (default 600)")
    parser.add_argument("--evaluate-every", type=int, help="test Dice every K steps, the curves (default 50)")
    parser.add_argument("--flat-tail", type=float, default=0.2, help="share of a curve's points judged (0.2)")
    parser.add_argument("--flat-tolerance", type=float, default=0.005, help="flattened: |change| below this")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="VARIANT",
                        help=f"default: all of {', '.join(VARIANTS)}")
    parser.add_argument("--data", nargs="+", default=list(DEFAULT_DATA), metavar="DATA",
                        help=f"default: {' '.join(DEFAULT_DATA)} (docs/study.md); any of {', '.join(DATA_KEYS)}")
    parser.add_argument("--out", help="output folder (docs/study; --quick: benchmarks/results/study_quick)")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the tables as Markdown")
    parser.add_argument("--estimate-only", action="store_true", help="print the time estimate and exit")
    parser.add_argument("--fresh", action="store_true",
                        help="train every run again (default: read the runs already recorded under OUT/runs)")
    for key in ("mni_test", "phantom_test", "test_3d", "importance_slices", "timing_repeats"):
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, help=argparse.SUPPRESS)
    args = resolve(parser.parse_args())
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/study.py " + shlex.join(sys.argv[1:])
    wall_started = time.perf_counter()

    datasets = []
    if "mni" in args.data:
        datasets.append(MniData(args.mni_test))
    for key, radius in LESION_SIZES.items():
        if key in args.data:
            datasets.append(PhantomData(key, radius, args.phantom_test))
    if "3d" in args.data:
        datasets.append(PhantomData("3d", LESION_3D, args.test_3d, dims=3))
    steps_of = {"mni": args.mni_steps, "phantom": args.phantom_steps, "phantom3d": args.steps_3d}
    variants = {d.key: variants_for(d, args.variants) for d in datasets}
    plan = [(d, v, s) for d in datasets for v in variants[d.key] for s in range(args.seeds)]

    wanted = {(d.key, v, s): settings(d, steps_of[d.kind], args.evaluate_every) for d, v, s in plan}
    recorded = {} if args.fresh else {
        (d.key, v, s): r for d, v, s in plan
        if (r := read_record(record_path(out, d, v, s, steps_of[d.kind]), wanted[d.key, v, s])) is not None}
    todo = [(d, v, s) for d, v, s in plan if (d.key, v, s) not in recorded]
    print(f"{len(plan)} runs: " + ", ".join(
        f"{d.name} {len(variants[d.key])} variants x {args.seeds} seeds x {steps_of[d.kind]} steps"
        for d in datasets) + f"; {len(recorded)} already recorded under {out / 'runs'}, {len(todo)} to train",
        flush=True)
    estimate = probe_s = 0.0
    planned: list[float] = []
    if todo:
        started = time.perf_counter()
        todo_kinds = {d.kind for d, _, _ in todo}
        speed = probe_speed([d for d in datasets if d.kind in todo_kinds], variants, args.quick)
        probe_s = time.perf_counter() - started
        planned = [run_seconds(speed, d, v, steps_of[d.kind], args.evaluate_every) for d, v, _ in todo]
        estimate = sum(planned)
        print(f"estimate from {probe_s:.0f} s of probe steps on {args.threads} thread(s): {clock(estimate)} of "
              "training and evaluation (plus importance, timing and plots; more if the machine gets busier "
              "than during the probe)")
        for kind in dict.fromkeys(d.kind for d in datasets if d.kind in todo_kinds):
            row = ", ".join(f"{v} {speed[kind, v]['step_s'] * 1000:.0f}" for v in VARIANTS
                            if (kind, v) in speed)
            print(f"  ms per training step, {kind}: {row}")
    if args.estimate_only:
        return

    done_estimate = done_actual = 0.0
    for index, ((data, variant, seed), expected) in enumerate(zip(todo, planned, strict=True), start=1):
        path = record_path(out, data, variant, seed, steps_of[data.kind])
        if (found := read_record(path, wanted[data.key, variant, seed])) is not None or not claim(path):
            if found is not None:  # recorded by another process meanwhile
                recorded[data.key, variant, seed] = found
            done_estimate += expected
            continue
        result = run(data, variant, seed, steps_of[data.kind], args.evaluate_every)
        model = result.pop("model")
        info = machine()
        result.update(settings=wanted[data.key, variant, seed], date=datetime.date.today().isoformat(),
                      cpu=info["cpu"], threads=info["threads"], torch=info["torch"])
        if seed == 0 and variant in ALL_GATES and data.kind != "phantom3d":
            table = level_importance(Segmenter(model, device="cpu", precision="fp32"),
                                     **data.importance_input(args.importance_slices))
            result["importance"] = table
            index_image = len(data.test_images) // 2
            plot_attention(model, data.test_images[index_image, 0],
                           f"{data.name}, {variant}, seed 0, test image {index_image}",
                           out / f"attention_{slug(data.name)}_{variant}.png")
        write_record(path, result)
        path.with_suffix(".claim").unlink(missing_ok=True)
        recorded[data.key, variant, seed] = result
        done_estimate += expected
        done_actual += result["train_s"]
        remaining = (estimate - done_estimate) * done_actual / max(done_estimate, 1e-9)
        print(f"[{index}/{len(todo)}] {data.name:<18}{variant:<24}seed {seed}: Dice {result['dice']:.3f} "
              f"({result['train_s']} s; about {clock(remaining)} left)", flush=True)

    missing = [(d, v, s) for d, v, s in plan if (d.key, v, s) not in recorded]
    for d, v, s in missing:  # runs another process was still training: wait for its records
        path = record_path(out, d, v, s, steps_of[d.kind])
        print(f"waiting for {path.relative_to(out)} (another process trains it)", flush=True)
        while (found := read_record(path, wanted[d.key, v, s])) is None:
            if claim(path):  # that process stopped without recording it
                path.with_suffix(".claim").unlink(missing_ok=True)
                raise SystemExit(f"{path} was claimed by a process that stopped: run the command again")
            time.sleep(10)
        recorded[d.key, v, s] = found
    runs = [recorded[d.key, v, s] for d, v, s in plan]
    importance = [{"data": r["data"], "variant": r["variant"], **r["importance"]} for r in runs
                  if "importance" in r]
    for data in datasets:
        plot_curves(runs, data, variants[data.key], out / f"curves_{slug(data.name)}.png")

    # ------------------------------------------------------------------ tables
    timing_cache: dict = {}
    results, differences, flat = [], [], []
    for data in datasets:
        chosen = variants[data.key]
        by_variant = {v: [r for r in runs if r["data"] == data.name and r["variant"] == v] for v in chosen}
        for variant in chosen:
            selected = by_variant[variant]
            dice = np.array([r["dice"] for r in selected])
            iou = np.array([r["iou"] for r in selected])
            key = (data.kind, variant)
            if key not in timing_cache:
                timing_cache[key] = (count_parameters(build_model(*key)),
                                     inference_ms(*key, args.timing_repeats))
            ddof = 1 if len(selected) > 1 else 0
            results.append({"data": data.name, "variant": variant, "seeds": len(selected),
                            "steps": steps_of[data.kind], "dice_mean": float(dice.mean()),
                            "dice_std": float(dice.std(ddof=ddof)), "iou_mean": float(iou.mean()),
                            "iou_std": float(iou.std(ddof=ddof)), "dice_per_seed": dice.round(5).tolist(),
                            "parameters": timing_cache[key][0], "inference_ms": timing_cache[key][1]})
            flat.append({"data": data.name, "variant": variant, "steps": steps_of[data.kind],
                         **flattening([r["curve"] for r in selected], args.flat_tail, args.flat_tolerance),
                         "take_off": [take_off(r["curve"]) for r in sorted(selected, key=lambda r: r["seed"])]})
        if BASELINE in by_variant:
            base = {r["seed"]: r["dice"] for r in by_variant[BASELINE]}
            rows = [{"data": data.name, "variant": v,
                     **paired({r["seed"]: r["dice"] for r in by_variant[v]}, base)}
                    for v in chosen if v != BASELINE]
            for row, adjusted in zip(rows, holm([r["p_t"] for r in rows]), strict=True):
                row["p_holm"] = adjusted
            differences.extend(rows)

    tables = {}
    tables["results"] = (
        f"Results: final test Dice and IoU, mean ± sample std over {args.seeds} seeds",
        ["data", "variant", "steps", "Dice", "IoU", "parameters", "ms / input (fastest of repeats)"],
        [[r["data"], r["variant"], str(r["steps"]), f"{r['dice_mean']:.3f} ± {r['dice_std']:.3f}",
          f"{r['iou_mean']:.3f} ± {r['iou_std']:.3f}", f"{r['parameters']:,}", f"{r['inference_ms']:.1f}"]
         for r in results])
    tables["paired"] = (
        f"Paired difference to the U-Net (variant - unet, final Dice, per seed; 95 % t interval, "
        f"{args.seeds - 1} dof)",
        ["data", "variant", "Δ Dice", "95 % CI", "p (t)", "p (Holm)", "p (Wilcoxon)", "better on", "verdict",
         "Δ per seed"],
        [[r["data"], r["variant"], fmt(r["mean"], signed=True),
          f"[{fmt(r['ci_low'], signed=True)}, {fmt(r['ci_high'], signed=True)}]", fmt_p(r["p_t"]),
          fmt_p(r["p_holm"]), fmt_p(r["p_wilcoxon"]), f"{r['better_on']}/{r['n']}", r["verdict"],
          " ".join(fmt(d, signed=True) for d in r["differences"])] for r in differences])
    tables["flattening"] = (
        f"Flattening: seed-mean test Dice over the last {args.flat_tail:.0%} of the curve's points, second "
        f"half minus first half; flattened when |change| < {args.flat_tolerance}",
        ["data", "variant", "steps", "judged from step", "change", "flattened"],
        [[f["data"], f["variant"], str(f["steps"]), str(f["from_step"]), fmt(f["change"], 4, signed=True),
          ("yes, at 0: nothing learnt" if f["near_zero"] else "yes") if f["flattened"] else "NO"]
         for f in flat])
    tables["take_off"] = (
        f"Take-off: the first evaluated step at which each seed's test Dice reached {TAKE_OFF} (seeds in order; "
        "never = not within the budget)",
        ["data", "variant", "steps", "take-off step per seed", "median", "never"],
        [[f["data"], f["variant"], str(f["steps"]), *take_off_cells(f["take_off"])] for f in flat])
    importance_rows = []
    for entry in importance:
        for level in sorted(entry["levels"], key=lambda row: row["level"]):
            psi = ", ".join(f"{name} {value:.2f}" for name, value in level["mean_psi"].items())
            importance_rows.append([
                entry["data"], entry["variant"], f"L{level['level']}", fmt(level["dice"]),
                fmt(level["dice_open"]), fmt(level["dice_closed"]), fmt(level["change_open"], signed=True),
                fmt(level["change_closed"], signed=True), psi])
    tables["importance"] = (
        "Level importance (seed-0 model of each all-gate variant, engine.importance.level_importance on test "
        "data against the reference labels; mean Dice over the foreground classes)",
        ["data", "variant", "level", "Dice", "gate open", "gate closed", "Δ open", "Δ closed", "mean psi"],
        importance_rows)
    for title, headers, rows in tables.values():
        print_table(title, headers, rows)

    wall = time.perf_counter() - wall_started
    info = machine()
    training_s = sum(r["train_s"] for r in runs)
    made_on = sorted({(r["date"], r["cpu"], r["threads"], r["torch"]) for r in runs})
    print(f"\nwall time of this invocation {clock(wall)} (estimate was {clock(estimate)} for the {len(todo)} "
          f"runs it trained); training and evaluation of all {len(runs)} runs {clock(training_s)}; runs made "
          + "; ".join(f"{d} on {c}, {t} thread(s), torch {v}" for d, c, t, v in made_on))
    record = {"command": command, "date": datetime.date.today().isoformat(), "machine": info,
              "wall_s": round(wall, 1), "estimate_s": round(estimate, 1), "training_s": round(training_s, 1),
              "made_on": [dict(zip(("date", "cpu", "threads", "torch"), m, strict=True)) for m in made_on],
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "results": results, "paired": differences, "flattening": flat, "importance": importance,
              "runs": runs}
    (out / "study.json").write_text(json.dumps(record, indent=2, allow_nan=True))
    print(f"wrote {out / 'study.json'}")

    if args.markdown:
        relative = os.path.relpath(out, ROOT / "docs")
        shown = out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out
        parts = [f"Command: `{command}` (runs already recorded under `{shown}/runs/` are read, not trained "
                 "again). Runs made " + "; ".join(f"{d} on {c}, {t} thread(s), torch {v}"
                                                 for d, c, t, v in made_on)
                 + f"; training and evaluation of the {len(runs)} runs took {clock(training_s)} in all. Raw "
                 f"numbers: `{shown}/study.json` and one record per run in `{shown}/runs/`."]
        for key in ("results", "paired", "flattening", "take_off", "importance"):
            title, headers, rows = tables[key]
            parts.append(f"### {title}\n\n{markdown_table(headers, rows)}")
        parts.append("Verdict: *helps* when the 95 % interval of the paired difference lies above 0, "
                     "*hurts* when below, else *no difference shown*. p (Holm) adjusts the paired t-test's p "
                     "over the variants of one data set. The learning rate follows a one-cycle schedule, so "
                     "the last part of every curve runs at a small learning rate: a flat tail says the run "
                     "settled, not that a longer budget could not do better.")
        images = "\n".join(f"![{d.name}]({relative}/curves_{slug(d.name)}.png)" for d in datasets)
        parts.append("Curves (test Dice against training steps, mean over seeds, band = min-max):\n\n"
                     + images)
        args.markdown.write_text("\n\n".join(parts) + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
