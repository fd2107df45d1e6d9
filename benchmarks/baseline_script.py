"""BASELINE (issue 14): the from-scratch PyTorch script a user would otherwise write for few-slice segmentation.

This is the reference baseline from issue 14, not part of napari-aunet; it imports nothing from the plugin.
It trains a plain 2D U-Net on a handful of fully labelled slices of one volume and scores the other slices.

- Model: plain 2D U-Net, widths 16-32-64-128, two 3x3 conv+BN+ReLU per level, 2x2 max-pool down,
  ConvTranspose2d up, concatenated skips, 1x1 head; no attention.
- Data: intensities clipped to the 0.5-99.5 percentiles of the whole volume and scaled to [0, 1]. Each batch
  holds 4 crops of 96x96, each centred on a random foreground voxel of a random annotated slice plus a random
  jitter of up to +-24 px per axis (zeros where the crop leaves the slice). Random flips, intensity jitter
  (scale 0.9-1.1, shift +-0.1).
- Loss: cross-entropy + soft Dice over the foreground classes (softmax). AdamW, lr 2e-3, fp32, no validation.
- Training runs for a wall-clock budget; at each checkpoint time (seconds of training) a copy of the
  state_dict is taken (the copy's own time is not counted). After training each copy predicts the test
  slices whole (padded to a multiple of 8, argmax) and is scored by Dice per foreground class present in the
  test labels.

    python benchmarks/baseline_script.py --image X.nii.gz --labels Y.nii.gz --axis 2 \
        --train-slices 10,20,30 --test-slices rest --checkpoints 30,60,180 --threads 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CROP, JITTER, BATCH, LR = 96, 24, 4, 2e-3


def block(cin: int, cout: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers += [nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Plain 2D U-Net, widths 16-32-64-128."""

    def __init__(self, n_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.down = nn.ModuleList(block(a, b) for a, b in zip((1, *widths[:-1]), widths, strict=True))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.dec = nn.ModuleList(block(2 * a, a) for a in widths[:-1])
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.dec[i](torch.cat([skips[i], self.up[i](x)], dim=1))
        return self.head(x)


def normalise(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return ((np.clip(image.astype(np.float32), lo, hi) - lo) / max(hi - lo, 1e-8)).astype(np.float32)


def crop(arr: np.ndarray, cy: int, cx: int) -> np.ndarray:
    """CROPxCROP window centred on (cy, cx), zero-padded where it leaves the slice."""
    out = np.zeros((CROP, CROP), dtype=arr.dtype)
    y0, x0 = cy - CROP // 2, cx - CROP // 2
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + CROP, arr.shape[0]), min(x0 + CROP, arr.shape[1])
    if ye > ys and xe > xs:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = arr[ys:ye, xs:xe]
    return out


def loss_fn(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    prob = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).float()[:, 1:]
    inter, denom = (prob * onehot).sum((0, 2, 3)), (prob + onehot).sum((0, 2, 3))
    return F.cross_entropy(logits, target) + (1 - (2 * inter + 1) / (denom + 1)).mean()


@torch.no_grad()
def predict(model: nn.Module, img2d: np.ndarray) -> np.ndarray:
    h, w = img2d.shape
    x = np.pad(img2d, ((0, -h % 8), (0, -w % 8)))
    return model(torch.from_numpy(x)[None, None]).argmax(1)[0, :h, :w].numpy()


def run_baseline(
    image: np.ndarray,
    labels: np.ndarray,
    axis: int,
    train_slices: list[int],
    test_slices: list[int],
    checkpoints: tuple[float, ...] = (30, 60, 180),
    threads: int = 2,
    seed: int = 0,
) -> list[dict]:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vol, lab = normalise(image), labels.astype(np.int64)
    n_classes = int(lab.max()) + 1
    imgs = [np.take(vol, s, axis=axis) for s in train_slices]
    labs = [np.take(lab, s, axis=axis) for s in train_slices]
    fg = [np.argwhere(lb > 0) for lb in labs]
    model = UNet(n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(BATCH):
            k = int(rng.integers(len(imgs)))
            pts = fg[k] if len(fg[k]) else np.argwhere(np.ones_like(labs[k], dtype=bool))
            cy, cx = pts[rng.integers(len(pts))] + rng.integers(-JITTER, JITTER + 1, size=2)
            x, y = crop(imgs[k], cy, cx), crop(labs[k], cy, cx)
            for ax in (0, 1):
                if rng.random() < 0.5:
                    x, y = np.flip(x, ax), np.flip(y, ax)
            xs.append(x * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1))
            ys.append(y)
        return torch.from_numpy(np.stack(xs)[:, None].astype(np.float32)), torch.from_numpy(np.stack(ys))

    snaps: list[tuple[float, int, dict]] = []
    pending, steps, trained = sorted(checkpoints), 0, 0.0
    model.train()
    while pending:
        t0 = time.perf_counter()
        x, y = batch()
        loss = loss_fn(model(x), y, n_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        trained += time.perf_counter() - t0
        while pending and trained >= pending[0]:
            snaps.append((pending.pop(0), steps, copy.deepcopy(model.state_dict())))

    results = []
    gt = np.stack([np.take(lab, s, axis=axis) for s in test_slices])
    classes = [int(c) for c in np.unique(gt) if c > 0]
    for t, n, state in snaps:
        model.load_state_dict(state)
        model.eval()
        pred = np.stack([predict(model, np.take(vol, s, axis=axis)) for s in test_slices])
        dice = {}
        for c in classes:
            p, g = pred == c, gt == c
            dice[c] = float(2 * (p & g).sum() / max(p.sum() + g.sum(), 1))
        mean = float(np.mean(list(dice.values()))) if dice else float("nan")
        results.append({"seconds": t, "steps": n, "dice": dice, "mean_dice": mean})
    return results


def main() -> None:
    import nibabel as nib

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--axis", type=int, default=2)
    ap.add_argument("--train-slices", required=True, help="comma-separated slice indices")
    ap.add_argument("--test-slices", default="rest", help="comma-separated slice indices, or 'rest'")
    ap.add_argument("--checkpoints", default="30,60,180", help="comma-separated seconds of training")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args()

    image = np.asarray(nib.load(a.image).dataobj)
    labels = np.asarray(nib.load(a.labels).dataobj)
    train = [int(s) for s in a.train_slices.split(",")]
    if a.test_slices == "rest":
        test = [s for s in range(image.shape[a.axis]) if s not in set(train)]
    else:
        test = [int(s) for s in a.test_slices.split(",")]
    cps = tuple(float(s) for s in a.checkpoints.split(","))
    res = run_baseline(image, labels, a.axis, train, test, cps, a.threads, a.seed)

    classes = sorted({c for r in res for c in r["dice"]})
    print(
        f"{'seconds':>8} {'steps':>7} {'steps/s':>8} "
        + " ".join(f"{'dice' + str(c):>7}" for c in classes)
        + "    mean"
    )
    for r in res:
        cols = " ".join(f"{r['dice'].get(c, float('nan')):7.3f}" for c in classes)
        print(
            f"{r['seconds']:8.0f} {r['steps']:7d} {r['steps'] / r['seconds']:8.2f} {cols} {r['mean_dice']:7.3f}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"args": vars(a), "train_slices": train, "test_slices": test, "results": res}, f, indent=2
            )


if __name__ == "__main__":
    main()
