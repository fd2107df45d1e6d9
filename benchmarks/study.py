"""U-Net vs Attention U-Net study on the CPU: same data, same budget, same augmentation, several seeds.

Variants (one AttentionUNet class, gates switched per level):
  unet            no gates (plain U-Net)
  gate L1/L2/L3   one gate, at that level only (the seed's "add one AG, then all" path)
  attention       every skip gated, the gate at the skip's own grid (DESIGN.md)
  attention-coarse every skip gated, Oktay et al.'s gate at the coarser grid (strided W_x, psi upsampled)
Data:
  (a) MNI152 2009a T1 tissue (background / grey matter / white matter from the GM/WM maps, the brain
      model's rule), 2D axial slices; train/test split by slab: train on axial slices below z = 80, test on
      slices from z = 90 up (a 10-slice gap); 96x96 training crops; Dice on whole test slices.
  (b) small-lesion phantoms (organ + lesions, engine.phantoms), 64x64, three lesion sizes (radius 4-6,
      2-3, 1-1.5 px); fresh phantoms each step, a fixed test set of 48 phantoms per size; lesion Dice.
Each run: AdamW + one-cycle, fixed steps, batch 8, flips/rotations/intensity augmentation, seeds 0..S-1.
Outputs in benchmarks/results/study/: study.json, curves_<data>.png (test Dice vs step), attention_<data>.png
(every level's map on a fixed test slice, attention variant, seed 0), and a printed table (mean ± std of
final Dice and IoU, parameters, CPU inference ms per 128x128 slice at batch 1).

    python benchmarks/study.py [--seeds 3] [--mni-steps 200] [--phantom-steps 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_aunet.engine.config import ModelConfig, Normalization
from napari_aunet.engine.finetune import _dice_iou
from napari_aunet.engine.model import AttentionUNet, count_parameters
from napari_aunet.engine.phantoms import generate_phantom
from napari_aunet.engine.training import augment, masked_loss, seed_everything
from napari_aunet.recipes import mni_tissue

MNI_CLASSES = ("background", "grey matter", "white matter")  # the labels of recipes.mni_tissue

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "study"
VARIANTS = {
    "unet": {"gated_levels": ()},
    "gate L1": {"gated_levels": (1,)},
    "gate L2": {"gated_levels": (2,)},
    "gate L3": {"gated_levels": (3,)},
    "attention": {"gated_levels": (1, 2, 3)},
    "attention-coarse": {"gated_levels": (1, 2, 3), "gate_grid": "coarse"},
}
LESION_SIZES = {"lesions r4-6": (4.0, 6.0), "lesions r2-3": (2.0, 3.0), "lesions r1-1.5": (1.0, 1.5)}
MNI_TRAIN_BELOW, MNI_TEST_FROM, CROP = 80, 90, 96


def config_for(data: str, variant: str) -> ModelConfig:
    if data == "mni":
        return ModelConfig(spatial_dims=2, out_channels=3, widths=(16, 32, 64, 128),
                           class_names=MNI_CLASSES, normalization=Normalization(mode="none"),
                           **VARIANTS[variant])
    return ModelConfig(spatial_dims=2, out_channels=3, widths=(8, 16, 32, 64),
                       class_names=("background", "organ", "lesion"), normalization=Normalization(mode="none"),
                       **VARIANTS[variant])


class MniData:
    def __init__(self) -> None:
        image, labels = mni_tissue()
        lo, hi = np.percentile(image, [0.5, 99.5])
        self.image = np.clip((image.astype(np.float32) - lo) / (hi - lo), 0, 1)
        self.labels = labels
        brain = [z for z in range(labels.shape[2]) if labels[:, :, z].any()]
        self.train = [z for z in brain if z < MNI_TRAIN_BELOW]
        self.test = [z for z in brain if z >= MNI_TEST_FROM]

    def batches(self, rng: np.random.Generator, batch: int):
        while True:
            images, targets = [], []
            for _ in range(batch):
                z = int(rng.choice(self.train))
                plane, target = self.image[:, :, z], self.labels[:, :, z]
                corner = [int(rng.integers(n - CROP + 1)) for n in plane.shape]
                window = tuple(slice(c, c + CROP) for c in corner)
                image, label = augment(plane[window], target[window], rng)
                images.append(image[None])
                targets.append(label.astype(np.int64))
            yield np.stack(images), np.stack(targets)

    def test_set(self):
        return (np.moveaxis(self.image[:, :, self.test], 2, 0)[:, None].astype(np.float32),
                np.moveaxis(self.labels[:, :, self.test], 2, 0))


class PhantomData:
    def __init__(self, radius: tuple[float, float]) -> None:
        self.radius = radius
        phantoms = [generate_phantom((64, 64), seed=10**8 + i, lesions=(2, 4), lesion_radius=radius)
                    for i in range(48)]
        self.images = np.stack([self._normalize(p.image) for p in phantoms])[:, None]
        self.labels = np.stack([p.labels for p in phantoms])

    @staticmethod
    def _normalize(image: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(image, [0.5, 99.5])
        return np.clip((image - lo) / (hi - lo), 0, 1).astype(np.float32)

    def batches(self, rng: np.random.Generator, batch: int):
        while True:
            images, targets = [], []
            for _ in range(batch):
                phantom = generate_phantom((64, 64), seed=int(rng.integers(10**8)), lesions=(2, 4),
                                           lesion_radius=self.radius, noise=float(rng.uniform(0.05, 0.25)))
                image, label = augment(self._normalize(phantom.image), phantom.labels, rng)
                images.append(image[None])
                targets.append(label.astype(np.int64))
            yield np.stack(images), np.stack(targets)

    def test_set(self):
        return self.images, self.labels


def predict(model: AttentionUNet, images: np.ndarray) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), 16):
            out.append(model(torch.from_numpy(images[start : start + 16])).argmax(1).numpy())
    return np.concatenate(out)


def scores(model, data, classes) -> dict:
    images, labels = data.test_set()
    result = _dice_iou(predict(model, images), labels, classes)
    return result


def run(data, data_name: str, variant: str, seed: int, steps: int, evaluate_every: int) -> dict:
    seed_everything(seed)
    config = config_for("mni" if data_name == "MNI152 tissue" else "phantom", variant)
    model = AttentionUNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    batches = data.batches(np.random.default_rng(seed), 8)
    curve = []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        model.train()
        images, targets = next(batches)
        loss = masked_loss(model(torch.from_numpy(images)), torch.from_numpy(targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % evaluate_every == 0 or step == steps:
            curve.append((step, key_dice(scores(model, data, config.class_names), data_name)))
    final = scores(model, data, config.class_names)
    return {"data": data_name, "variant": variant, "seed": seed, "steps": steps, "curve": curve,
            "dice": key_dice(final, data_name), "iou": key_iou(final, data_name),
            "train_s": round(time.perf_counter() - started, 1), "model": model}


def key_dice(result: dict, data_name: str) -> float:
    if data_name == "MNI152 tissue":
        return float(result["mean_dice"])
    return float(result["dice"].get("lesion", 0.0))


def key_iou(result: dict, data_name: str) -> float:
    if data_name == "MNI152 tissue":
        return float(np.mean(list(result["iou"].values())))
    return float(result["iou"].get("lesion", 0.0))


def inference_ms(config: ModelConfig) -> float:
    model = AttentionUNet(config).eval()
    x = torch.randn(1, 1, 128, 128)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(20):
            started = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def plot_curves(runs: list[dict], data_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for variant in VARIANTS:
        curves = [r["curve"] for r in runs if r["variant"] == variant and r["data"] == data_name]
        if not curves:
            continue
        steps = [s for s, _ in curves[0]]
        values = np.array([[v for _, v in c] for c in curves])
        axis.plot(steps, values.mean(0), label=variant, linewidth=2 if variant in ("unet", "attention") else 1)
        axis.fill_between(steps, values.min(0), values.max(0), alpha=0.12)
    axis.set_xlabel("training step")
    axis.set_ylabel("test Dice" + (" (mean GM, WM)" if data_name == "MNI152 tissue" else " (lesion)"))
    axis.set_title(f"{data_name}: mean over seeds, band = min-max")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_attention(model: AttentionUNet, image: np.ndarray, label: np.ndarray, title: str, path: Path) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mni-steps", type=int, default=200)
    parser.add_argument("--phantom-steps", type=int, default=300)
    parser.add_argument("--evaluate-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--data", nargs="+", default=["mni", *LESION_SIZES])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    datasets = {}
    if "mni" in args.data:
        datasets["MNI152 tissue"] = (MniData(), args.mni_steps)
    for name, radius in LESION_SIZES.items():
        if name in args.data:
            datasets[name] = (PhantomData(radius), args.phantom_steps)
    runs = []
    for data_name, (data, steps) in datasets.items():
        for variant in args.variants:
            for seed in range(args.seeds):
                result = run(data, data_name, variant, seed, steps, args.evaluate_every)
                print(f"{data_name:<16}{variant:<18}seed {seed}: Dice {result['dice']:.3f} ({result['train_s']} s)",
                      flush=True)
                if variant == "attention" and seed == 0:
                    images, labels = data.test_set()
                    index = len(images) // 2
                    slug = data_name.replace(" ", "_").replace(".", "")
                    plot_attention(result["model"], images[index, 0], labels[index],
                                   f"{data_name}, attention variant, seed 0, test slice {index}",
                                   OUT / f"attention_{slug}.png")
                runs.append({k: v for k, v in result.items() if k != "model"})
        plot_curves(runs, data_name, OUT / f"curves_{data_name.replace(' ', '_').replace('.', '')}.png")

    print()
    print(f"{'data':<16}{'variant':<18}{'Dice mean ± std':>17}{'IoU mean ± std':>17}{'params':>9}{'ms/slice':>10}")
    table = []
    for data_name in datasets:
        for variant in args.variants:
            selected = [r for r in runs if r["data"] == data_name and r["variant"] == variant]
            if not selected:
                continue
            config = config_for("mni" if data_name == "MNI152 tissue" else "phantom", variant)
            dice = np.array([r["dice"] for r in selected])
            iou = np.array([r["iou"] for r in selected])
            row = {"data": data_name, "variant": variant, "seeds": len(selected),
                   "dice_mean": float(dice.mean()), "dice_std": float(dice.std()),
                   "iou_mean": float(iou.mean()), "iou_std": float(iou.std()),
                   "parameters": count_parameters(AttentionUNet(config)), "inference_ms": inference_ms(config)}
            table.append(row)
            print(f"{data_name:<16}{variant:<18}{row['dice_mean']:>9.3f} ± {row['dice_std']:.3f}"
                  f"{row['iou_mean']:>9.3f} ± {row['iou_std']:.3f}{row['parameters']:>9}{row['inference_ms']:>10.1f}")
    (OUT / "study.json").write_text(json.dumps({"table": table, "runs": runs, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
