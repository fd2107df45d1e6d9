"""Click-to-segment widget: positive/negative clicks on a prompt Points layer edit one object at a time.

Press *Start clicking*: a Points layer ``<image> clicks`` is added in add mode. Each click runs the model
around the click and updates the current object in the target Labels layer through napari's undoable path
(Ctrl+Z on the labels layer reverts one click). With the ``click`` model (v2) the object is predicted from
all of its clicks on the slice; with a segmentation model (v1) it is the connected predicted region.
Negative clicks: tick *negative clicks* or press ``N`` on the clicks layer to toggle; they remove the part
of the object under them. *Draw a box* adds a Shapes layer ``<image> box`` in rectangle mode: a rectangle drawn on
the current slice segments the object inside it (a new object); clicks then refine it. *Next object* starts a new
label id.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Label, PushButton, create_widget
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_warning

from ._fit import ScrollingContainer
from ._segment_widget import (
    PLANES,
    VIEW_PLANE,
    _copy_placement_metadata,
    describe_model,
    image_source,
    show_attention_layers,
    slicing_display_axis,
)
from ._state import state_for
from .engine.bundled import BUNDLED_MODELS
from .engine.checkpoint import CheckpointError
from .engine.clickmodel import is_click_model
from .engine.clicks import Click, ClickSegmenter
from .engine.inference import Segmenter

POSITIVE_COLOR, NEGATIVE_COLOR = "#33dd55", "#ff3355"


class ClickWidget(ScrollingContainer):
    """Segment objects with clicks."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self._state = state_for(napari_viewer)
        self._image = create_widget(label="image", annotation=Image)
        self._target = create_widget(label="objects layer", annotation=Labels, options={"nullable": True})
        self._model = ComboBox(label="model", choices=lambda w=None: ["click", "default", *(
            name for name in BUNDLED_MODELS if name != "click"), *self._state.models], value="click",
            tooltip="click: the click-guided model (v2); others: a segmentation model + connected component (v1)")
        self._card = Label(label="about")
        self._card.native.setWordWrap(True)
        self._plane = ComboBox(label="slices", choices=[VIEW_PLANE, *PLANES], value=VIEW_PLANE)
        self._three_d = CheckBox(text="3D: propagate through neighbouring slices", value=False)
        self._negative = CheckBox(text="negative clicks (N)", value=False)
        self._attention = CheckBox(
            text="attention layers (click model)", value=False,
            tooltip="After each click, show each gate's map on the clicked window: where the clicks steer the model",
        )
        self._start = PushButton(text="Start clicking")
        self._draw_box = PushButton(text="Draw a box",
                                    tooltip="Draw a rectangle around a structure on the current slice: it becomes "
                                            "the next object; clicks refine it")
        self._next = PushButton(text="Next object")
        self._status = Label(label="status")
        self.extend([self._image, self._target, self._model, self._card, self._plane, self._three_d, self._negative,
                     self._attention, self._start, self._draw_box, self._next, self._status])
        self._start.clicked.connect(self.start)
        self._draw_box.clicked.connect(self.draw_box)
        self._next.clicked.connect(self.next_object)
        self._negative.changed.connect(self._on_polarity)
        self._model.changed.connect(self._show_card)
        self._points = None
        self._boxes = None
        self._session: tuple | None = None  # (key, ClickSegmenter, ImageSource)
        self.object_id = 1
        self._state.model_listeners.append(self._on_use_model)
        self._show_card(self._model.value)
        self.fit_screen()

    def _show_card(self, name: str) -> None:
        """The model card's first line and what the model is: v2 (click-guided) or v1 (segmentation + component)."""
        try:
            checkpoint = self._state.checkpoint(name)
        except CheckpointError as error:
            self._card.value = str(error)
            return
        kind = "v2: predicts the clicked object" if is_click_model(checkpoint.config) else \
            "v1: the connected region this segmentation model predicts under the click"
        self._card.value = f"{describe_model(checkpoint)}\n{kind}"

    def _on_use_model(self, name: str) -> None:
        """A click model fine-tuned in the Fine-tune widget (or reverted to) becomes this widget's model."""
        if name == "click" or name in self._state.click_models():
            self._model.reset_choices()
            self._model.value = name

    # ----- set-up -------------------------------------------------------------------------------
    def start(self):
        """Create (or reuse) the prompt Points layer and the objects layer; returns the Points layer."""
        image = self._image.value
        if image is None:
            show_warning("Open a scan and choose it as the image first.")
            return None
        if self._target.value is None:
            name = f"{image.name} objects"
            if name in self._viewer.layers:
                self._target.value = self._viewer.layers[name]
            else:
                source = image_source(image, self._viewer)
                shape = source.transform.display_shape if source.transform else source.volume.shape
                layer = self._viewer.add_labels(
                    np.zeros(shape, np.uint16), name=name, scale=image.scale[-len(shape):],
                    translate=image.translate[-len(shape):], metadata=_copy_placement_metadata(image), opacity=0.6,
                )
                self._target.reset_choices()
                self._target.value = layer
        name = f"{image.name} clicks"
        if name in self._viewer.layers:
            self._points = self._viewer.layers[name]
        else:
            self._points = self._viewer.add_points(
                np.zeros((0, image.ndim)), ndim=image.ndim, name=name, size=6, border_width=0,
                features={"polarity": np.array([], dtype=object)}, face_color=POSITIVE_COLOR,
            )
            self._points.events.data.connect(self._on_points)
            self._points.bind_key("n", lambda layer: self._toggle_polarity(), overwrite=True)
        self._on_polarity(self._negative.value)
        self._points.mode = "add"
        self._viewer.layers.selection.active = self._points
        self.object_id = max(1, int(np.asarray(self._target.value.data).max()) + (1 if self._object_used() else 0))
        self._target.value.selected_label = self.object_id
        self._status.value = f"click on the structure (object {self.object_id})"
        return self._points

    def _object_used(self) -> bool:
        return bool(np.asarray(self._target.value.data).max() > 0)

    def _toggle_polarity(self) -> None:
        self._negative.value = not self._negative.value

    def _on_polarity(self, negative: bool) -> None:
        if self._points is not None:
            self._points.feature_defaults = {"polarity": "negative" if negative else "positive"}
            self._points.current_face_color = NEGATIVE_COLOR if negative else POSITIVE_COLOR

    def draw_box(self):
        """Add (or reuse) the ``<image> box`` Shapes layer in rectangle mode; returns it."""
        if self.start() is None:
            return None
        image = self._image.value
        name = f"{image.name} box"
        if name in self._viewer.layers:
            self._boxes = self._viewer.layers[name]
        else:
            self._boxes = self._viewer.add_shapes(
                ndim=image.ndim, name=name, scale=image.scale, translate=image.translate, edge_color="#ffcc00",
                face_color="transparent", edge_width=1.5,
            )
            self._boxes.events.data.connect(self._on_box)
        self._boxes.mode = "add_rectangle"
        self._viewer.layers.selection.active = self._boxes
        self._status.value = "draw a rectangle around the structure"
        return self._boxes

    def _on_box(self, event) -> None:
        if getattr(event, "action", None) != "added" or self._boxes is None:
            return
        image, target = self._image.value, self._target.value
        if image is None or target is None or not len(self._boxes.data):
            return
        world = [self._boxes.data_to_world(vertex) for vertex in self._boxes.data[-1]]
        try:
            self.apply_box(image, target, world)
        except (ValueError, CheckpointError) as error:
            show_error(f"Box not applied: {error}")

    def apply_box(self, image, target, world_corners) -> None:
        """Segment the object inside the rectangle with corners ``world_corners`` (world coordinates, on the
        current slice) as a new object."""
        if (np.asarray(target.data) == self.object_id).any():
            self.next_object()  # a box is a new object
        session, source = self._segmenter(image)
        ndim = source.volume.ndim
        display = np.round([np.asarray(image.world_to_data(w))[-ndim:] for w in world_corners]).astype(int)
        display = np.clip(display, 0, np.asarray(target.data.shape) - 1)
        flat = [a for a in range(ndim) if np.ptp(display[:, a]) == 0]  # the slice the rectangle lies on
        display_axis = flat[0] if len(flat) == 1 else slicing_display_axis(self._viewer, VIEW_PLANE, ndim)
        file_axis = source.file_axis(display_axis) if ndim == 3 else 0
        points = [self._file_point(source, row) for row in (display.min(axis=0), display.max(axis=0))]
        index = points[0][file_axis] if ndim == 3 else 0
        in_plane = [a for a in range(ndim) if a != file_axis] if ndim == 3 else [0, 1]
        box = (points[0][in_plane[0]], points[0][in_plane[1]], points[1][in_plane[0]], points[1][in_plane[1]])
        labels_file = _file_view(target.data, source)
        session.keep_attention = self._attention.value
        update = session.box(labels_file == self.object_id, file_axis, index, box, three_d=self._three_d.value)
        self._write(target, source, labels_file, update, positive=True, what="box")

    @staticmethod
    def _file_point(source, display_index) -> list[int]:
        point = [0] * source.volume.ndim
        for display_axis, value in enumerate(display_index):
            point[source.file_axis(display_axis)] = source.file_index(display_axis, int(value))
        return point

    def next_object(self) -> None:
        if self._target.value is None:
            return
        self.object_id = int(np.asarray(self._target.value.data).max()) + 1
        self._target.value.selected_label = self.object_id
        if self._session is not None:
            self._session[1].new_object()
        self._status.value = f"object {self.object_id}: click on the next structure"

    # ----- clicks -------------------------------------------------------------------------------
    def _segmenter(self, image) -> tuple[ClickSegmenter, object]:
        key = (id(image), self._model.value)
        if self._session is None or self._session[0] != key:
            checkpoint = self._state.checkpoint(self._model.value)
            source = image_source(image, self._viewer)
            session = ClickSegmenter(Segmenter(checkpoint, device="auto"), source.volume)
            self._session = (key, session, source)
        return self._session[1], self._session[2]

    def _on_points(self, event) -> None:
        if getattr(event, "action", None) != "added" or self._points is None:
            return
        image, target = self._image.value, self._target.value
        if image is None or target is None:
            return
        self._points.selected_data = set()  # so a later polarity toggle recolours no earlier click
        for index in event.data_indices:
            world = self._points.data_to_world(self._points.data[index])
            polarity = self._points.features["polarity"].iloc[index]
            try:
                self.apply_click(image, target, world, polarity != "negative")
            except (ValueError, CheckpointError) as error:
                show_error(f"Click not applied: {error}")

    def apply_click(self, image, target, world, positive: bool) -> None:
        session, source = self._segmenter(image)
        display_index = np.round(np.asarray(image.world_to_data(world))[-source.volume.ndim:]).astype(int)
        display_shape = target.data.shape
        if np.any(display_index < 0) or np.any(display_index >= np.asarray(display_shape)):
            raise ValueError("the click is outside the image")
        file_point = self._file_point(source, display_index)
        display_axis = slicing_display_axis(self._viewer, self._plane.value, source.volume.ndim)
        file_axis = source.file_axis(display_axis) if source.volume.ndim == 3 else 0
        labels_file = _file_view(target.data, source)
        current = labels_file == self.object_id
        session.keep_attention = self._attention.value
        update = session.click(current, Click(tuple(file_point), positive), axis=file_axis,
                               three_d=self._three_d.value)
        self._write(target, source, labels_file, update, positive, what="+ click" if positive else "− click")

    def _write(self, target, source, labels_file, update, positive: bool, what: str) -> None:
        """Put one prompt's result into the objects layer through napari's undoable path (never over another
        object)."""
        image = self._image.value
        if self._attention.value and self._session[1].last_attention:
            show_attention_layers(self._viewer, image, source, self._session[1].last_attention, prefix="click ")
        old = labels_file[update.region]
        new = old.copy()
        if positive:
            new[update.mask & (old == 0)] = self.object_id  # never paint over another object
        new[(old == self.object_id) & ~update.mask] = 0
        changed = np.nonzero(new != old)
        if not changed[0].size:
            self._status.value = f"this {what.lstrip('+− ')} changed nothing"
            return
        file_coords = [c + r.start for c, r in zip(changed, update.region, strict=True)]
        display_coords = _to_display_coords(file_coords, source)
        target.data_setitem(tuple(display_coords), new[changed])
        voxels = int((np.asarray(target.data) == self.object_id).sum())
        self._status.value = f"{what}: object {self.object_id} has {voxels} voxels ({update.seconds * 1000:.0f} ms)"



def _file_view(display_data, source) -> np.ndarray:
    data = np.asarray(display_data)
    return source.transform.from_display(data) if source.transform is not None else data


def _to_display_coords(file_coords: list[np.ndarray], source) -> list[np.ndarray]:
    if source.transform is None:
        return list(file_coords)
    coords = []
    for display_axis, file_axis in enumerate(source.transform.axes):
        values = file_coords[file_axis]
        if source.transform.flips[display_axis]:
            values = source.volume.shape[file_axis] - 1 - values
        coords.append(values)
    return coords

