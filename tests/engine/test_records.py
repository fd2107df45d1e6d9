"""A training run's observer (engine.finetune.TrainingObserver) and its TensorBoard records (engine.records)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tiny_model

from napari_aunet.engine.finetune import FineTuneSettings, TrainingObserver, TrainingPair, fine_tune
from napari_aunet.engine.phantoms import generate_phantom


def _pair(shape=(16, 40, 40), given=(3, 6, 9, 12)) -> TrainingPair:
    phantom = generate_phantom(shape, seed=2, lesions=(1, 2))
    partial = np.zeros_like(phantom.labels)
    partial[list(given)] = phantom.labels[list(given)]
    return TrainingPair(phantom.image.astype(np.float32), partial, axis=0, name="phantom")


class _Recorder(TrainingObserver):
    def __init__(self) -> None:
        self.events = []

    def started(self, start):
        self.events.append(("started", start))

    def stepped(self, record):
        self.events.append(("stepped", record))

    def checked(self, check):
        self.events.append(("checked", check))

    def finished(self, result):
        self.events.append(("finished", result))


def test_the_observer_sees_the_start_every_step_each_check_and_the_end():
    recorder, progress = _Recorder(), []
    settings = FineTuneSettings(steps=4, learning_rate=2e-3, patch_size=32, val_fraction=0.25, seed=0)
    result = fine_tune(tiny_model(2), [_pair()], settings, observer=recorder,
                       progress=lambda *update: progress.append(update))
    kinds = [kind for kind, _ in recorder.events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and kinds.count("stepped") == 4
    start = recorder.events[0][1]
    assert start.val_slices == {0: result.val_slices["phantom"]} and start.before == result.before
    assert start.normalized is not None and start.normalized[0].shape == (16, 40, 40)
    steps = [record for kind, record in recorder.events if kind == "stepped"]
    assert [(r.step, r.total, r.running_loss, r.running_dice) for r in steps] == [
        (step, total, loss, dice) for step, total, loss, dice in progress]
    # 10 warm-up steps, cosine decay over the run: the rate each step was taken with
    expected = [2e-3 * (s + 1) / 10 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert [r.learning_rate for r in steps] == pytest.approx(expected)
    checks = [check for kind, check in recorder.events if kind == "checked"]
    assert [(c.step, round(c.scores["mean_dice"], 4)) for c in checks] == [(s, d) for s, _, d in result.validation]
    assert all(set(c.scores) >= {"dice", "iou", "mean_dice"} for c in checks)
    assert recorder.events[-1][1] is result


def test_records_of_a_3d_model_show_each_level_on_the_fixed_slice(tmp_path):
    """A 3D model has no held-out checks during the run: its attention is shown before and after, from a slab
    around the middle annotated slice when nothing is held out."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    from napari_aunet.engine.records import TensorBoardRecords

    settings = FineTuneSettings(steps=3, patch_size=16, batch_size=2, val_fraction=0.0, seed=0)
    with TensorBoardRecords(tmp_path, every=1) as records:
        result = fine_tune(tiny_model(3), [_pair((16, 20, 18))], settings, observer=records)
    events = event_accumulator.EventAccumulator(
        str(next(tmp_path.glob("events.out.tfevents.*"))),
        size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert not [tag for tag in events.Tags()["scalars"] if tag.startswith("heldout/")]
    assert result.val_slices == {"phantom": []}
    for level in (1, 2):
        shown = events.Images(f"attention/L{level}")
        assert [e.step for e in shown] == [0, 3] and (shown[0].height, shown[0].width) == (20, 18)
    slice_text = events.Tensors("run/slice/text_summary")[0].tensor_proto.string_val[0].decode()
    assert slice_text == "phantom: slice 9 along axis 0 (trained on)"  # the middle of 3, 6, 9, 12


def test_slice_attention_is_at_the_slice_size_between_0_and_1():
    from napari_aunet.engine.records import slice_attention

    volume = np.random.default_rng(0).normal(size=(5, 30, 22)).astype(np.float32)
    maps = slice_attention(tiny_model(2), volume, 2, axis=0)
    assert sorted(maps) == [1, 2]
    assert all(m.shape == (30, 22) and 0 <= m.min() and m.max() <= 1 for m in maps.values())
    assert slice_attention(tiny_model(2, gated_levels=()), volume, 2, axis=0) == {}
