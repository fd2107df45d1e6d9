"""Click-guided Attention U-Net (v2): the image plus positive and negative click maps as input channels.

Input channels: 0 the normalised image window, 1 positive clicks, 2 negative clicks, each click a Gaussian
blob (sigma ``CLICK_SIGMA`` pixels, peak 1). Output: background / object. Trained with simulated clicks as
DeepEdit and RITM do: the first click at the deepest point of the object, later clicks at the deepest
point of the largest error region (positive where the object was missed, negative where it overflowed),
with the model itself in the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from .config import ModelConfig, Normalization
from .model import AttentionUNet

CLICK_SIGMA = 3.0
CLICK_WINDOW = 128  # pixels a side of the window the model sees around the clicks
CLICK_CHANNELS = 3


def click_config(widths: tuple[int, ...] = (16, 32, 64, 128)) -> ModelConfig:
    return ModelConfig(
        spatial_dims=2, in_channels=CLICK_CHANNELS, out_channels=2, widths=widths, gated_levels=(1, 2, 3),
        class_names=("background", "object"), normalization=Normalization(mode="percentile", lower=0.5, upper=99.5),
        spacing=None,
    )


def is_click_model(config: ModelConfig) -> bool:
    return config.in_channels == CLICK_CHANNELS and config.out_channels == 2 and config.spatial_dims == 2


def click_maps(shape: tuple[int, int], positives, negatives, sigma: float = CLICK_SIGMA) -> np.ndarray:
    """(2, H, W) float32: Gaussian blobs at the positive and the negative clicks ((row, col) pixels)."""
    rows = np.arange(shape[0], dtype=np.float32)[:, None]
    cols = np.arange(shape[1], dtype=np.float32)[None, :]
    maps = np.zeros((2, *shape), np.float32)
    for channel, points in enumerate((positives, negatives)):
        for row, col in points:
            blob = np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma**2))
            np.maximum(maps[channel], blob, out=maps[channel])
    return maps


def _erode(region: np.ndarray) -> np.ndarray:
    out = region.copy()
    out[1:] &= region[:-1]
    out[:-1] &= region[1:]
    out[:, 1:] &= region[:, :-1]
    out[:, :-1] &= region[:, 1:]
    out[0, :] = out[-1, :] = out[:, 0] = out[:, -1] = False
    return out


def deepest_point(region: np.ndarray, rng: np.random.Generator | None = None) -> tuple[int, int] | None:
    """A pixel of ``region`` (2D bool) farthest from its border (by repeated erosion); None if empty."""
    if not region.any():
        return None
    current = region
    while True:
        eroded = _erode(current)
        if not eroded.any():
            break
        current = eroded
    candidates = np.argwhere(current)
    index = int(rng.integers(len(candidates))) if rng is not None else len(candidates) // 2
    return int(candidates[index][0]), int(candidates[index][1])


def next_click(prediction: np.ndarray, target: np.ndarray, rng: np.random.Generator | None = None):
    """The corrective click a careful user makes: ((row, col), positive) or None when nothing is wrong."""
    missed, extra = target & ~prediction, prediction & ~target
    if not missed.any() and not extra.any():
        return None
    positive = missed.sum() >= extra.sum()
    point = deepest_point(missed if positive else extra, rng)
    return point, bool(positive)


def random_component(mask: np.ndarray, rng: np.random.Generator, minimum: int = 30) -> np.ndarray | None:
    """One random connected component of a 2D bool mask with at least ``minimum`` pixels, or None."""
    from .clicks import flood_fill

    remaining = mask.copy()
    for _ in range(6):
        points = np.argwhere(remaining)
        if not len(points):
            return None
        seed = tuple(int(v) for v in points[rng.integers(len(points))])
        component = flood_fill(remaining, seed)
        if component.sum() >= minimum:
            return component
        remaining &= ~component
    return None


def object_masks(labels: np.ndarray, minimum: int = 5) -> list[np.ndarray]:
    """Every connected region of every non-zero id on a 2D label slice, as bool masks (``minimum`` pixels)."""
    from .clicks import flood_fill

    objects = []
    for value in np.unique(labels[labels != 0]):
        remaining = labels == value
        while remaining.any():
            component = flood_fill(remaining, tuple(int(v) for v in np.argwhere(remaining)[0]))
            if component.sum() >= minimum:
                objects.append(component)
            remaining &= ~component
    return objects


def window_around(plane: np.ndarray, target: np.ndarray, rng: np.random.Generator, size: int):
    """A ``size`` window of ``plane``/``target`` holding the object's deepest point, jittered; zero-padded."""
    centre = deepest_point(target, rng)
    pad = size
    plane = np.pad(plane, pad)
    target = np.pad(target, pad)
    corner = [c + pad - size // 2 + int(rng.integers(-size // 4, size // 4 + 1)) for c in centre]
    window = tuple(slice(c, c + size) for c in corner)
    return plane[window], target[window]


def predict_object(model: AttentionUNet, window: np.ndarray, positives, negatives,
                   return_attention: bool = False):
    """P(object) on a normalised 2D window given the clicks (window pixel coordinates).

    With ``return_attention`` also each gate's map ``{level: (ceil(H/f), ceil(W/f)) float32}``, f = 2**(level-1).
    """
    inputs = np.concatenate([window[None], click_maps(window.shape, positives, negatives)])[None]
    device = next(model.parameters()).device
    with torch.inference_mode():
        output = model(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(device),
                       return_attention=return_attention)
        logits, attention = output if return_attention else (output, {})
        probability = torch.softmax(logits.float(), dim=1)[0, 1].cpu().numpy()
    if not return_attention:
        return probability
    return probability, {level: psi[0, 0].float().cpu().numpy() for level, psi in attention.items()}


def simulated_click_batches(
    samples: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
    model: AttentionUNet,
    batch_size: int,
    seed: int,
    max_extra_clicks: int = 3,
    single_click_share: float = 0.5,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (image + click maps, object target) with clicks simulated against the model being trained.

    ``samples(rng)`` returns one (normalised 2D window, bool object mask) pair. A share ``single_click_share``
    of the samples carries the first click only (the click a user expects the most from); the others get 1 to
    ``max_extra_clicks`` corrective clicks.
    """
    rng = np.random.default_rng(seed)
    while True:
        inputs, targets = [], []
        for _ in range(batch_size):
            window, target = samples(rng)
            positives, negatives = [deepest_point(target, rng)], []
            extra = 0 if rng.random() < single_click_share else int(rng.integers(1, max_extra_clicks + 1))
            for _ in range(extra):
                was_training = model.training
                model.eval()
                prediction = predict_object(model, window, positives, negatives) > 0.5
                model.train(was_training)
                click = next_click(prediction, target, rng)
                if click is None:
                    break
                (positives if click[1] else negatives).append(click[0])
            inputs.append(np.concatenate([window[None], click_maps(window.shape, positives, negatives)]))
            targets.append(target.astype(np.int64))
        yield np.stack(inputs).astype(np.float32), np.stack(targets)
