"""Experiment records of a training run as TensorBoard event files (``aunet train --log-dir DIR``).

:class:`TensorBoardRecords` is a :class:`~napari_aunet.engine.finetune.TrainingObserver`: it writes what the
training loop reports, next to the checkpoint's own history. Tags:

- ``train/loss``, ``train/dice``, ``train/lr``: every ``every`` steps and at the last step, the running loss and
  running Dice on the training batches (the smoothed values the checkpoint's history holds) and the learning rate
  the step was taken with;
- ``heldout/dice/<class>``, ``heldout/iou/<class>``, ``heldout/mean_dice``: at each held-out check during the run
  (2D segmentation models; ten per run by default);
- ``evaluation/dice/<class>``, ``evaluation/iou/<class>``, ``evaluation/mean_dice``: the held-out scores the
  report prints, before training (step 0) and of the weights kept (the last step);
- ``attention/L<k>``: each gated level's attention map (0 to 1, shown at the slice's size) on one fixed slice
  (the first held-out slice, else the middle annotated one): before training, at each held-out check, and at the
  end of a run without checks;
- ``slice/scan``, ``slice/labels``: that slice and its labels, once; ``run/slice`` and ``run/settings`` (text)
  say which slice it is and how the run trained.

TensorBoard is optional (``pip install 'napari-aunet[tensorboard]'``); :func:`require_tensorboard` says whether
it is there before a run starts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from .finetune import FineTuneResult, HeldOutCheck, RunStart, StepRecord, TrainingObserver

INSTALL_HINT = "pip install 'napari-aunet[tensorboard]'"

# label colours of the labels image (background black), repeated past the last
_PALETTE = np.array([(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                     (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)], dtype=np.float32) / 255


class RecordsUnavailable(ImportError):
    """TensorBoard is not installed."""


def require_tensorboard():
    """``torch.utils.tensorboard.SummaryWriter``, or :class:`RecordsUnavailable` when TensorBoard is missing."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard may already be imported without it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise RecordsUnavailable(f"TensorBoard is not installed: {INSTALL_HINT}") from error
    return SummaryWriter


def _tag(name: str) -> str:
    """A class name as a tag part (TensorBoard takes letters, digits, ``_ - . /``)."""
    return re.sub(r"[^-\w.]", "_", name)


