"""`aunet demo`: a sample scan, its segmentation and one layer per attention level, in napari."""

from __future__ import annotations

import sys
from pathlib import Path


def run_demo(screenshot: str | None = None, output_dir: str = "demo-output") -> int:
    import numpy as np

    from .engine.bundled import load_model
    from .engine.inference import Segmenter
    from .engine.phantoms import generate_phantom
    from .io import save_image, save_labels

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    phantom = generate_phantom((48, 128, 128), seed=2024)
    spacing = (2.0, 1.0, 1.0)
    affine = np.diag([*spacing, 1.0])
    save_image(folder / "phantom.nii.gz", phantom.image, affine=affine)
    segmenter = Segmenter(load_model("phantom"))
    result = segmenter.segment(phantom.image, mode="2d", axis=0)
    save_labels(folder / "phantom_labels.nii.gz", result.labels, affine=affine)
    print(f"wrote {folder / 'phantom.nii.gz'} and {folder / 'phantom_labels.nii.gz'}", file=sys.stderr)

    import napari

    viewer = napari.Viewer(title="napari-aunet demo", show=screenshot is None)
    viewer.add_image(phantom.image, name="phantom", scale=spacing, colormap="gray")
    for level, attention in result.attention.items():
        scale, translate = attention.geometry.world(spacing, (0.0, 0.0, 0.0))
        viewer.add_image(
            attention.data.astype(np.float32), name=f"attention L{level} (1/{attention.factor})", scale=scale,
            translate=translate, colormap="inferno", blending="additive", opacity=0.5, contrast_limits=(0, 1),
            visible=level == 1,
        )
    viewer.add_labels(result.labels, name="segmentation", scale=spacing, opacity=0.5)
    viewer.dims.set_current_step(0, phantom.image.shape[0] // 2)
    if screenshot:
        viewer.screenshot(screenshot, canvas_only=False)
        viewer.close()
        print(screenshot)
        return 0
    napari.run()
    return 0
