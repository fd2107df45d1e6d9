"""Click-guided Attention U-Net: the image plus positive and negative click maps (and a box) as input channels.

Input channels: 0 the normalised image window, 1 positive clicks, 2 negative clicks, each click a Gaussian
blob (sigma ``CLICK_SIGMA`` pixels, peak 1), and in models with ``BOX_CHANNELS`` inputs 3 the box prompt (1 inside
the rectangle the user drew, 0 elsewhere; all 0 without a box), and in models with ``MASK_CHANNELS`` inputs 4 the
previous mask (the object as it stood before the click, 0 for a first prompt), so that a correction edits the
answer the user sees instead of starting over (RITM's design). Output: background / object. Trained with
simulated clicks as DeepEdit and RITM do: the first click at the deepest point of the object (or a box around it),
later clicks at the deepest point of the largest error region (positive where the object was missed, negative
where it overflowed), with the model itself in the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from scipy import ndimage

from .config import ModelConfig, Normalization
from .model import AttentionUNet

CLICK_SIGMA = 3.0
CLICK_WINDOW = 128  # pixels a side of the window the model sees around the clicks
CLICK_CHANNELS = 3  # image, positive clicks, negative clicks
BOX_CHANNELS = 4  # … and the box prompt
MASK_CHANNELS = 5  # … and the previous mask


def click_config(widths: tuple[int, ...] = (16, 32, 64, 128), box: bool = True, previous: bool = True) -> ModelConfig:
    return ModelConfig(
        spatial_dims=2, in_channels=(MASK_CHANNELS if previous else BOX_CHANNELS) if box else CLICK_CHANNELS, out_channels=2, widths=widths,
        gated_levels=(1, 2, 3), class_names=("background", "object"),
        normalization=Normalization(mode="percentile", lower=0.5, upper=99.5), spacing=None,
    )


def is_click_model(config: ModelConfig) -> bool:
    return (config.in_channels in (CLICK_CHANNELS, BOX_CHANNELS, MASK_CHANNELS) and config.out_channels == 2
            and config.spatial_dims == 2)


def takes_boxes(config: ModelConfig) -> bool:
    return is_click_model(config) and config.in_channels >= BOX_CHANNELS


def takes_previous(config: ModelConfig) -> bool:
    """Whether the click model sees the object's previous mask (corrections edit it)."""
    return is_click_model(config) and config.in_channels == MASK_CHANNELS


def box_map(shape: tuple[int, int], box: tuple[int, int, int, int] | None) -> np.ndarray:
    """(H, W) float32: 1 inside ``box`` = (row0, col0, row1, col1), corners included, clipped; all 0 for None."""
    plane = np.zeros(shape, np.float32)
    if box is not None:
        r0, c0, r1, c1 = box
        plane[max(0, min(r0, r1)) : max(0, max(r0, r1) + 1), max(0, min(c0, c1)) : max(0, max(c0, c1) + 1)] = 1.0
    return plane


def click_inputs(window: np.ndarray, positives, negatives, box=None, channels: int = MASK_CHANNELS,
                 previous: np.ndarray | None = None) -> np.ndarray:
    """(channels, H, W) float32 model input: the window, the click maps, (4+ channels) the box map and (5 channels)
    the previous mask (``previous``, bool or float in [0, 1]; all 0 when None). A model without the channel
    ignores ``previous``."""
    planes = [window[None].astype(np.float32), click_maps(window.shape, positives, negatives)]
    if channels >= BOX_CHANNELS:
        planes.append(box_map(window.shape, box)[None])
    elif box is not None:
        raise ValueError("this click model takes no box prompts")
    if channels == MASK_CHANNELS:
        planes.append(np.zeros((1, *window.shape), np.float32) if previous is None
                      else np.asarray(previous, np.float32)[None])
    return np.concatenate(planes)


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


