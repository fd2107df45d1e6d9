"""Attention comparison widget: which decoder level focuses on the target, shown and in numbers.

One level over the scan (the level chosen here; the others hidden), or, one click away, every level side by side
in napari's grid mode with the scan under each; a table of per-level statistics (attention mass inside the
predicted foreground, mean attention inside vs outside, normalised entropy); a PNG montage of the current slice
and the maps as NIfTI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, PushButton, Table
from napari.utils.notifications import show_error, show_info, show_warning

from ._fit import ScrollingContainer
from ._layers import ATTENTION_NOTE, attention_colormap, attention_layer_name, show_one_level
from ._state import SegmentationRun, state_for
from .engine.attention_stats import LevelStatistics, attention_statistics

TABLE_COLUMNS = ("level", "grid", "mass in %", "mean in", "mean out", "entropy")
GRID_SCAN = "aunet_grid_scan"  # metadata key of the scan copies drawn under each level in the grid
IMPORTANCE_COLUMNS = ("level", "Dice", "closed", "open", "ψ in", "ψ out")


@dataclass
class GridLayout:
    """What showing the levels side by side changed, so that turning the grid off puts it back."""

    image: str  # the segmented image shown in the grid
    order: list[str]  # the layer list before, bottom to top
    hidden: list[str]  # layers that were visible and were hidden for the grid
    named: list[str]  # layers whose name was drawn in their cell
    stride: int  # napari's grid stride before


class AttentionWidget(ScrollingContainer):
    """Compare the attention levels of the last segmentation of an image."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self._state = state_for(napari_viewer)
        self._image = ComboBox(label="segmented image", choices=self._segmented_images)
        self._level = ComboBox(label="level shown", choices=self._level_choices,
                               tooltip="The attention level drawn over the scan; the others are hidden")
        self._grid = CheckBox(
            text="all levels side by side (grid)", value=False,
            tooltip="On: napari's grid mode, one cell per level with the scan under each. "
                    "Off: the level shown above, over the scan, with the segmentation outlined",
        )
        self._grid_layout: GridLayout | None = None  # set while the levels are shown side by side
        self._refresh = PushButton(text="Update table")
        self._table = Table(value=_table_value([]))
        self._verdict = Label(label="focus")
        self._folder = FileEdit(label="export to", mode="d", value=Path.home())
        self._importance = PushButton(
            text="Which gate does the work?",
            tooltip="Dice with each gate forced closed (psi = 0) and open (psi = 1), against your painted slices of the "
                    "segmentation (or the model's own output); the gate whose closing costs most does the work",
        )
        self._importance_table = Table(value=_table_value([], IMPORTANCE_COLUMNS))
        self._importance_table.native.setMinimumHeight(110)
        self._importance_verdict = Label(label="work")
        self._importance_verdict.native.setWordWrap(True)
        self.importance_report: dict | None = None
        self._export_png = PushButton(text="Export PNG montage (current slice)")
        self._export_nifti = PushButton(text="Export maps as NIfTI")
        self._table.native.setMinimumHeight(140)
        self._table.native.horizontalHeader().setStretchLastSection(True)
        note = Label(value=ATTENTION_NOTE)
        note.native.setWordWrap(True)
        self._verdict.native.setWordWrap(True)
        self.extend([
            self._image, self._level, self._grid, self._refresh, self._table,
            self._verdict, self._importance, self._importance_table, self._importance_verdict, self._folder,
            self._export_png, self._export_nifti, note,
        ])
        self._importance.clicked.connect(self.measure_importance)
        self._image.changed.connect(self._on_image_changed)
        self._level.changed.connect(self._on_level_changed)
        self._grid.changed.connect(lambda on: self.show_side_by_side() if on else self.show_overlay())
        napari_viewer.canvas.grid.events.enabled.connect(self._on_napari_grid)
        self._refresh.clicked.connect(self.update_table)
        self._export_png.clicked.connect(lambda: self.export_png())
        self._export_nifti.clicked.connect(lambda: self.export_nifti())
        napari_viewer.layers.events.inserted.connect(self._on_layers_changed)
        self._state.run_listeners.append(self.show_run)
        napari_viewer.layers.selection.events.active.connect(self._follow_selection)
        self.fit_screen()

    # ----- choices ------------------------------------------------------------------------------
    def _segmented_images(self, widget=None) -> list[str]:
        return [name for name in self._state.runs if name in self._viewer.layers]

    def _level_choices(self, widget=None) -> list[tuple[str, int]]:
        run = self._run(quiet=True)
        if run is None:
            return []
        return [(attention_layer_name(level, m.factor), level) for level, m in sorted(run.result.attention.items())]

    def _on_layers_changed(self, event=None) -> None:
        # only the choices: a finished segmentation refreshes levels and table once (show_run), not per layer
        self.reset_choices()

    def _follow_selection(self, event=None) -> None:
        """Selecting a segmented image, its segmentation or one of its attention layers shows that image here."""
        layer = self._viewer.layers.selection.active
        if layer is None:
            return
        image = layer.metadata.get("aunet_attention", {}).get("image")
        for run in self._state.runs.values():
            if layer.name in (run.image_layer, run.labels_layer):
                image = run.image_layer
        if image in self._segmented_images() and image != self._image.value:
            self._image.value = image  # (its changed signal refreshes the levels and the table)

    def show_run(self, image_name: str) -> None:
        """A segmentation just finished: choose its image, fill the table and show its maps as chosen here (one
        level over the scan, or the grid)."""
        self.reset_choices()
        if image_name not in self._image.choices:
            return
        if self._image.value == image_name:
            self._on_image_changed()  # the same image segmented again: new levels and numbers
        else:
            self._image.value = image_name
        run = self._run(quiet=True)
        if run is not None and run.result.attention:
            self.show_side_by_side() if self._grid.value else self.show_overlay()

    def _on_image_changed(self, value=None) -> None:
        """Levels of the chosen image (the level shown kept when it has it, else its finest) and its table."""
        choices = [choice for _, choice in self._level_choices()]
        with self._level.changed.blocked():  # choosing an image in the list shows nothing by itself
            self._level.reset_choices()
            if choices and self._level.value not in choices:
                self._level.value = choices[0]
        self.update_table(quiet=True)
        if self._grid_layout is not None and self._grid_layout.image != self._image.value:
            self.show_side_by_side()  # the grid follows the image

    def _run(self, quiet: bool = False) -> SegmentationRun | None:
        name = self._image.value
        run = self._state.runs.get(name) if name else None
        if run is None and not quiet:
            show_warning("Segment an image first (Segment widget) with 'attention layers' on.")
        elif run is not None and not run.result.attention and not quiet:
            show_warning(f"The last segmentation of '{name}' has no attention maps (plain U-Net or turned off).")
            return None
        return run

    def _attention_layers(self, run: SegmentationRun) -> dict[int, object]:
        """Level -> attention layer of ``run``, for the layers still in the viewer."""
        names = run.attention_layers
        return {level: self._viewer.layers[name] for level, name in sorted(names.items()) if name in self._viewer.layers}

    # ----- views --------------------------------------------------------------------------------
    def _on_level_changed(self, level=None) -> None:
        if not self._grid.value:
            self.show_overlay()

    def show_overlay(self) -> None:
        """One level over the scan: grid mode off (the layer list as it was), the scan visible, only the chosen
        level's map visible, with its colour bar."""
        self._leave_grid()
        self._set_grid_box(False)
        run = self._run()
        if run is None:
            return
        layers = self._attention_layers(run)
        if not layers:
            show_warning("The attention layers were deleted; run Segment again to bring them back.")
            return
        if run.image_layer in self._viewer.layers:
            self._viewer.layers[run.image_layer].visible = True
        level = self._level.value if self._level.value in layers else min(layers)
        show_one_level(layers, level)

    def show_side_by_side(self) -> None:
        """Napari grid mode: one cell per level, each map over a copy of the scan (a second layer on the same
        array), the finest top left, then the segmentation over the scan; every other layer is hidden until the
        grid is turned off."""
        self._leave_grid()
        run = self._run()
        layers = self._attention_layers(run) if run is not None else {}
        if not layers:
            if run is not None:
                show_warning("The attention layers were deleted; run Segment again to bring them back.")
            self._set_grid_box(False)
            return
        viewer = self._viewer
        active = viewer.layers.selection.active
        scan = viewer.layers[run.image_layer] if run.image_layer in viewer.layers else None
        labels = viewer.layers[run.labels_layer] if run.labels_layer in viewer.layers else None
        last_cell = [labels, scan] if scan is not None and labels is not None else []
        shown = [*layers.values(), *last_cell]
        layout = GridLayout(
            image=run.image_layer, order=[layer.name for layer in viewer.layers],
            hidden=[layer.name for layer in viewer.layers if layer.visible and layer not in shown],
            named=[layer.name for layer in shown if layer is not scan], stride=viewer.canvas.grid.stride,
        )
        for name in layout.hidden:
            viewer.layers[name].visible = False

        def to_top(layer, name_shown: bool) -> None:
            viewer.layers.move(viewer.layers.index(layer), len(viewer.layers))
            layer.visible = True
            if name_shown:
                layer.name_overlay.font_size = 8  # beside the colour bar in a cell a third of the canvas wide
                layer.name_overlay.visible = True

        # Top of the list, top to bottom: L1, scan, L2, scan, …, segmentation, scan. With a stride of -2 napari
        # groups the layers in pairs from the top: each cell holds one layer over its scan.
        for layer in reversed(last_cell):
            to_top(layer, layer is labels)
        for level, layer in sorted(layers.items(), reverse=True):
            if scan is not None:
                data, state, _ = scan.as_layer_data_tuple()
                state.update(name=f"{run.image_layer} under L{level}", visible=True,
                             metadata={GRID_SCAN: run.image_layer})
                to_top(viewer.add_image(data, **state), False)
            to_top(layer, True)
            layer.colorbar.visible = True
        self._grid_layout = layout
        with self._napari_grid_quiet():
            viewer.canvas.grid.stride = -2 if scan is not None else -1
            viewer.canvas.grid.enabled = True
        self._set_grid_box(True)
        if active is not None and active in viewer.layers:
            viewer.layers.selection.active = active

    def _leave_grid(self) -> None:
        """Undo what the grid changed: scan copies removed, layer order and hidden layers back, grid off."""
        viewer = self._viewer
        layout, self._grid_layout = self._grid_layout, None
        for layer in [layer for layer in viewer.layers if GRID_SCAN in layer.metadata]:
            viewer.layers.remove(layer)
        with self._napari_grid_quiet():
            viewer.canvas.grid.enabled = False
            if layout is not None:
                viewer.canvas.grid.stride = layout.stride
        if layout is None:
            return
        for name in layout.named:
            if name in viewer.layers:
                viewer.layers[name].name_overlay.visible = False
        # the recorded layers back in their recorded order, in the slots they hold now; later layers stay put
        names = [layer.name for layer in viewer.layers]
        recorded = [name for name in layout.order if name in names]
        slots = iter(recorded)
        wanted = [next(slots) if name in recorded else name for name in names]
        viewer.layers.move_multiple([names.index(name) for name in wanted], 0)
        for name in layout.hidden:
            if name in viewer.layers:
                viewer.layers[name].visible = True

    def _set_grid_box(self, on: bool) -> None:
        with self._grid.changed.blocked():
            self._grid.value = on

    def _napari_grid_quiet(self):
        return self._viewer.canvas.grid.events.enabled.blocker(self._on_napari_grid)

    def _on_napari_grid(self, event=None) -> None:
        """napari's own grid button: the box follows it; turning it off leaves our grid as from the box."""
        enabled = self._viewer.canvas.grid.enabled
        if not enabled and self._grid_layout is not None:
            self.show_overlay()
        self._set_grid_box(enabled)

    # ----- numbers ------------------------------------------------------------------------------
    def statistics(self) -> list[LevelStatistics]:
        run = self._run(quiet=True)
        if run is None or not run.result.attention:
            return []
        foreground = run.result.labels > 0
        return attention_statistics(run.result.attention, foreground)

    def update_table(self, quiet: bool = False) -> None:
        rows = self.statistics()
        if not rows:
            self._table.value = _table_value([])
            self._verdict.value = "" if quiet else "no attention maps to compare"
            return
        self._table.value = _table_value([
            [f"L{r.level}", f"1/{r.factor}", f"{100 * r.mass_inside:.1f}", f"{r.mean_inside:.2f}",
             f"{r.mean_outside:.2f}", f"{r.entropy:.2f}"]
            for r in rows
        ])
        best = max(rows, key=lambda r: r.mass_inside)
        if np.isnan(best.mean_inside):
            self._verdict.value = "the prediction has no foreground: nothing to focus on"
        else:
            self._verdict.value = (
                f"L{best.level} focuses most on the predicted foreground: {100 * best.mass_inside:.1f} % of its "
                f"attention lies there (mean {best.mean_inside:.2f} inside vs {best.mean_outside:.2f} outside)"
            )

    def measure_importance(self) -> None:
        """Run the level-importance report (engine.importance) for the chosen image in a thread; fills the table."""
        from napari.qt.threading import thread_worker

        from ._segment_widget import image_source
        from .engine.importance import level_importance
        from .engine.inference import Segmenter

        run = self._run()
        if run is None:
            return
        if run.image_layer not in self._viewer.layers:
            show_warning(f"'{run.image_layer}' was removed; segment an image first.")
            return
        try:
            source = image_source(self._viewer.layers[run.image_layer], self._viewer)
            segmenter = Segmenter(self._state.checkpoint(run.model_name), device="auto")
        except (ValueError, OSError) as error:
            show_error(f"Cannot measure the gates: {error}")
            return
        axis = run.result.axis if run.result.axis is not None else 0
        labels, slices = self._painted_reference(run, source, axis)

        @thread_worker(ignore_errors=True)
        def work():
            return level_importance(segmenter, source.volume, axis=axis, labels=labels, slices=slices,
                                    spacing=source.spacing)
            yield  # a generator, so it can be stopped with the widget

        worker = work()
        worker.returned.connect(self._show_importance)
        worker.errored.connect(lambda error: show_error(f"Cannot measure the gates: {error}"))
        self._importance.enabled = False
        worker.finished.connect(lambda: setattr(self._importance, "enabled", True))
        self._importance_verdict.value = "measuring: each gate closed, then open…"
        self.start_worker(worker)

    def _painted_reference(self, run: SegmentationRun, source, axis: int):
        """The segmentation layer's painted slices (file order) as the reference, when the user corrected some."""
        from ._orientation import file_order

        name = run.labels_layer
        layer = self._viewer.layers[name] if name and name in self._viewer.layers else None
        if layer is None or source.volume.ndim != 3 or source.transform is None:
            return None, None
        display_axis = source.transform.axes.index(axis)
        painted = self._state.annotated_slices(layer, display_axis)
        if not painted:
            return None, None
        labels = file_order(np.asarray(layer.data), layer.metadata)
        slices = sorted({source.file_index(display_axis, i) for i in painted})
        return labels, slices

    def _show_importance(self, report: dict) -> None:
        self.importance_report = report
        rows = report["levels"]
        self._importance_table.value = _table_value([
            [f"L{r['level']}", f"{r['dice']:.2f}", f"{r['change_closed']:+.2f}", f"{r['change_open']:+.2f}",
             f"{np.mean([v for k, v in r['mean_psi'].items() if k != 'outside'] or [float('nan')]):.2f}",
             f"{r['mean_psi'].get('outside', float('nan')):.2f}"]
            for r in rows
        ], IMPORTANCE_COLUMNS)
        self.fit_screen()
        against = "your painted slices" if report["reference"] == "labels" else "the model's own output"
        top = rows[0]
        self._importance_verdict.value = (
            f"L{top['level']} does the most work: closing it changes Dice by {top['change_closed']:+.2f} against "
            f"{against} ({len(report['slices'])} slices); sorted by that change")

    # ----- export -------------------------------------------------------------------------------
    def _export_folder(self, folder) -> Path | None:
        folder = Path(folder if folder is not None else self._folder.value)
        if not folder.is_dir():
            show_error(f"Cannot export: '{folder}' is not a folder.")
            return None
        return folder

    def export_nifti(self, folder=None) -> list[Path]:
        """Write ``level<k>.nii.gz`` for every level of the last run, placed over the scan's file."""
        from .io import ScanWriteError, save_attention_maps

        run, folder = self._run(), self._export_folder(folder)
        if run is None or folder is None:
            return []
        image = self._viewer.layers[run.image_layer]
        header = image.metadata.get("aunet_header")
        try:
            written = save_attention_maps(
                folder,
                {level: (m.data, m.geometry.affine(run.file_affine)) for level, m in run.result.attention.items()},
                header=header,
            )
        except ScanWriteError as error:
            show_error(str(error))
            return []
        show_info(f"Wrote {len(written)} attention maps to {folder}")
        return written

    def export_png(self, path=None) -> Path | None:
        """A montage of the current slice: the scan, then every level over the scan, coloured as on the canvas."""
        run = self._run()
        if run is None:
            return None
        if path is None:
            folder = self._export_folder(None)
            if folder is None:
                return None
            step = "-".join(str(s) for s in self._viewer.dims.current_step)
            path = folder / f"{run.image_layer}-attention-{step}.png"
        image = self._viewer.layers[run.image_layer]
        levels = [self._viewer.layers[n] for n in run.attention_layers.values() if n in self._viewer.layers]
        try:
            montage = render_montage(self._viewer, image, levels)
            _write_png(Path(path), montage)
        except (OSError, ValueError) as error:
            show_error(f"Cannot export the montage: {error}")
            return None
        show_info(f"Saved {path}")
        return Path(path)


