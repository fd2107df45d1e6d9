"""Segment widget: run a model on an image layer; labels plus one layer per attention level.

The run happens in a napari ``thread_worker`` that yields after every batch (progress bar, Cancel);
layers are only added or changed in the GUI thread, in the worker's ``returned`` callback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, PushButton, create_widget
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning

from ._fit import ScrollingContainer
from ._layers import (
    ATTENTION_NOTE,
    LABELS_OUTLINE,
    attention_appearance,
    attention_layer_name,
    class_volumes_ml,
    labels_appearance,
    placed,
    segmentation_layer_name,
    show_one_level,
)
from ._orientation import DisplayTransform, file_order
from ._state import SegmentationRun, state_for
from ._views import CT_WINDOWS, VIEWS, ct_window_limits, show_plane
from .engine import int8
from .engine.bundled import BUNDLED_MODELS, load_model
from .engine.checkpoint import Checkpoint, CheckpointError
from .engine.inference import SegmentationResult, Segmenter
from .engine.intensity import domain_warning, looks_like_ct
from .engine.postprocess import brain_mask
from .engine.uncertainty import most_uncertain_slice, normalized_entropy
from .io.tables import label_volumes, save_volumes_csv, voxel_volume_ml

FILE_CHOICE = "checkpoint file…"
CLICK_ONLY = ("click",)  # bundled models that need clicks as input: for the Click widget only
PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}  # display (RAS) axis each plane slices along
VIEW_PLANE = "viewer's slice"


@dataclass
class ImageSource:
    """An image layer's voxels in file order, with the file affine and the display transform."""

    volume: np.ndarray
    affine: np.ndarray  # 4x4, file order
    transform: DisplayTransform | None  # None: the layer is shown in its own order
    leading: tuple[int, ...]  # indices taken on extra leading axes (4D series)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each file axis of the volume."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, : self.volume.ndim], axis=0))

    def file_axis(self, display_axis: int) -> int:
        return self.transform.axes[display_axis] if self.transform is not None else display_axis

    def file_index(self, display_axis: int, display_index: int) -> int:
        if self.transform is not None and self.transform.flips[display_axis]:
            return self.volume.shape[self.file_axis(display_axis)] - 1 - display_index
        return display_index


def slicing_display_axis(viewer, plane: str, ndim: int = 3) -> int:
    """The display axis (of a layer's last ``ndim``) that ``plane`` slices along: a fixed RAS axis for
    axial/coronal/sagittal, the viewer's current slider axis for the viewer's slice; 0 for 2D images."""
    if ndim == 2:
        return 0
    if plane != VIEW_PLANE:
        return PLANES[plane]
    offset = viewer.dims.ndim - ndim
    sliced = [axis - offset for axis in viewer.dims.not_displayed if axis >= offset]
    return sliced[-1] if sliced else 0


def image_source(layer, viewer) -> ImageSource:
    """File-order voxels of ``layer`` (the current volume of a series) with their affine."""
    aunet = layer.metadata.get("aunet") if isinstance(layer.metadata, dict) else None
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    if getattr(layer, "rgb", False):
        raise ValueError(f"'{layer.name}' is an RGB image; segment a greyscale scan")
    spatial = len(aunet["display"]["axes"]) if aunet else min(data.ndim, 3)
    extra = data.ndim - spatial
    leading = ()
    if extra > 0:
        offset = viewer.dims.ndim - data.ndim
        leading = tuple(int(viewer.dims.current_step[offset + axis]) for axis in range(extra))
        data = data[leading]
    data = np.asarray(data)
    if aunet:
        transform = DisplayTransform.from_metadata(aunet["display"])
        return ImageSource(file_order(data, layer.metadata), np.asarray(aunet["affine"], float), transform, leading)
    affine = np.eye(4)
    scale, translate = layer.scale[extra:], layer.translate[extra:]
    for axis in range(spatial):
        affine[axis, axis] = scale[axis]
        affine[axis, 3] = translate[axis]
    return ImageSource(data, affine, None, leading)


@thread_worker(ignore_errors=True)
def _segment_in_worker(segmenter: Segmenter, volume: np.ndarray, options: dict):
    started = time.perf_counter()
    result = yield from segmenter.iter_segment(volume, **options)
    return result, time.perf_counter() - started