def deepest_point(region: np.ndarray, rng: np.random.Generator | None = None) -> tuple[int, int] | None:
    """A pixel of ``region`` (2D bool) farthest from its border (city-block distance, outside the array counting as
    border; ties: the middle one, or a random one with ``rng``); None if empty."""
    if not region.any():
        return None
    depth = ndimage.distance_transform_cdt(np.pad(region, 1), metric="taxicab")[1:-1, 1:-1]
    candidates = np.argwhere(depth == depth.max())
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
                   return_attention: bool = False, box=None, previous: np.ndarray | None = None):
    """P(object) on a normalised 2D window given the clicks and optionally a box (window pixel coordinates) and the
    object's previous mask on the window.

    With ``return_attention`` also each gate's map ``{level: (ceil(H/f), ceil(W/f)) float32}``, f = 2**(level-1).
    """
    inputs = click_inputs(window, positives, negatives, box, model.config.in_channels, previous)[None]
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
    box_share: float = 0.0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (image + click maps [+ box map], object target) with clicks simulated against the model being
    trained.

    ``samples(rng)`` returns one (normalised 2D window, bool object mask) pair. A share ``single_click_share``
    of the samples carries the first prompt only (the one a user expects the most from); the others get 1 to
    ``max_extra_clicks`` corrective clicks. For a model that takes boxes, a share ``box_share`` of the samples is
    prompted with a box around the object (each side off by up to 10 % of the object's extent, as a hand drawn
    one), half of them without a first click. A model that takes the previous mask gets, with each corrective
    click, its own answer to the prompts before it (empty for the first prompt).
    """
    rng = np.random.default_rng(seed)
    channels = model.config.in_channels
    while True:
        inputs, targets = [], []
        for _ in range(batch_size):
            window, target = samples(rng)
            box = None
            if channels >= BOX_CHANNELS and rng.random() < box_share:
                box = jittered_box(target, rng)
            positives = [] if box is not None and rng.random() < 0.5 else [deepest_point(target, rng)]
            negatives: list = []
            previous = None
            extra = 0 if rng.random() < single_click_share else int(rng.integers(1, max_extra_clicks + 1))
            for _ in range(extra):
                was_training = model.training
                model.eval()
                prediction = predict_object(model, window, positives, negatives, box=box, previous=previous) > 0.5
                model.train(was_training)
                click = next_click(prediction, target, rng)
                if click is None:
                    break
                (positives if click[1] else negatives).append(click[0])
                previous = prediction
            inputs.append(click_inputs(window, positives, negatives, box, channels, previous))
            targets.append(target.astype(np.int64))
        yield np.stack(inputs).astype(np.float32), np.stack(targets)


def with_previous_mask(model: AttentionUNet) -> AttentionUNet:
    """A copy of a 4-channel click model (image, clicks, box) that also takes the previous mask: the new channel's
    input weights start at 0, so it answers exactly as ``model`` until trained."""
    if takes_previous(model.config) or not takes_boxes(model.config):
        raise ValueError("only a click model with a box input and no previous-mask input can be extended")
    from dataclasses import replace

    wider = AttentionUNet(replace(model.config, in_channels=MASK_CHANNELS))
    state = wider.state_dict()
    for key, value in model.state_dict().items():
        if state[key].shape != value.shape:  # the first convolution: (out, 4, k, k) -> (out, 5, k, k)
            value = torch.cat([value, torch.zeros_like(value[:, :1])], dim=1)
        state[key] = value
    wider.load_state_dict(state)
    return wider


def jittered_box(target: np.ndarray, rng: np.random.Generator, jitter: float = 0.1) -> tuple[int, int, int, int]:
    """The bounding box of ``target`` with each side moved by up to ``jitter`` of the object's extent (>= 1 px)."""
    rows, cols = np.nonzero(target)
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    dr, dc = max(1, int(jitter * (r1 - r0 + 1))), max(1, int(jitter * (c1 - c0 + 1)))
    h, w = target.shape
    return (int(np.clip(r0 + rng.integers(-dr, dr + 1), 0, h - 1)), int(np.clip(c0 + rng.integers(-dc, dc + 1), 0, w - 1)),
            int(np.clip(r1 + rng.integers(-dr, dr + 1), 0, h - 1)), int(np.clip(c1 + rng.integers(-dc, dc + 1), 0, w - 1)))