def _table_value(rows: list[list], columns=TABLE_COLUMNS) -> dict:
    """magicgui's "split" table format (data, index and columns all given, or it reads columns)."""
    return {"data": rows, "index": [str(i + 1) for i in range(len(rows))], "columns": list(columns)}


def _slice_grid(viewer, layer) -> tuple[np.ndarray, tuple[int, int]]:
    """World coordinates of the displayed plane's pixels of ``layer`` at the current slice: (H, W, ndim)."""
    offset = viewer.dims.ndim - layer.ndim
    displayed = [axis - offset for axis in viewer.dims.displayed[-2:]]
    data_point = np.asarray(layer.world_to_data(viewer.dims.point), float)
    shape = [layer.data.shape[a] for a in displayed]
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    index = np.broadcast_to(np.round(data_point), (*shape, layer.ndim)).copy()
    index[..., displayed[0]] = rows
    index[..., displayed[1]] = cols
    world = index * np.asarray(layer.scale) + np.asarray(layer.translate)
    return world, (shape[0], shape[1])


def _sample(layer, world: np.ndarray) -> np.ndarray:
    """Nearest-neighbour values of ``layer`` at world points (H, W, ndim); NaN outside the layer."""
    index = np.round((world - np.asarray(layer.translate)) / np.asarray(layer.scale)).astype(int)
    shape = np.asarray(layer.data.shape)
    inside = np.all((index >= 0) & (index < shape), axis=-1)
    clipped = np.clip(index, 0, shape - 1)
    values = np.asarray(layer.data)[tuple(np.moveaxis(clipped, -1, 0))].astype(np.float32)
    values[~inside] = np.nan
    return values