class SegmentWidget(ScrollingContainer):
    """Choose an image, a model, a device and a mode; press Segment."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self._state = state_for(napari_viewer)
        self._worker = None
        self._progress = None
        self._image = create_widget(label="image", annotation=Image)
        self._view = ComboBox(label="view", choices=["as opened", *VIEWS], value="as opened",
                              tooltip="Radiological views of scans opened by this plugin (RAS display)")
        self._window = ComboBox(label="CT window", choices=["as opened", *CT_WINDOWS], value="as opened",
                                tooltip="Display window presets for CT in Hounsfield units (the image's contrast)")
        self._model = ComboBox(label="model", choices=self._model_choices)
        self._checkpoint = FileEdit(label="checkpoint", filter="*.safetensors", visible=False)
        self._card = Label(label="about")
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self._precision = ComboBox(
            label="precision", choices=["auto", "fp32", "bf16", *(["int8"] if int8.available() else [])],
            value="auto",
            tooltip="auto: fp16 on a CUDA GPU, bf16 on a CPU with native bf16, else fp32. int8 (CPU, ONNX Runtime): "
                    "the first run of a model calibrates on the scan (a few seconds), later runs reuse it",
        )
        self._mode = ComboBox(label="mode", choices=[("2D slice by slice", "2d"), ("3D window", "3d")], value="2d")
        self._plane = ComboBox(label="slices", choices=[VIEW_PLANE, *PLANES], value=VIEW_PLANE)
        self._scope = ComboBox(label="run on", choices=["whole volume", "current slice"], value="whole volume")
        self._three_views = CheckBox(
            text="all three slice directions, averaged", value=False,
            tooltip="Segment along the axial, coronal and sagittal slices and average them: about 3x the time, "
                    "steadier at the brain's base (the brain model's default)",
        )
        self._nan = ComboBox(
            label="NaN voxels", choices=[("as background", "background"), ("refuse the scan", "refuse")],
            value="background",
            tooltip="NaN or infinite voxels (outside a resampled scan's field of view): segmented as the scan's "
                    "minimum, and counted, or the scan is refused (aunet segment --nan)",
        )
        self._with_attention = CheckBox(text="attention layers", value=True)
        self._with_probabilities = CheckBox(text="probability layers", value=False)
        self._with_uncertainty = CheckBox(
            text="uncertainty layer", value=False,
            tooltip="Entropy of the class probabilities per voxel; the status names the slice most worth correcting",
        )
        self._with_brain_mask = CheckBox(
            text="brain mask layer", value=False,
            tooltip="Every labelled voxel of the largest connected group, holes filled (as aunet segment --brain-mask)",
        )
        self._run = PushButton(text="Segment")
        self._go_uncertain = PushButton(text="Go to the most uncertain slice", visible=False)
        self._volumes_path = FileEdit(label="volumes CSV", mode="w", filter="*.csv")
        self._save_volumes = PushButton(text="Save label volumes (CSV)",
                                        tooltip="Voxels and mL per class of the segmentation layer, edits included")
        self.uncertain_slice: tuple[int, int] | None = None  # (display axis, display index)
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._status = Label(label="status")
        self._note = Label(value=ATTENTION_NOTE)
        self._note.native.setWordWrap(True)
        self._card.native.setWordWrap(True)
        self._status.native.setWordWrap(True)
        self.extend([
            self._image, self._view, self._window, self._model, self._checkpoint, self._card, self._device,
            self._precision, self._mode, self._plane,
            self._three_views, self._scope, self._nan, self._with_attention, self._with_probabilities, self._with_uncertainty,
            self._with_brain_mask, self._run,
            self._cancel, self._status, self._go_uncertain, self._volumes_path, self._save_volumes, self._note,
        ])
        self._model.changed.connect(self._on_model_changed)
        self._mode.changed.connect(lambda value: [setattr(w, "enabled", value == "2d") for w in (self._plane, self._three_views)])
        self._run.clicked.connect(self.run)
        self._cancel.clicked.connect(self.cancel)
        self._go_uncertain.clicked.connect(self.go_to_uncertain_slice)
        self._save_volumes.clicked.connect(lambda: self.save_volumes())
        self._view.changed.connect(lambda plane: plane in VIEWS and show_plane(self._viewer, plane))
        self._window.changed.connect(self.apply_window)
        self._on_model_changed(self._model.value)
        self._state.model_listeners.append(self.select_model)
        self.fit_screen()

    # ----- models -------------------------------------------------------------------------------
    def _model_choices(self, widget=None) -> list[str]:
        segmentation = [name for name in BUNDLED_MODELS if name not in CLICK_ONLY]
        return ["default", *segmentation, *self._state.segmentation_models(), FILE_CHOICE]

    def _on_model_changed(self, value) -> None:
        self._checkpoint.visible = value == FILE_CHOICE
        try:
            checkpoint = self._checkpoint_for(value) if value != FILE_CHOICE else None
        except CheckpointError as error:
            self._card.value = str(error)
            return
        self._card.value = self._describe(checkpoint) if checkpoint else "a .safetensors checkpoint written by aunet"
        if checkpoint is not None:
            self._three_views.value = checkpoint.config.views == 3

    @staticmethod
    def _describe(checkpoint: Checkpoint) -> str:
        return describe_model(checkpoint)

    def _checkpoint_for(self, name: str) -> Checkpoint:
        if name == FILE_CHOICE:
            path = self._checkpoint.value
            if not path or str(path) in ("", "."):
                raise CheckpointError("choose a checkpoint file first")
            return load_model(path)
        return self._state.checkpoint(name)

    def select_model(self, name: str) -> None:
        """Make ``name`` (bundled or in the shared state) the selected model; click models are not for Segment."""
        self._model.reset_choices()
        if name in self._model.choices:
            self._model.value = name

    # ----- running ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def run(self) -> None:
        """Start a segmentation of the chosen image (returns at once; the work runs in a thread)."""
        if self.running:
            show_warning("A segmentation is already running: wait for it or press Cancel.")
            return
        layer = self._image.value
        if layer is None:
            show_warning("Open a scan first (File › Open, or a sample) and choose it as the image.")
            return
        try:
            request = self._prepare(layer)
        except (ValueError, CheckpointError) as error:
            show_error(f"Cannot segment '{layer.name}': {error}")
            return
        warning = domain_warning(request["volume"], request["segmenter"].config.modality)
        if warning:
            show_warning(f"'{layer.name}': {warning}.")
        self._status.value = f"segmenting '{layer.name}' on {request['segmenter'].device.type}…"
        self._progress = progress(total=0, desc=f"Segmenting {layer.name}")
        worker = _segment_in_worker(request["segmenter"], request["volume"], request["options"])
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda value: self._on_done(request, *value))
        worker.errored.connect(lambda error: self._on_error(layer.name, error))
        worker.aborted.connect(lambda: self._on_cancelled(layer.name))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._run.enabled, self._cancel.enabled = False, True
        self.start_worker(worker)

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._status.value = "cancelling…"

    def _prepare(self, layer) -> dict:
        source = image_source(layer, self._viewer)
        if source.volume.ndim not in (2, 3):
            raise ValueError(f"expected a 2D or 3D image, got {source.volume.ndim} dimensions")
        checkpoint = self._checkpoint_for(self._model.value)
        config = checkpoint.config
        if config.in_channels != 1:
            raise ValueError(
                f"the model expects {config.in_channels} input channels, but '{layer.name}' is a one-channel scan"
            )
        mode = self._mode.value
        if mode == "3d" and config.spatial_dims != 3:
            raise ValueError("this model is 2D: choose '2D slice by slice'")
        if mode == "2d" and config.spatial_dims != 2:
            raise ValueError("this model is 3D: choose '3D window'")
        if mode == "3d" and source.volume.ndim != 3:
            raise ValueError("a 3D window needs a 3D image")
        display_axis = self._slicing_display_axis(layer, source)
        file_axis = source.file_axis(display_axis) if source.volume.ndim == 3 else 0
        volume, slice_only = source.volume, None
        if self._scope.value == "current slice" and source.volume.ndim == 3:
            data_point = layer.world_to_data(self._viewer.dims.point)
            display_index = int(np.clip(round(data_point[-3:][display_axis]), 0, layer.data.shape[-3:][display_axis] - 1))
            index = source.file_index(display_axis, display_index)
            volume = np.take(source.volume, index, axis=file_axis)
            slice_only = (file_axis, index)
        spacing = source.spacing
        if slice_only is not None:
            spacing = tuple(v for a, v in enumerate(spacing) if a != file_axis)
        options = {
            "mode": mode,
            "axis": file_axis,
            "spacing": spacing,
            "return_attention": self._with_attention.value,
            "return_probabilities": self._with_probabilities.value or self._with_uncertainty.value,
            "views": 3 if self._three_views.value and mode == "2d" and slice_only is None else 1,
            "nan": self._nan.value,
        }
        if slice_only is not None:
            options["axis"] = 0
            if mode == "3d":
                raise ValueError("'current slice' needs a 2D model; choose 'whole volume' for a 3D window")
        segmenter = Segmenter(checkpoint, device=self._device.value, precision=self._precision.value)
        return {
            "layer": layer, "source": source, "segmenter": segmenter, "volume": volume, "options": options,
            "slice_only": slice_only, "model_name": str(self._model.value), "class_names": config.class_names,
            "probabilities": self._with_probabilities.value, "uncertainty": self._with_uncertainty.value,
            "brain_mask": self._with_brain_mask.value and slice_only is None,
            "display_axis": display_axis if source.volume.ndim == 3 else None,
        }

    def _slicing_display_axis(self, layer, source: ImageSource) -> int:
        plane = self._plane.value
        if source.volume.ndim == 3 and plane != VIEW_PLANE and source.transform is None:
            raise ValueError(f"'{layer.name}' has no scanner orientation; use \"{VIEW_PLANE}\" for its slices")
        return slicing_display_axis(self._viewer, plane, source.volume.ndim)

    # ----- callbacks (GUI thread) -------------------------------------------------------------
    def _on_progress(self, value) -> None:
        done, total = value
        if self._progress is not None:
            if self._progress.total != total:
                self._progress.total = total
            self._progress.n = done
            self._progress.refresh()

    def _on_finished(self) -> None:
        self._worker = None
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._run.enabled, self._cancel.enabled = True, False

    def _on_cancelled(self, name: str) -> None:
        self._status.value = f"cancelled; '{name}' and its layers are unchanged"
        show_info(f"Segmentation of '{name}' cancelled; no layer was changed.")

    def _on_error(self, name: str, error: Exception) -> None:
        message = " ".join(str(error).split()) or type(error).__name__
        self._status.value = f"failed: {message}"
        show_error(f"Segmentation of '{name}' failed: {message}")

    def _on_done(self, request: dict, result: SegmentationResult, seconds: float) -> None:
        layer, source = request["layer"], request["source"]
        if layer not in self._viewer.layers:  # deleted while it was being segmented: no orphan layers
            self._status.value = f"'{layer.name}' was removed while it was being segmented; the result was dropped"
            show_warning(f"'{layer.name}' was removed while it was being segmented; nothing was added.")
            return
        slice_only = request["slice_only"]
        if slice_only is not None:
            result = _as_volume_slice(result, slice_only, source.volume.shape)
        before = {each.name for each in self._viewer.layers}
        # maps first, so the segmentation sits above them in the layer list; outlined when maps or it are new,
        # so the map reads inside (the user can fill it again in the layer controls: contour 0)
        attention_names = self._show_attention(layer, source, result)
        labels_name = self._show_labels(layer, source, result, slice_only)
        if attention_names and not before >= {labels_name, *attention_names.values()}:
            self._viewer.layers[labels_name].contour = LABELS_OUTLINE
        uncertain = self._show_uncertainty(layer, source, result, request) if request["uncertainty"] else ""
        if request["probabilities"]:
            self._show_probabilities(layer, source, result)
        if result.non_finite:
            show_warning(f"'{layer.name}' holds {result.non_finite} NaN or infinite voxel(s); they were segmented as "
                         "the scan's minimum (its background).")
        volumes = class_volumes_ml(result.labels, result.class_names, source.affine)
        where = "current slice" if slice_only else "volume"
        if result.views == 3:
            where += " (3 slice directions)"
        summary = ", ".join(f"{name} {value:.2f} mL" for name, value in volumes.items())
        if request["brain_mask"]:
            summary += f", brain mask {self._show_brain_mask(layer, source, result):.2f} mL"
        self._status.value = (f"{where} done in {seconds:.1f} s on {request['segmenter'].device.type}: {summary}"
                              + uncertain)
        group_with_image(self._viewer, layer)
        self._state.record_run(SegmentationRun(
            image_layer=layer.name, result=result, file_affine=source.affine, model_name=request["model_name"],
            labels_layer=labels_name, attention_layers=attention_names, slice_only=slice_only,
        ))

    # ----- layer building ---------------------------------------------------------------------
    def _show_labels(self, layer, source: ImageSource, result: SegmentationResult, slice_only) -> str:
        name = segmentation_layer_name(layer.name)
        display = source.transform.to_display(result.labels) if source.transform else result.labels
        existing = self._viewer.layers[name] if name in self._viewer.layers else None
        if existing is not None and not self._state.is_user_edited(existing) and existing.data.shape == display.shape:
            if slice_only is None:
                existing.data = display  # our own, unedited layer: replace in place
            else:
                region = _display_slice_region(source, slice_only, display.shape)
                existing.data_setitem(_region_indices(region, display.shape), display[region].reshape(-1))
            return existing.name
        if existing is not None:
            show_info(f"'{name}' holds your edits, so it is kept; the new result is a new layer.")
        new = self._viewer.add_labels(
            display, name=name, scale=layer.scale[-display.ndim :], translate=layer.translate[-display.ndim :],
            metadata=_copy_placement_metadata(layer), opacity=0.5, **labels_appearance(result.class_names),
        )
        self._state.watch_labels(new)
        return new.name

    def _show_brain_mask(self, layer, source: ImageSource, result: SegmentationResult) -> float:
        """The brain mask as its own labels layer (ours, unedited: replaced; else a new one); returns its mL."""
        mask = brain_mask(result.labels)
        display = source.transform.to_display(mask) if source.transform else mask
        name = f"{layer.name} brain mask"
        existing = self._viewer.layers[name] if name in self._viewer.layers else None
        if (existing is not None and existing.metadata.get("aunet_brain_mask") == layer.name
                and not self._state.is_user_edited(existing) and existing.data.shape == display.shape):
            existing.data = display
        else:
            metadata = {**_copy_placement_metadata(layer), "aunet_brain_mask": layer.name}
            new = self._viewer.add_labels(display, name=name, scale=layer.scale[-display.ndim:],
                                          translate=layer.translate[-display.ndim:], metadata=metadata, opacity=0.4)
            self._state.watch_labels(new)
        return float(mask.sum()) * voxel_volume_ml(source.affine, mask.ndim)

    def _show_attention(self, layer, source: ImageSource, result: SegmentationResult) -> dict[int, str]:
        # Named after the image, so segmenting a second scan never replaces the first one's maps.
        return show_attention_layers(self._viewer, layer, source, result.attention, prefix=f"{layer.name} ")

    def _show_uncertainty(self, layer, source: ImageSource, result: SegmentationResult, request: dict) -> str:
        """The entropy layer, and the most uncertain slice along the slicing axis (returned as a status suffix)."""
        if result.probabilities is None:
            return ""
        entropy = normalized_entropy(result.probabilities)
        data = source.transform.to_display(entropy) if source.transform else entropy
        name = f"{layer.name} uncertainty"
        if name in self._viewer.layers and "aunet_uncertainty" in self._viewer.layers[name].metadata:
            self._viewer.layers[name].data = data
        else:
            self._viewer.add_image(
                data, name=name, scale=layer.scale[-data.ndim :], translate=layer.translate[-data.ndim :],
                colormap="magma", contrast_limits=(0.0, 1.0), opacity=0.6, blending="additive",
                metadata={"aunet_uncertainty": layer.name},
            )
        axis = request["display_axis"]
        if axis is None or request["slice_only"] is not None:
            self.uncertain_slice = None
            self._go_uncertain.visible = False
            return ""
        corrected = set()  # slices already painted or reviewed in any labels layer over this image: skipped
        for other in self._viewer.layers:
            if isinstance(other, Labels) and other.data.shape == data.shape:
                corrected |= set(self._state.annotated_slices(other, axis))
        index = most_uncertain_slice(data, axis, exclude=sorted(corrected))
        self.uncertain_slice = None if index is None else (axis, index)
        self._go_uncertain.visible = index is not None
        return "" if index is None else f"; most uncertain slice: {index} (worth correcting next)"

    def save_volumes(self, path=None) -> Path | None:
        """Write voxels and mL per class of the image's segmentation layer (as it is now, edits included)."""
        layer = self._image.value
        run = self._state.runs.get(layer.name) if layer is not None else None
        if run is None or run.labels_layer not in self._viewer.layers:
            show_warning("Segment the image first: the volumes come from its segmentation layer.")
            return None
        path = chosen_path(path or self._volumes_path.value, ".csv")
        if path is None:
            show_warning("Choose where to save the volumes (a .csv file).")
            return None
        labels_layer = self._viewer.layers[run.labels_layer]
        data = file_order(np.asarray(labels_layer.data), labels_layer.metadata)
        try:
            save_volumes_csv(path, label_volumes(data, run.file_affine, run.result.class_names))
        except OSError as error:
            show_error(f"Cannot save the volumes: {error}")
            return None
        show_info(f"Saved {path}")
        return path

    def apply_window(self, name: str) -> None:
        """Set the image layer's contrast to a CT window (``as opened``: back to the data's own range)."""
        layer = self._image.value
        if layer is None:
            return
        if name not in CT_WINDOWS:
            layer.reset_contrast_limits()
            return
        if not looks_like_ct(layer.data):
            show_warning(f"'{layer.name}' does not look like a CT in Hounsfield units (no air near -1000 HU); "
                         "the window may show little.")
        lower, upper = ct_window_limits(name)
        low, high = layer.contrast_limits_range
        layer.contrast_limits_range = (min(low, lower), max(high, upper))
        layer.contrast_limits = (lower, upper)

    def go_to_uncertain_slice(self) -> None:
        if self.uncertain_slice is None:
            return
        axis, index = self.uncertain_slice
        layer = self._image.value
        if layer is None:
            return
        leading = layer.ndim - 3
        point = [0] * leading + [index if a == axis else 0 for a in range(3)]
        world = np.asarray(layer.data_to_world(point))
        self._viewer.dims.set_point(self._viewer.dims.ndim - 3 + axis, float(world[leading + axis]))

    def _show_probabilities(self, layer, source: ImageSource, result: SegmentationResult) -> None:
        if result.probabilities is None:
            return
        for index, class_name in enumerate(result.class_names):
            if index == 0:
                continue
            probability = result.probabilities[index]
            data = source.transform.to_display(probability) if source.transform else probability
            name = f"{layer.name} p({class_name})"
            if name in self._viewer.layers and "aunet_probability" in self._viewer.layers[name].metadata:
                self._viewer.layers[name].data = data
                continue
            self._viewer.add_image(
                data, name=name, scale=layer.scale[-data.ndim :], translate=layer.translate[-data.ndim :],
                colormap="viridis", contrast_limits=(0.0, 1.0), opacity=0.5, blending="additive", visible=False,
                metadata={"aunet_probability": class_name},
            )


