"""Fine-tune widget: correct labels with napari's brush, train on the corrected slices, compare, keep or revert.

A slice counts as annotated when the user painted or erased on it (the Labels layer's paint events) or
marked it reviewed — not because Segment filled it, so the model never retrains on its own output.
Starting from a click-guided model, the corrected objects are trained on with simulated clicks and the new
model goes to the Click widget.
"""

from __future__ import annotations

import math
import time
from datetime import datetime

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
    Table,
    create_widget,
)
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QPointF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

from ._fit import ScrollingContainer
from ._layers import layer_class_names
from ._orientation import file_order
from ._segment_widget import PLANES, VIEW_PLANE, chosen_path, image_source, slicing_display_axis
from ._state import state_for
from .engine.bundled import ALIASES, BUNDLED_MODELS
from .engine.checkpoint import CheckpointError, save_checkpoint
from .engine.clickmodel import is_click_model
from .engine.finetune import FineTuneSettings, TrainingPair, fresh_checkpoint, iter_fine_tune
from .engine.heads import class_names_for_labels
from .engine.interpolate import interpolate_between_slices

SCRATCH = "none (from scratch)"
USE_TEXT = "Use the new model"
USE_WORSE_TEXT = "Use it anyway (worse on held-out slices)"


class CurvePlot(QWidget):
    """A small live plot of the loss (orange) and the running Dice (blue) against steps; no extra dependency."""

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(110)
        self.loss: list[float] = []
        self.dice: list[float] = []

    def add(self, loss: float, dice: float) -> None:
        self.loss.append(loss)
        self.dice.append(dice)
        self.update()

    def clear(self) -> None:
        self.loss, self.dice = [], []
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        width, height = self.width(), self.height()
        painter.fillRect(0, 0, width, height, QColor(38, 41, 48))
        painter.setPen(QColor(200, 200, 200))
        painter.drawText(6, 14, "loss")
        painter.setPen(QColor(90, 160, 255))
        painter.drawText(46, 14, "Dice")
        for values, colour in ((self.loss, QColor(255, 150, 60)), (self.dice, QColor(90, 160, 255))):
            finite = [v for v in values if not math.isnan(v)]
            if len(finite) < 2:
                continue
            top = max(max(finite), 1.0)
            points = [
                QPointF(4 + (width - 8) * i / (len(values) - 1), height - 4 - (height - 22) * v / top)
                for i, v in enumerate(values) if not math.isnan(v)
            ]
            painter.setPen(QPen(colour, 1.5, Qt.SolidLine))
            painter.drawPolyline(QPolygonF(points))
        painter.end()


@thread_worker(ignore_errors=True)
def _fine_tune_in_worker(model, pairs, settings, class_names=None):
    result = yield from iter_fine_tune(model, pairs, settings, device=str(_training_device()),
                                       class_names=class_names)
    return result


def _training_device():
    from .engine.inference import resolve_device

    return resolve_device("auto")


