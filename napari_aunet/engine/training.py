"""Training: masked Dice + cross-entropy loss, augmentation and a step loop.

Unannotated voxels carry :data:`IGNORE` in the target and contribute nothing to the loss, so partial
annotations never teach background where nobody looked.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig, Normalization
from .inference import CancelFlag, is_cancelled
from .intensity import normalize
from .model import AttentionUNet
from .phantoms import PHANTOM_CLASSES, generate_phantom

IGNORE = 255


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def masked_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over annotated voxels (``target != IGNORE``).

    ``logits`` ``(N, C, *spatial)``, ``target`` ``(N, *spatial)`` int64. Dice is summed over the batch
    and averaged over the classes present in the annotated target; absent classes are skipped. A batch
    with no annotated voxel gives a zero loss that still carries a gradient path (never NaN).
    """
    annotated = target != IGNORE
    if not annotated.any():
        return logits.sum() * 0.0
    cross_entropy = F.cross_entropy(logits.float(), target, ignore_index=IGNORE)
    probabilities = torch.softmax(logits.float(), dim=1)
    classes = logits.shape[1]
    safe_target = torch.where(annotated, target, torch.zeros_like(target))
    one_hot = F.one_hot(safe_target, classes).movedim(-1, 1).float()
    mask = annotated.unsqueeze(1).float()
    reduce = [0, *range(2, logits.ndim)]
    intersection = (probabilities * one_hot * mask).sum(reduce)
    predicted = (probabilities * mask).sum(reduce)
    reference = (one_hot * mask).sum(reduce)
    present = reference > 0
    dice = (2 * intersection + 1e-5) / (predicted + reference + 1e-5)
    return cross_entropy + (1 - dice[present]).mean()


def augment(image: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and in-plane 90° rotations (last two axes), small intensity scale/shift on the image."""
    for axis in range(image.ndim):
        if rng.random() < 0.5:
            image, target = np.flip(image, axis), np.flip(target, axis)
    turns = int(rng.integers(4))
    if turns and image.shape[-1] == image.shape[-2]:
        image, target = np.rot90(image, turns, axes=(-2, -1)), np.rot90(target, turns, axes=(-2, -1))
    image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(target)


@dataclass
class TrainingHistory:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"steps": self.steps, "loss": self.loss, "seconds": round(self.seconds, 2)}


Batch = tuple[np.ndarray, np.ndarray]  # images (N, 1, *spatial) float32, targets (N, *spatial) int64


def train(
    model: AttentionUNet,
    batches: Iterator[Batch],
    *,
    steps: int,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
    cancel: CancelFlag = None,
    log_every: int = 10,
) -> TrainingHistory:
    """Run ``steps`` AdamW steps with a cosine learning-rate decay on batches from ``batches``."""
    device = torch.device(device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=max(steps, 1), pct_start=0.1
    )
    history = TrainingHistory()
    started = time.perf_counter()
    running = None
    for step in range(1, steps + 1):
        if is_cancelled(cancel):
            break
        images, targets = next(batches)
        images_t = torch.from_numpy(images).to(device)
        targets_t = torch.from_numpy(targets).to(device)
        loss = masked_loss(model(images_t), targets_t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        running = value if running is None else 0.9 * running + 0.1 * value
        if step % log_every == 0 or step == steps:
            history.steps.append(step)
            history.loss.append(round(running, 5))
        if progress is not None:
            progress(step, steps, value)
    history.seconds = time.perf_counter() - started
    model.eval()
    return history


PHANTOM_CONFIG = ModelConfig(
    spatial_dims=2,
    in_channels=1,
    out_channels=3,
    widths=(8, 16, 32, 64),
    gated_levels=(1, 2, 3),
    class_names=PHANTOM_CLASSES,
    normalization=Normalization(mode="percentile", lower=0.5, upper=99.5),
    spacing=None,
)


def phantom_batches(
    config: ModelConfig, batch_size: int, size: int, seed: int
) -> Iterator[Batch]:
    """Endless batches of freshly generated phantoms (2D slices, or 3D cubes for a 3D config)."""
    rng = np.random.default_rng(seed)
    shape = (size,) * config.spatial_dims
    while True:
        images, targets = [], []
        for _ in range(batch_size):
            phantom = generate_phantom(
                shape,
                seed=int(rng.integers(2**31)),
                lesion_radius=(1.5, max(2.0, size / 12)),
                noise=float(rng.uniform(0.05, 0.25)),
            )
            image, target = augment(normalize(phantom.image, config.normalization), phantom.labels, rng)
            images.append(image[None])
            targets.append(target.astype(np.int64))
        yield np.stack(images), np.stack(targets)


def train_phantom_model(
    config: ModelConfig = PHANTOM_CONFIG,
    *,
    steps: int = 600,
    batch_size: int = 16,
    size: int = 64,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[AttentionUNet, TrainingHistory]:
    """Train a model from scratch on generated phantoms; reproducible on CPU for a fixed seed."""
    seed_everything(seed)
    model = AttentionUNet(config)
    history = train(
        model, phantom_batches(config, batch_size, size, seed), steps=steps, learning_rate=3e-3, progress=progress
    )
    return model, history