def group_with_image(viewer, image) -> None:
    """Move the layers made from ``image`` (named ``<image> …``) right above it in the layer list, in the order
    they were made, so each scan's segmentation, maps and masks sit together."""
    prefix = f"{image.name} "
    ours = [layer for layer in viewer.layers if layer.name.startswith(prefix) and layer is not image]
    for layer in reversed(ours):  # each lands just above the image: the last made ends up on top
        source, target = viewer.layers.index(layer), viewer.layers.index(image) + 1
        if source != target:
            viewer.layers.move(source, target if source > target else target - 1)


def chosen_path(value, suffix: str) -> Path | None:
    """A file name from a FileEdit (or an argument) with ``suffix`` added when missing; None when empty."""
    if not value or str(value) in ("", "."):
        return None
    return Path(str(value) if str(value).endswith(suffix) else f"{value}{suffix}")


def describe_model(checkpoint: Checkpoint) -> str:
    """The model card's first sentence, plus dimensions, classes and gates when the card does not name them."""
    config = checkpoint.config
    card = " ".join(checkpoint.model_card.split())
    first = card.split(". ")[0].rstrip(".") + "." if card else ""
    gates = ", ".join(f"L{k}" for k in config.gated_levels) or "none (plain U-Net)"
    summary = f"{config.spatial_dims}D, classes: {', '.join(config.class_names)}; gates: {gates}"
    if first and "classes" in first:
        return first
    return f"{first}\n{summary}" if first else summary


