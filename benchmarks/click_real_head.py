"""Click to segment on a real head, looked at: one click on each caudate head, putamen and thalamus of the ROBEX head.

The ROBEX reference head (resources/samples/robex_head_t1.nii.gz: one real person, 1.5 mm, skull and neck) is the
image no click model trained on, but it has no structure labels, so this is a picture and a table of what comes
back, not a score: the region's size, whether the window cut it, its share on dark CSF (the lateral ventricles the
caudate borders; brain-mask voxels below the brain's 20th percentile) and its pixels across the midline, in the
other hemisphere (the other caudate or thalamus). The clicks were placed by eye at the centre of each structure on
axial slices 90 and 95. Beside the model, fed the same click: the random walker and the flood fill of the held-out
benchmark (clicks_structures.py). One row per method and click.

    python benchmarks/click_real_head.py [--model click] [--out docs/click_real_head.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from clicks_structures import flood_baseline, walker_baseline
from PIL import Image, ImageDraw
from scipy import ndimage

from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.clicks import Click, ClickSegmenter, cut_by_window
from napari_aunet.engine.inference import Segmenter

ROOT = Path(__file__).resolve().parents[1]
HEAD = ROOT / "resources" / "samples" / "robex_head_t1.nii.gz"
BRAIN = ROOT / "resources" / "samples" / "robex_head_brain_mask.nii.gz"
AXIS = 2  # axial (the file is LAS)
# (i, j, k) in the file's voxel order; placed by eye
CLICKS = {"caudate 1": (50, 86, 95), "caudate 2": (66, 86, 95), "putamen 1": (40, 78, 95),
          "putamen 2": (78, 78, 95), "thalamus 1": (52, 68, 90), "thalamus 2": (66, 68, 90)}
COLOURS = {"caudate": (255, 60, 60), "putamen": (60, 200, 255), "thalamus": (255, 220, 0)}
VIEW = (20, 100, 45, 115)  # i0, i1, j0, j1 of the picture
MIDLINE = 58  # i of the septum between the frontal horns and of the third ventricle, by eye


def model_masks(session: ClickSegmenter, scale: float) -> dict[str, tuple[np.ndarray, bool]]:
    """Each click of CLICKS alone, as a new object, its slice's first click shown at ``scale``."""
    volume = session.volume
    session.first_click_scale = scale
    masks = {}
    for structure, point in CLICKS.items():
        session.new_object()
        current = np.zeros(volume.shape, bool)
        update = session.click(current, Click(point, True), axis=AXIS)
        current[update.region] = update.mask
        cut = cut_by_window(update.mask[..., 0], update.region[:AXIS], volume.shape[:AXIS])
        masks[structure] = (current[:, :, point[2]], cut)
    return masks


def panel(volume: np.ndarray, masks: dict, index: int, title: str, zoom: int = 4) -> Image.Image:
    i0, i1, j0, j1 = VIEW
    low, high = np.percentile(volume[volume > 0], [5, 99.5])
    grey = (np.clip((volume[i0:i1, j0:j1, index].T[::-1] - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, -1)
    for structure, (mask, _) in masks.items():
        if CLICKS[structure][2] == index:
            shown = mask[i0:i1, j0:j1].T[::-1]
            rgb[shown & ~ndimage.binary_erosion(shown)] = COLOURS[structure.split()[0]]
    image = Image.fromarray(rgb).resize((rgb.shape[1] * zoom, rgb.shape[0] * zoom), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for i, j, k in CLICKS.values():
        if k == index:
            x, y = (i - i0) * zoom + zoom // 2, (j1 - 1 - j) * zoom + zoom // 2
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(0, 255, 0))
    draw.text((4, 4), f"{title}, axial slice {index}", fill=(255, 255, 0))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="click")
    parser.add_argument("--out", default=str(ROOT / "docs" / "click_real_head.png"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volume = np.asarray(nib.load(HEAD).dataobj, dtype=np.float32)
    session = ClickSegmenter(Segmenter(load_model(args.model), device="cpu"), volume)
    methods = {f"{args.model}, first click at 0.7": model_masks(session, 0.7),
               f"{args.model}, first click at 1:1": model_masks(session, 1.0)}
    for title, method in (("random walker", walker_baseline), ("flood fill", flood_baseline)):
        methods[title] = {structure: (method(session.volume[:, :, k], [((i, j), True)]), False)
                          for structure, (i, j, k) in CLICKS.items()}
    brain = np.asarray(nib.load(BRAIN).dataobj) > 0
    csf = brain & (volume < np.percentile(volume[brain], 20))
    print(f"{'method':36} {'click':12} {'px':>6} {'cut':>4} {'on CSF':>7} {'other side':>10}")
    for title, masks in methods.items():
        for structure, (mask, cut) in masks.items():
            i, _, k = CLICKS[structure]
            dark = float(csf[:, :, k][mask].mean()) if mask.any() else 0.0
            across = int(mask[MIDLINE + 1 :].sum() if i < MIDLINE else mask[:MIDLINE].sum())
            print(f"{title:36} {structure:12} {int(mask.sum()):6d} {'yes' if cut else 'no':>4} {dark:7.2f} {across:10d}")
    rows = [[panel(volume, masks, index, title) for title, masks in methods.items()] for index in (90, 95)]
    width, height = rows[0][0].size
    sheet = Image.new("RGB", (len(rows[0]) * (width + 5) - 5, 2 * height + 5))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            sheet.paste(image, (c * (width + 5), r * (height + 5)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
