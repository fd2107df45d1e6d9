"""One explicit state object per napari viewer, shared by the plugin's widgets.

It remembers which layers the plugin made (so a re-run replaces its own layers and never a layer the
user edited), the last segmentation of each image (in file order, for the attention statistics), and the
models in use (so a fine-tuned model reaches the segment widget without a restart).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .engine.checkpoint import Checkpoint
from .engine.clickmodel import is_click_model

if TYPE_CHECKING:
    import napari

    from .engine.inference import SegmentationResult


@dataclass
class SegmentationRun:
    """The last segmentation of one image layer, as the engine returned it (file order)."""

    image_layer: str
    result: SegmentationResult
    file_affine: np.ndarray
    model_name: str
    labels_layer: str | None = None
    attention_layers: dict[int, str] = field(default_factory=dict)  # level -> layer name
    slice_only: tuple[int, int] | None = None  # (file axis, index) when only one slice was segmented


@dataclass
class AunetState:
    """Everything the widgets of one viewer share."""

    runs: dict[str, SegmentationRun] = field(default_factory=dict)  # image layer name -> last run
    # ids of Labels layers the plugin made, and of those the user has since painted on
    own_labels: set[int] = field(default_factory=set)
    edited_labels: set[int] = field(default_factory=set)
    # user models (fine-tuned or loaded), by display name; bundled models are loaded on demand
    models: dict[str, Checkpoint] = field(default_factory=dict)
    # per Labels layer id: display axis -> slice indices the user painted/erased on, or marked reviewed
    painted: dict[int, dict[int, set[int]]] = field(default_factory=dict)
    reviewed: dict[int, dict[int, set[int]]] = field(default_factory=dict)
    # called with a model name when a widget makes it the one to segment with
    model_listeners: list = field(default_factory=list)
    # called with the image layer's name when a segmentation of it has finished and its layers are in place
    run_listeners: list = field(default_factory=list)
    # autosaves label edits and offers them back after a crash (napari_aunet._recovery.RecoveryKeeper)
    keeper: object = None

    def record_run(self, run: SegmentationRun) -> None:
        """Remember ``run`` as the last segmentation of its image and tell the widgets."""
        self.runs[run.image_layer] = run
        for listener in list(self.run_listeners):
            listener(run.image_layer)

    def use_model(self, name: str, checkpoint: Checkpoint | None = None) -> None:
        """Register ``checkpoint`` under ``name`` (when given) and tell the widgets to select it."""
        if checkpoint is not None:
            self.models[name] = checkpoint
        for listener in list(self.model_listeners):
            listener(name)

    def checkpoint(self, name: str) -> Checkpoint:
        """A model made in this session by that name, else a bundled model or a checkpoint file."""
        from .engine.bundled import load_model

        return self.models.get(name) or load_model(name)

    def segmentation_models(self) -> list[str]:
        """Session models that segment a plain scan (not the click-guided ones)."""
        return [name for name, checkpoint in self.models.items() if not is_click_model(checkpoint.config)]

    def click_models(self) -> list[str]:
        return [name for name, checkpoint in self.models.items() if is_click_model(checkpoint.config)]

    def track_painting(self, layer) -> None:
        """Record the slices the user paints or erases on in ``layer`` (napari's Labels paint event)."""
        layer_id = id(layer)
        if layer_id in self.painted:
            return
        self.painted[layer_id] = {}

        def record(event) -> None:
            touched = self.painted[layer_id]
            for atom in event.value or ():
                indices = atom[0]  # per axis: index array, or a slice (a bounding box)
                for axis, values in enumerate(indices):
                    if isinstance(values, slice):
                        stop = values.stop if values.stop is not None else layer.data.shape[axis]
                        found = range(values.start or 0, stop)
                    else:
                        found = np.unique(np.asarray(values)).tolist()
                    touched.setdefault(axis, set()).update(int(v) for v in found)

        layer.events.paint.connect(record)

    def annotated_slices(self, layer, display_axis: int) -> list[int]:
        """Slices along ``display_axis`` the user painted on or marked reviewed (display indices)."""
        painted = self.painted.get(id(layer), {}).get(display_axis, set())
        reviewed = self.reviewed.get(id(layer), {}).get(display_axis, set())
        return sorted(painted | reviewed)

    def mark_reviewed(self, layer, display_axis: int, index: int) -> None:
        self.reviewed.setdefault(id(layer), {}).setdefault(display_axis, set()).add(int(index))

    def watch_labels(self, layer) -> None:
        """Remember ``layer`` as ours and mark it edited as soon as the user paints, erases or fills."""
        self.own_labels.add(id(layer))
        layer_id = id(layer)

        def mark_edited(event=None) -> None:
            self.edited_labels.add(layer_id)

        layer.events.paint.connect(mark_edited)

    def is_user_edited(self, layer) -> bool:
        return id(layer) not in self.own_labels or id(layer) in self.edited_labels


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def state_for(viewer: napari.Viewer) -> AunetState:
    """The state object of ``viewer`` (made on first use)."""
    state = _STATES.get(viewer)
    if state is None:
        from ._recovery import RecoveryKeeper

        state = _STATES[viewer] = AunetState()
        state.keeper = RecoveryKeeper(viewer, state)
    return state