def show_attention_layers(viewer, layer, source: ImageSource, attention: dict, prefix: str = "") -> dict[int, str]:
    """One image layer per gate level over ``layer`` (replaced in place on re-runs, keeping their visibility);
    returns level -> name. When a level's layer is new, one level is shown: the one already visible, else the
    finest, with its colour bar; the others are added hidden, so the scan still reads under the map."""
    names, layers, added = {}, {}, False
    for level, attention_map in attention.items():
        name = prefix + attention_layer_name(level, attention_map.factor)
        affine = attention_map.geometry.affine(source.affine)
        if source.transform is not None:
            data, placement = placed(attention_map.data, affine)
        else:  # shown in its own order: scale and translate straight from the geometry
            spacing = tuple(layer.scale[-attention_map.data.ndim :])
            origin = tuple(layer.translate[-attention_map.data.ndim :])
            scale, translate = attention_map.geometry.world(spacing, origin)
            data, placement = attention_map.data, {"scale": scale, "translate": translate}
        metadata = {"aunet_attention": {"level": level, "factor": attention_map.factor, "image": layer.name}}
        existing = viewer.layers[name] if name in viewer.layers else None
        if existing is not None and "aunet_attention" in existing.metadata:
            existing.data = data
            existing.scale, existing.translate = placement["scale"], placement["translate"]
            existing.metadata = metadata
            layers[level] = existing
        else:
            layers[level] = viewer.add_image(data, name=name, metadata=metadata, visible=False, **placement,
                                             **attention_appearance())
            added = True
        names[level] = name
    if added:
        shown = [level for level, each in sorted(layers.items()) if each.visible]
        show_one_level(layers, shown[0] if shown else min(layers))
    return names


