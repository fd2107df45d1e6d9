"""Layer building: engine outputs (file order, with geometry) to napari layer data and keyword arguments.

Every array is placed through the display convention of ``_orientation`` (RAS axes, ``scale`` = voxel
size in mm, ``translate`` = world position of the first voxel), so an attention map at a coarser grid lines
up with the scan by construction, without resampling.
"""

from __future__ import annotations

import numpy as np

from ._orientation import display_placement
from .io.tables import label_volumes

ATTENTION_COLORMAP = "attention"  # see attention_colormap()
# value -> RGBA of the attention colormap: clear where a gate passes little, so the scan reads through, then dark
# red, orange and a pale yellow where it passes everything; alpha grows faster than linearly, so the typical
# 0.3-0.6 background of a gate tints the scan instead of covering it.
ATTENTION_COLORS = (
    (0.0, (0.55, 0.0, 0.0, 0.0)),
    (0.3, (0.8, 0.1, 0.0, 0.08)),
    (0.6, (1.0, 0.45, 0.0, 0.35)),
    (0.85, (1.0, 0.72, 0.1, 0.55)),
    (1.0, (1.0, 0.92, 0.45, 0.65)),  # never opaque: the scan reads even where a gate passes everything
)
LABELS_OUTLINE = 1  # contour width (voxels) of a segmentation shown with attention maps: the map reads inside it
ATTENTION_NOTE = (
    "Attention maps show where each gate lets skip features through; "
    "they are not a faithful explanation of the network's decision."
)
# Colours of classes 1, 2, … (class 0, background, is transparent).
CLASS_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#46f0f0", "#f032e6")
PAINTABLE_VALUES = 255  # label values given a colour: every value a uint8 labels layer holds


def attention_layer_name(level: int, factor: int) -> str:
    """``attention L1 (1/1)``, ``attention L2 (1/2)`` …: sorts and reads naturally."""
    return f"attention L{level} (1/{factor})"


def segmentation_layer_name(image_name: str) -> str:
    return f"{image_name} segmentation"


def placed(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, dict]:
    """File-order ``data`` on the grid of ``affine`` -> display-order data and ``scale``/``translate``."""
    transform, scale, translate = display_placement(affine, data.shape)
    return transform.to_display(data), {"scale": tuple(scale), "translate": tuple(translate)}


def labels_appearance(class_names: tuple[str, ...]) -> dict:
    """Class names as features (one row per label value) and a fixed colour per class.

    Values beyond the model's classes (a class the user paints in) get napari's own label colours, so a painted
    new class is as visible as the model's.
    """
    from napari.utils.colormaps import DirectLabelColormap

    return {
        "features": {"index": list(range(len(class_names))), "class": list(class_names)},
        "colormap": DirectLabelColormap(color_dict=class_colors()),
    }


def class_colors() -> dict:
    """Label value -> colour: ours for values 1-8, napari's label palette beyond; 0 transparent."""
    from napari.utils.colormaps import label_colormap

    palette = label_colormap(PAINTABLE_VALUES).colors
    colors = {None: "transparent", 0: "transparent"}
    for index in range(1, PAINTABLE_VALUES + 1):
        colors[index] = CLASS_COLORS[index - 1] if index <= len(CLASS_COLORS) else tuple(palette[index % len(palette)])
    return colors


def layer_class_names(layer) -> dict[int, str]:
    """Label value -> name from a labels layer's features (``class`` or ``name`` column, rows by ``index``),
    as Segment and the Label names widget set them."""
    features = layer.features
    column = next((c for c in ("class", "name", "label") if c in features.columns), None)
    if column is None or not len(features):
        return {}
    index = features["index"] if "index" in features.columns else range(len(features))
    return {int(i): str(n) for i, n in zip(index, features[column], strict=True) if str(n)}


def attention_colormap():
    """The attention maps' napari colormap (``ATTENTION_COLORS``): transparent at 0, warm and two-thirds opaque
    at 1."""
    from napari.utils.colormaps import Colormap

    controls, colors = zip(*ATTENTION_COLORS, strict=True)
    return Colormap(colors=list(colors), controls=list(controls), name=ATTENTION_COLORMAP,
                    display_name="attention (clear at 0)")


def attention_appearance() -> dict:
    """One attention map over a greyscale scan: the colormap's own alpha does the blending (translucent)."""
    return {
        "colormap": attention_colormap(),
        "blending": "translucent",
        "opacity": 1.0,
        "contrast_limits": (0.0, 1.0),
    }


def show_one_level(layers: dict[int, object], level: int) -> None:
    """Of the attention layers ``level -> layer`` of one image, make ``level``'s the only visible one, with its
    colour bar (0-1) on the canvas."""
    for each, layer in layers.items():
        layer.visible = each == level
        layer.colorbar.visible = each == level


def class_volumes_ml(labels: np.ndarray, class_names: tuple[str, ...], affine: np.ndarray) -> dict[str, float]:
    """Volume of each foreground class in mL."""
    return {row["name"]: row["ml"] for row in label_volumes(labels, affine, class_names)}