class FineTuneWidget(ScrollingContainer):
    """Train the current model on the corrected slices of a Labels layer."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self._state = state_for(napari_viewer)
        self._worker = None
        self._progress = None
        self._previous_model: str | None = None
        self._result = None
        self._worse = False  # the last result scores below its starting model on the held-out slices
        self._settings, self._started = None, 0.0
        self._image = create_widget(label="image", annotation=Image)
        self._labels_layer = create_widget(label="corrected labels", annotation=Labels)
        self._model = ComboBox(label="start from", choices=self._model_choices)
        self._plane = ComboBox(label="slices", choices=[VIEW_PLANE, *PLANES], value=VIEW_PLANE)
        self._only_annotated = CheckBox(
            text="only slices I painted or marked reviewed", value=True,
            tooltip="Off: every slice holding any label counts (including what Segment filled in).",
        )
        self._review = PushButton(text="Mark current slice reviewed")
        self._fill = PushButton(
            text="Fill between annotated slices",
            tooltip="Interpolate each label between consecutive annotated slices (empty voxels only; Ctrl+Z undoes)",
        )
        self._annotated = Label(label="annotated")
        self._steps = SpinBox(label="steps (0 = no limit)", value=0, min=0, max=1_000_000)
        self._budget = SpinBox(label="time budget (s, 0 = none)", value=60, min=0, max=36_000)
        self._learning_rate = FloatSpinBox(
            label="learning rate", value=0.0, min=0.0, max=1.0, step=1e-4,
            tooltip="0 = automatic: 3e-3 onto new classes or from scratch, 1e-3 correcting the model's own classes",
        )
        self._val_fraction = FloatSpinBox(label="validation fraction", value=0.1, min=0.0, max=0.9, step=0.05)
        self._run = PushButton(text="Fine-tune")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress_line = Label(label="progress")
        self._plot = CurvePlot()
        self._table = Table(value=_scores_table({}, {}))
        self._table.native.setMinimumHeight(100)
        self._use = PushButton(text=USE_TEXT, enabled=False)
        self._revert = PushButton(text="Revert to the previous model", enabled=False)
        self._save_path = FileEdit(label="save as", mode="w", filter="*.safetensors")
        self._save = PushButton(text="Save model", enabled=False)
        self._status = Label(label="status")
        self._status.native.setWordWrap(True)
        self.extend([
            self._image, self._labels_layer, self._model, self._plane, self._only_annotated, self._review, self._fill,
            self._annotated, self._steps, self._budget, self._learning_rate, self._val_fraction, self._run,
            self._cancel, self._progress_line,
        ])
        self.inner.layout().addWidget(self._plot)
        self.extend([self._table, self._use, self._revert, self._save_path, self._save, self._status])
        self._watched: set[int] = set()
        self._labels_layer.changed.connect(self._on_labels_changed)
        self._review.clicked.connect(self.mark_reviewed)
        self._fill.clicked.connect(self.fill_between)
        self._run.clicked.connect(self.run)
        self._cancel.clicked.connect(self.cancel)
        self._use.clicked.connect(self.use_new_model)
        self._revert.clicked.connect(self.revert)
        self._save.clicked.connect(lambda: self.save_model())
        self._on_labels_changed(self._labels_layer.value)
        napari_viewer.layers.selection.events.active.connect(self._follow_selection)
        self.fit_screen()

    def _follow_selection(self, event=None) -> None:
        """The layer the user selects in the layer list becomes the image or the labels to train on."""
        layer = self._viewer.layers.selection.active
        if self.running or layer is None:
            return
        target = self._labels_layer if isinstance(layer, Labels) else self._image if isinstance(layer, Image) else None
        if target is not None and layer in target.choices and "aunet_attention" not in layer.metadata:
            target.value = layer

    # ----- annotated slices -------------------------------------------------------------------
    def _model_choices(self, widget=None) -> list[str]:
        return ["default", *BUNDLED_MODELS, SCRATCH, *self._state.models]

    def _start_checkpoint(self, name: str):
        """The chosen model, or for SCRATCH a freshly initialised one of the brain model's architecture."""
        if name != SCRATCH:
            return self._state.checkpoint(name)
        return fresh_checkpoint(self._state.checkpoint("brain"), seed=0)

    def _on_labels_changed(self, layer=None) -> None:
        if layer is not None:
            self._state.track_painting(layer)
            if id(layer) not in self._watched:  # the "annotated" line follows the brush as the user paints
                self._watched.add(id(layer))
                layer.events.paint.connect(self._after_paint)
        self._show_annotated()

    def _after_paint(self, event=None) -> None:
        # after the shared state has recorded the stroke (its handler may run after this one)
        QTimer.singleShot(0, self._show_annotated)

    def _display_axis(self, layer) -> int:
        return slicing_display_axis(self._viewer, self._plane.value, layer.ndim)

    def annotated_display_slices(self) -> list[int]:
        layer = self._labels_layer.value
        if layer is None:
            return []
        axis = self._display_axis(layer)
        if self._only_annotated.value:
            return self._state.annotated_slices(layer, axis)
        data = np.asarray(layer.data)
        if data.ndim == 2:
            return [0] if data.any() else []
        other = tuple(a for a in range(data.ndim) if a != axis)
        return [int(i) for i in np.flatnonzero(np.any(data != 0, axis=other))]

    def _show_annotated(self) -> None:
        slices = self.annotated_display_slices()
        shown = ", ".join(str(s) for s in slices[:12]) + (" …" if len(slices) > 12 else "")
        self._annotated.value = f"{len(slices)} slice(s): {shown}" if slices else "none yet: paint or mark reviewed"

    def mark_reviewed(self) -> None:
        layer = self._labels_layer.value
        if layer is None:
            show_warning("Choose the labels layer you corrected first.")
            return
        axis = self._display_axis(layer)
        index = int(round(layer.world_to_data(self._viewer.dims.point)[axis])) if layer.ndim > 2 else 0
        self._state.mark_reviewed(layer, axis, index)
        self._show_annotated()

    def fill_between(self) -> list[int]:
        """Interpolate the labels between consecutive annotated slices as one undoable edit; returns the slices."""
        layer = self._labels_layer.value
        if layer is None:
            show_warning("Choose the labels layer you corrected first.")
            return []
        if layer.ndim != 3:
            show_warning("Filling between slices needs a 3D labels layer.")
            return []
        slices = self.annotated_display_slices()
        if len(slices) < 2:
            show_warning("Paint (or mark reviewed) at least two slices with a gap between them first.")
            return []
        data = np.asarray(layer.data)
        filled, done = interpolate_between_slices(data, self._display_axis(layer), slices)
        changed = np.nonzero(filled != data)
        if not changed[0].size:
            self._set_status("nothing to fill: no label is on both sides of a gap")
            return []
        layer.data_setitem(changed, filled[changed])  # napari's undoable path: Ctrl+Z on the layer reverts it
        self._show_annotated()
        shown = ", ".join(str(s) for s in done[:12]) + (" …" if len(done) > 12 else "")
        self._set_status(f"filled {len(done)} slice(s): {shown}; they now count as annotated — check them "
                         "(Ctrl+Z on the labels layer undoes the fill)")
        return done

    # ----- training ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def run(self) -> None:
        if self.running:
            show_warning("Fine-tuning is already running: wait for it or press Cancel.")
            return
        image, labels = self._image.value, self._labels_layer.value
        if image is None or labels is None:
            show_warning("Choose the image and the labels layer you corrected.")
            return
        try:
            model_name = self._model.value
            checkpoint = self._start_checkpoint(model_name)
            pair = self._training_pair(image, labels)
            class_names = None
            if not is_click_model(checkpoint.config):
                class_names = class_names_for_labels(int(pair.labels.max()), checkpoint.config.class_names,
                                                     layer_class_names(labels))
            settings = FineTuneSettings(
                steps=self._steps.value or None, time_budget=float(self._budget.value) or None,
                learning_rate=float(self._learning_rate.value) or None, val_fraction=float(self._val_fraction.value),
                from_scratch=model_name == SCRATCH,
            )
        except (ValueError, CheckpointError) as error:
            show_error(f"Cannot fine-tune: {error}")
            return
        self._previous_model = model_name
        self._worse = False
        self._use.text = USE_TEXT
        self._settings, self._started = settings, time.monotonic()
        self._progress_line.value = "starting…"
        self._plot.clear()
        self._progress = progress(total=settings.steps, desc="Fine-tuning")
        worker = _fine_tune_in_worker(checkpoint.build_model(), [pair], settings, class_names)
        worker.yielded.connect(self._on_step)
        worker.returned.connect(lambda result: self._on_done(result, settings, checkpoint, pair))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self._set_status("cancelled: the model is unchanged"))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._run.enabled, self._cancel.enabled = False, True
        start = "a new network (from scratch)" if model_name == SCRATCH else f"'{_canonical(model_name)}'"
        classes = f" for {', '.join(class_names[1:])}" if class_names else ""
        self._set_status(f"fine-tuning {start}{classes} on {len(pair.reviewed)} slice(s)…")
        self.start_worker(worker)

    def _training_pair(self, image, labels) -> TrainingPair:
        source = image_source(image, self._viewer)
        label_data = file_order(np.asarray(labels.data), labels.metadata)
        if label_data.shape != source.volume.shape:
            raise ValueError(f"labels shape {label_data.shape} does not match the image's {source.volume.shape}")
        display_axis = self._display_axis(labels)
        slices = self.annotated_display_slices()
        if not slices:
            raise ValueError("no annotated slice: paint corrections or mark slices reviewed first")
        if source.volume.ndim == 2:
            annotated, file_axis = [0], 0
        else:
            file_axis = source.file_axis(display_axis)
            annotated = [source.file_index(display_axis, s) for s in slices]
        # Only the annotated slices carry targets; every other slice is blanked so nothing else is taught.
        partial = np.zeros(label_data.shape, np.int64)
        if source.volume.ndim == 2:
            partial[...] = label_data
        else:
            region = [slice(None)] * label_data.ndim
            for index in annotated:
                region[file_axis] = index
                partial[tuple(region)] = label_data[tuple(region)]
        return TrainingPair(np.asarray(source.volume), partial, axis=file_axis, reviewed=tuple(annotated),
                            name=image.name, spacing=source.spacing)

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._set_status("cancelling…")

    def _on_step(self, update) -> None:
        step, total, loss, dice = update
        self._plot.add(loss, dice)
        self._progress_line.value = progress_text(step, total, time.monotonic() - self._started,
                                                  self._settings.time_budget)
        if self._progress is not None:
            self._progress.n = step if total else 0
            self._progress.refresh()

    def _on_error(self, error) -> None:
        message = " ".join(str(error).split()) or type(error).__name__
        self._set_status(f"failed: {message}")
        show_error(f"Fine-tuning failed: {message}")

    def _on_finished(self) -> None:
        self._worker = None
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._run.enabled, self._cancel.enabled = True, False

    def _on_done(self, result, settings, checkpoint, pair) -> None:
        from .engine.checkpoint import Checkpoint

        self._table.value = _scores_table(result.before, result.after)
        history = result.history(settings)
        provenance = {"image": pair.name, "shape": list(pair.image.shape), "axis": pair.axis,
                      "annotated_slices": list(pair.reviewed), "train_slices": result.train_slices,
                      "validation_slices": result.val_slices, "seed": settings.seed, "init": self._previous_model}
        head = result.head.message(_canonical(self._previous_model)) if result.head else ""
        card = f"Fine-tuned from {self._previous_model}; classes: {', '.join(result.model.config.class_names[1:])}."
        self._result = Checkpoint(config=result.model.config, state_dict=result.model.state_dict(), history=history,
                                  provenance=provenance, model_card=card)
        self._result_model = result.model
        self._use.enabled = self._save.enabled = True
        before, after = result.before.get("mean_dice"), result.after.get("mean_dice")
        change = f"held-out mean Dice {before:.3f} → {after:.3f}" if before is not None and after is not None else \
            "no held-out slice (validation fraction 0 or too few slices)"
        self._worse = before is not None and after is not None and after < before
        self._progress_line.value = f"{result.steps} steps in {result.seconds:.0f} s; " + held_out_text(result)
        kept = f" (weights of step {result.best_step}, best on the held-out slices)" if (
            result.best_step is not None and result.best_step != result.steps) else ""
        started = "a new network" if self._previous_model == SCRATCH else f"'{_canonical(self._previous_model)}'"
        self._set_status(f"from {started}: {result.steps} steps in {result.seconds:.0f} s; {change}{kept}"
                         + (f"; {head}" if result.head is not None and result.head.changed else ""))
        if self._worse:
            message = (f"The new model is worse than '{_canonical(self._previous_model)}' on the held-out slices "
                       f"(mean Dice {before:.3f} → {after:.3f}); '{_canonical(self._previous_model)}' stays active "
                       f"unless you confirm with '{USE_TEXT}' twice.")
            self._set_status(message)
            show_warning(message)

    # ----- keep, save, revert ----------------------------------------------------------------
    def use_new_model(self) -> str | None:
        """Make the new model the one to segment (or click) with. A model worse on the held-out slices than the
        one it started from is only taken on a second press, once the button says so (the user insisting)."""
        if self._result is None:
            return None
        if self._worse and self._use.text != USE_WORSE_TEXT:  # first press: ask to confirm
            self._use.text = USE_WORSE_TEXT
            show_warning(f"This model scored worse than '{_canonical(self._previous_model)}' on the held-out "
                         f"slices; press '{USE_WORSE_TEXT}' to use it all the same.")
            return None
        name = f"fine-tuned {datetime.now():%H:%M:%S}"
        self._state.use_model(name, self._result)
        self._model.reset_choices()
        self._revert.enabled = True
        widget = "Click to segment" if is_click_model(self._result.config) else "Segment"
        show_info(f"'{name}' is now the model in the {widget} widget.")
        return name

    def revert(self) -> None:
        if self._previous_model is not None:
            self._state.use_model(self._previous_model)
            show_info(f"Back to '{self._previous_model}'.")

    def save_model(self, path=None):
        if self._result is None:
            show_warning("Fine-tune first.")
            return None
        path = chosen_path(path or self._save_path.value, ".safetensors")
        if path is None:
            show_warning("Choose where to save the model.")
            return None
        try:
            save_checkpoint(path, self._result_model, self._result.config, history=self._result.history,
                            provenance=self._result.provenance, model_card=self._result.model_card)
        except (OSError, CheckpointError) as error:
            show_error(f"Cannot save the model: {error}")
            return None
        show_info(f"Saved {path}")
        return path

    def _set_status(self, text: str) -> None:
        self._status.value = text