def _fixed_slice(start: RunStart) -> tuple[int, int, bool] | None:
    """(pair index, slice, held out?): the first held-out slice, else the middle annotated slice of the first pair
    trained on; None when there is none."""
    for index in range(len(start.pairs)):
        if start.val_slices.get(index):
            return index, start.val_slices[index][0], True
    for index in range(len(start.pairs)):
        slices = sorted(start.train_slices.get(index, []))
        if slices:
            return index, slices[len(slices) // 2], False
    return None


def _plane(volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    return volume if volume.ndim == 2 else np.take(volume, index, axis=axis)


def _scaled(plane: np.ndarray) -> np.ndarray:
    """Intensities to 0-1 between the plane's 1st and 99th percentiles."""
    low, high = np.percentile(plane, (1, 99))
    if high <= low:
        high = low + 1.0
    return np.clip((plane - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _coloured(labels: np.ndarray) -> np.ndarray:
    """An (H, W, 3) image of a labels plane, 0-1."""
    values = np.asarray(labels, dtype=np.int64)
    return _PALETTE[np.where(values > 0, (values - 1) % (len(_PALETTE) - 1) + 1, 0)]


def _at_size(coarse: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """A level's map (each cell ``factor`` voxels) shown on the slice's grid, cell by cell."""
    rows = np.minimum(np.arange(shape[0]) // factor, coarse.shape[0] - 1)
    columns = np.minimum(np.arange(shape[1]) // factor, coarse.shape[1] - 1)
    return coarse[np.ix_(rows, columns)]


def slice_attention(model, volume: np.ndarray, index: int, axis: int, depth: int = 16) -> dict[int, np.ndarray]:
    """Level -> attention map (0-1, the plane's shape) of ``model`` on slice ``index`` of the normalised
    ``volume`` (a 2D image: the image itself). A 3D model sees a slab of ``depth`` slices around it."""
    if not model.config.gated_levels or model.config.in_channels != 1:
        return {}
    plane = _plane(volume, index, axis)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if model.config.spatial_dims == 2 or volume.ndim == 2:
                x = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None].to(device)
                _, attention = model(x, return_attention=True)
                maps = {level: psi[0, 0].float().cpu().numpy() for level, psi in attention.items()}
            else:
                size = volume.shape[axis]
                first = min(max(index - depth // 2, 0), max(size - depth, 0))
                slab = np.take(volume, range(first, min(first + depth, size)), axis=axis)
                x = torch.from_numpy(np.ascontiguousarray(slab, dtype=np.float32))[None, None].to(device)
                _, attention = model(x, return_attention=True)
                maps = {}
                for level, psi in attention.items():
                    cells = psi[0, 0].float().cpu().numpy()
                    at = min((index - first) // 2 ** (level - 1), cells.shape[axis] - 1)
                    maps[level] = np.take(cells, at, axis=axis)
    finally:
        model.train(was_training)
    return {level: np.clip(_at_size(m, plane.shape, 2 ** (level - 1)), 0.0, 1.0) for level, m in maps.items()}


class TensorBoardRecords(TrainingObserver):
    """Writes a run's records into ``log_dir`` (TensorBoard event files); ``every``: scalars every N steps."""

    def __init__(self, log_dir: str | Path, every: int = 10) -> None:
        if every < 1:
            raise ValueError(f"records are written every N >= 1 steps, got {every}")
        writer_class = require_tensorboard()
        self.log_dir, self.every = Path(log_dir), every
        self.writer = writer_class(log_dir=str(self.log_dir))
        self._last: StepRecord | None = None
        self._written_step = 0
        self._checks = 0
        self._slice: tuple[np.ndarray, int, int] | None = None  # (normalised volume, slice, axis)

    # -- TrainingObserver ------------------------------------------------------------------------------------

    def started(self, start: RunStart) -> None:
        settings = {k: v for k, v in start.settings.__dict__.items()}
        self.writer.add_text("run/settings", "```\n" + json.dumps(settings, indent=2, default=str) + "\n```", 0)
        self._scores("evaluation", start.before, 0)
        chosen = _fixed_slice(start)
        if chosen is None or start.normalized is None:
            return
        index, s, held_out = chosen
        pair = start.pairs[index]
        axis = pair.axis if pair.image.ndim == 3 else 0
        self._slice = (start.normalized[index], s, axis)
        where = f"slice {s} along axis {axis}" if pair.image.ndim == 3 else "the image"
        self.writer.add_text("run/slice", f"{pair.name or f'image {index}'}: {where} "
                             f"({'held out' if held_out else 'trained on'})", 0)
        self.writer.add_image("slice/scan", _scaled(_plane(start.normalized[index], s, axis)), 0, dataformats="HW")
        self.writer.add_image("slice/labels", _coloured(_plane(pair.labels, s, axis)), 0, dataformats="HWC")
        self._attention(start.model, 0)

    def stepped(self, record: StepRecord) -> None:
        self._last = record
        if record.step % self.every == 0:
            self._step_scalars(record)

    def checked(self, check: HeldOutCheck) -> None:
        self._checks += 1
        self._scores("heldout", check.scores, check.step)
        self._attention(check.model, check.step)

    def finished(self, result: FineTuneResult) -> None:
        if self._last is not None and self._written_step != self._last.step:
            self._step_scalars(self._last)
        if not result.cancelled:
            self._scores("evaluation", result.after, result.steps)
            if not self._checks and result.steps:
                self._attention(result.model, result.steps)
        self.writer.flush()

    # -- writing ---------------------------------------------------------------------------------------------

    def _step_scalars(self, record: StepRecord) -> None:
        self.writer.add_scalar("train/loss", record.running_loss, record.step)
        if record.running_dice == record.running_dice:  # NaN until a class was seen
            self.writer.add_scalar("train/dice", record.running_dice, record.step)
        self.writer.add_scalar("train/lr", record.learning_rate, record.step)
        self._written_step = record.step

    def _scores(self, prefix: str, scores: dict, step: int) -> None:
        for kind in ("dice", "iou"):
            for name, value in (scores or {}).get(kind, {}).items():
                if value == value:
                    self.writer.add_scalar(f"{prefix}/{kind}/{_tag(name)}", value, step)
        mean = (scores or {}).get("mean_dice", float("nan"))
        if mean == mean:
            self.writer.add_scalar(f"{prefix}/mean_dice", mean, step)

    def _attention(self, model, step: int) -> None:
        if self._slice is None:
            return
        volume, index, axis = self._slice
        for level, image in slice_attention(model, volume, index, axis).items():
            self.writer.add_image(f"attention/L{level}", image, step, dataformats="HW")

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardRecords:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