def _copy_placement_metadata(layer) -> dict:
    """What the writer needs to save a derived layer aligned with its scan (affine, header, transform)."""
    return {key: layer.metadata[key] for key in ("aunet", "aunet_header") if key in layer.metadata}


def _as_volume_slice(result: SegmentationResult, slice_only: tuple[int, int], shape: tuple[int, ...]):
    """Place a one-slice result back in the volume: labels zero elsewhere, maps one slice thick."""
    axis, index = slice_only
    labels = np.zeros(shape, dtype=result.labels.dtype)
    labels[(slice(None),) * axis + (index,)] = result.labels
    attention = {level: attention_map.on_slice(axis, index) for level, attention_map in result.attention.items()}
    probabilities = None
    if result.probabilities is not None:
        probabilities = np.zeros((result.probabilities.shape[0], *shape), np.float32)
        probabilities[(slice(None),) + (slice(None),) * axis + (index,)] = result.probabilities
    return SegmentationResult(
        labels=labels, class_names=result.class_names, probabilities=probabilities, attention=attention,
        mode=result.mode, axis=axis,
    )


def _display_slice_region(source: ImageSource, slice_only: tuple[int, int], display_shape) -> tuple:
    file_axis, file_index = slice_only
    display_axis = source.transform.axes.index(file_axis) if source.transform else file_axis
    display_index = file_index
    if source.transform is not None and source.transform.flips[display_axis]:
        display_index = display_shape[display_axis] - 1 - file_index
    return (slice(None),) * display_axis + (slice(display_index, display_index + 1),)


def _region_indices(region: tuple, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    grids = np.meshgrid(*(np.arange(shape[a])[region[a]] if a < len(region) else np.arange(shape[a])
                          for a in range(len(shape))), indexing="ij")
    return tuple(grid.reshape(-1) for grid in grids)
