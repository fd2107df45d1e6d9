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
        state = _STATES[viewer] = AunetState()
    return state
