"""Label names and colours: apply an ITK-SNAP label description file to a Labels layer, or save one from it."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import FileEdit, Label, PushButton, create_widget
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning

from ._fit import ScrollingContainer
from ._layers import class_colors, layer_class_names
from ._segment_widget import chosen_path
from .io.labeldesc import LabelDescription, LabelFileError, read_label_descriptions, write_label_descriptions


class LabelsWidget(ScrollingContainer):
    """Names and colours of a labels layer, in and out as ITK-SNAP label description files."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self._labels_layer = create_widget(label="labels layer", annotation=Labels)
        self._source = FileEdit(label="label file", mode="r", filter="*.txt *.label *.lut")
        self._apply = PushButton(text="Apply names and colours")
        self._target = FileEdit(label="save as", mode="w", filter="*.txt")
        self._save = PushButton(text="Save ITK-SNAP label file")
        self._status = Label(label="status")
        self._status.native.setWordWrap(True)
        self.extend([self._labels_layer, self._source, self._apply, self._target, self._save, self._status])
        self._apply.clicked.connect(lambda: self.apply_file())
        self._save.clicked.connect(lambda: self.save_file())
        self.fit_screen()

    def apply_file(self, path=None) -> list[LabelDescription]:
        """Give the layer the file's names (``class`` feature, shown in the status bar) and colours."""
        from napari.utils.colormaps import DirectLabelColormap

        layer = self._labels_layer.value
        path = path or self._source.value
        if layer is None or not path or str(path) in ("", "."):
            show_warning("Choose a labels layer and an ITK-SNAP label description file.")
            return []
        try:
            entries = read_label_descriptions(path)
        except LabelFileError as error:
            show_error(str(error))
            return []
        colors = class_colors()  # values the file does not name keep a colour
        for entry in entries:
            if entry.value != 0:
                alpha = entry.alpha if entry.visible else 0.0
                colors[entry.value] = (*(c / 255 for c in entry.rgb), alpha)
        layer.colormap = DirectLabelColormap(color_dict=colors)
        values = sorted({0, *(e.value for e in entries)})
        names = {e.value: e.name for e in entries}
        layer.features = {"index": values, "class": [names.get(v, "background" if v == 0 else "") for v in values]}
        present = {int(v) for v in np.unique(np.asarray(layer.data))} - {0}
        missing = sorted(present - set(names))
        self._status.value = f"{len(entries)} labels applied" + (
            f"; values without a name in the file: {', '.join(map(str, missing[:10]))}" if missing else "")
        return entries

    def save_file(self, path=None):
        """Write every label value of the layer (and every named one) with its name and current colour."""
        layer = self._labels_layer.value
        path = chosen_path(path or self._target.value, ".txt")
        if layer is None or path is None:
            show_warning("Choose a labels layer and where to save the label file.")
            return None
        names = layer_class_names(layer)
        values = sorted(({int(v) for v in np.unique(np.asarray(layer.data))} | set(names)) - {0})
        entries = [LabelDescription(0, (0, 0, 0), 0.0, False, False, "Clear Label")]
        for value in values:
            rgba = np.asarray(layer.get_color(value), dtype=float).reshape(-1)
            rgb = tuple(int(round(c * 255)) for c in rgba[:3])
            entries.append(LabelDescription(value, rgb, float(rgba[3]), True, True, names.get(value, f"Label {value}")))
        try:
            write_label_descriptions(path, entries)
        except OSError as error:
            show_error(f"Cannot save the label file: {error}")
            return None
        show_info(f"Saved {path}")
        self._status.value = f"saved {len(entries) - 1} labels to {path.name}"
        return path