def render_montage(viewer, image, levels: list) -> np.ndarray:
    """RGB uint8 montage (H, W * (1 + levels), 3) of the current slice: the scan, then each level over it, blended
    by the attention colormap's alpha as the canvas does (translucent)."""
    world, _ = _slice_grid(viewer, image)
    scan = _sample(image, world)
    low, high = image.contrast_limits
    grey = np.clip((np.nan_to_num(scan, nan=low) - low) / max(high - low, 1e-6), 0, 1)
    tiles = [np.repeat(grey[..., None], 3, axis=-1)]
    colormap = attention_colormap()
    for layer in levels:
        values = np.clip(np.nan_to_num(_sample(layer, world), nan=0.0), 0, 1)
        rgba = colormap.map(values.reshape(-1)).reshape(*values.shape, 4)
        alpha = rgba[..., 3:] * layer.opacity
        tiles.append(np.clip((1 - alpha) * tiles[0] + alpha * rgba[..., :3], 0, 1))
    separator = np.ones((grey.shape[0], 2, 3))
    parts = []
    for tile in tiles:
        parts.extend([tile, separator])
    return (np.concatenate(parts[:-1], axis=1) * 255).astype(np.uint8)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG atomically (temporary file + rename)."""
    import os
    import tempfile

    from qtpy.QtGui import QImage

    if not path.parent.is_dir():
        raise ValueError(f"folder '{path.parent}' does not exist")
    rgb = np.ascontiguousarray(rgb)
    height, width, _ = rgb.shape
    qimage = QImage(rgb.data, width, height, 3 * width, QImage.Format_RGB888)
    handle, temp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        if not qimage.save(temp, "PNG"):
            raise OSError(f"could not write '{path}'")
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)
