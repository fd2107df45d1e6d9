"""The bundled brain model on scans it was not trained on: tables, and a napari screenshot.

1. nibabel's own ``tests/data/anatomical.nii`` (a real T1, 2 mm, cropped to the deep brain, 33x41x25; no labels):
   agreement of the model's map with a 3-class intensity clustering (k-means on the voxel values: dark = CSF,
   middle = grey matter, bright = white matter) and the mean intensity of each predicted class.
2. The MNI152 T1 the model was trained on, shifted the way real scans differ: field of view (deep-brain crop,
   no skull) and resolution (2 mm block averages): Dice against the recipe's labels.

    python benchmarks/brain_unseen.py [--model brain] [--screenshot docs/brain_unseen.png]

The screenshot runs the Segment widget in a real napari window (axial slice 9 of anatomical.nii; left: the
scan with the labels at half opacity, red grey matter, green white matter; right: the scan alone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.inference import Segmenter
from napari_aunet.io import load_scan
from napari_aunet.recipes import mni_tissue
from napari_aunet.training_data import intensity_classes

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
CLASSES = ("background or CSF", "grey matter", "white matter")
DEEP = (slice(66, 132), slice(80, 162), slice(60, 110))  # MNI voxels around the ventricles and basal ganglia
MID = (slice(40, 158), slice(50, 190), slice(50, 130))


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    a, b = a == label, b == label
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    shape = [n // factor for n in volume.shape]
    trimmed = volume[tuple(slice(0, n * factor) for n in shape)].astype(np.float32)
    return trimmed.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


def unseen_table(segmenter: Segmenter) -> list[str]:
    scan = load_scan(ANATOMICAL)
    result = segmenter.segment(scan.data, mode="2d", axis=2, spacing=scan.spacing, return_attention=False)
    names = result.class_names
    grey, white = names.index("grey matter"), names.index("white matter")
    labels = np.where(result.labels == grey, 1, np.where(result.labels == white, 2, 0))  # dark = background or CSF
    clusters = intensity_classes(scan.data, np.ones(scan.data.shape, bool), 3)  # dark, middle, bright
    rows = ["| class | share of voxels | mean intensity | Dice with the k-means class |", "|---|---|---|---|"]
    for k, name in enumerate(CLASSES):
        inside = labels == k
        mean = float(scan.data[inside].mean()) if inside.any() else float("nan")
        rows.append(f"| {name} | {inside.mean():.1%} | {mean:.0f} | {dice(labels, clusters, k):.3f} |")
    return rows


def shifted_mni_table(segmenter: Segmenter) -> list[str]:
    image, labels = mni_tissue()
    rows = ["| MNI152 T1 as | shape | Dice GM | Dice WM |", "|---|---|---|---|"]
    cases = [("whole head, 1 mm", (slice(None),) * 3, 1), ("whole head, 2 mm", (slice(None),) * 3, 2),
             ("deep-brain crop, 1 mm", DEEP, 1), ("deep-brain crop, 2 mm", DEEP, 2),
             ("mid-brain crop, 2 mm", MID, 2)]
    for name, box, factor in cases:
        volume, truth = image[box], labels[box]
        if factor > 1:
            volume = block_mean(volume, factor)
            truth = truth[tuple(slice(0, n * factor, factor) for n in volume.shape)]
        predicted = segmenter.segment(volume, mode="2d", axis=2, spacing=(factor,) * 3,
                                      return_attention=False).labels
        rows.append(f"| {name} | {'x'.join(map(str, volume.shape))} | {dice(predicted, truth, 1):.3f} | "
                    f"{dice(predicted, truth, 2):.3f} |")
    return rows


def screenshot(model: str, path: str, axial_slice: int = 9) -> None:
    import napari

    from napari_aunet._demo import save_window, wait_until_done

    viewer = napari.Viewer(title="brain model on an unseen T1", show=True)
    viewer.window._qt_window.resize(1300, 800)
    viewer.open(str(ANATOMICAL), plugin="napari-aunet")
    scan_layer = viewer.layers[0]
    _, segment = viewer.window.add_plugin_dock_widget("napari-aunet", "Segment")
    segment.reset_choices()
    segment._image.value = scan_layer
    segment.select_model(model)
    segment._view.value = "axial"
    segment._with_attention.value = False
    segment.run()
    wait_until_done(segment, 120)
    labels = viewer.layers[f"{scan_layer.name} segmentation"]
    labels.opacity = 0.5
    viewer.add_image(scan_layer.data, name=f"{scan_layer.name} (scan only)", **_placement(scan_layer))
    # Grid cells take the layers in pairs from the bottom: [scan, labels] and [plain copy].
    viewer.grid.enabled, viewer.grid.stride = True, 2
    viewer.dims.set_current_step(2, axial_slice)
    viewer.reset_view()
    save_window(viewer, path)


def _placement(layer) -> dict:
    """The keyword arguments that put a copy of ``layer`` exactly where it is, same contrast."""
    return {"scale": layer.scale, "translate": layer.translate, "rotate": layer.rotate, "shear": layer.shear,
            "affine": layer.affine, "contrast_limits": layer.contrast_limits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brain")
    parser.add_argument("--screenshot", metavar="PNG")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    segmenter = Segmenter(load_model(args.model))
    print(f"## {ANATOMICAL.name} (nibabel test data, real T1, 2 mm), model {args.model}\n")
    print("\n".join(unseen_table(segmenter)))
    print("\n## MNI152 T1 with a shifted field of view and resolution\n")
    print("\n".join(shifted_mni_table(segmenter)))
    if args.screenshot:
        screenshot(args.model, args.screenshot)
        print(f"\nwrote {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