def progress_text(step: int, total: int | None, elapsed: float, budget: float | None) -> str:
    """``step 120 of 400 · 34 s · about 80 s left``: the left time from the step rate, the budget, or both."""
    left = []
    if total:
        left.append((total - step) * elapsed / max(step, 1))
    if budget:
        left.append(budget - elapsed)
    remaining = f" · about {max(0.0, min(left)):.0f} s left" if left else ""
    return f"step {step}{f' of {total}' if total else ''} · {elapsed:.0f} s{remaining}"


def held_out_text(result) -> str:
    """One line on what the held-out Dice is measured on."""
    held_out = sorted({index for indices in result.val_slices.values() for index in indices})
    trained = sorted({index for indices in result.train_slices.values() for index in indices})
    if not held_out:
        return f"trained on {len(trained)} annotated slice(s); none held out, so no check on unseen slices"
    shown = ", ".join(map(str, held_out[:6])) + ("…" if len(held_out) > 6 else "")
    return (f"held-out Dice: mean over classes on {len(held_out)} annotated slice(s) not trained on "
            f"(file slices {shown}); trained on the other {len(trained)}")


def _canonical(model_name: str) -> str:
    """``brain`` for ``default``: the model the user started from, by its own name."""
    return ALIASES.get(model_name, model_name)


def _scores_table(before: dict, after: dict) -> dict:
    names = sorted(set(before.get("dice", {})) | set(after.get("dice", {})))
    rows = []
    for name in names:
        rows.append([
            name,
            _fmt(before.get("dice", {}).get(name)), _fmt(after.get("dice", {}).get(name)),
            _fmt(before.get("iou", {}).get(name)), _fmt(after.get("iou", {}).get(name)),
        ])
    columns = ["class", "Dice old", "Dice new", "IoU old", "IoU new"]  # short: the dock is ~400 px wide
    return {"data": rows, "index": [str(i + 1) for i in range(len(rows))], "columns": columns}


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
