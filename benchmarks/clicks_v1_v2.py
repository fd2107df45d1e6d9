"""Dice after 1, 3 and 5 simulated clicks: click-to-segment v1 (segmentation model + connected component)
against v2 (the click-guided model), on held-out phantoms and held-out MNI152 structures.

Simulated user (as in DeepEdit/RITM evaluations): the first click at the deepest point of the object, each
next click at the deepest point of the largest error region — positive where the object was missed,
negative where the mask overflowed. Both versions run through the same ClickSegmenter the GUI and
`aunet click` use, one object at a time on its 2D slice.
- Phantoms: 2D 128x128 phantoms with seeds 10**9 + i (the click model's training draws random seeds; a
  collision is possible but unlikely); the object is the organ or one lesion. v1 uses the `phantom` model.
- MNI152 structures: one connected grey- or white-matter region (>= 30 px) on an axial slice with
  index % 5 == 0, which the click model never saw as an axial slice (the same voxels do appear in its coronal
  and sagittal training slices). v1 uses the `brain` model.
Prints a table and writes benchmarks/results/clicks_v1_v2.json.

    python benchmarks/clicks_v1_v2.py [--objects 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.clickmodel import random_component
from napari_aunet.engine.clicks import simulated_click_scores
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.phantoms import generate_phantom
from napari_aunet.recipes import mni_tissue

ROOT = Path(__file__).resolve().parents[1]
COUNTS = (1, 3, 5)


def objects(kind: str, count: int, rng: np.random.Generator):
    if kind == "phantoms":
        made = 0
        for i in range(count * 4):
            phantom = generate_phantom((128, 128), seed=10**9 + i, lesion_radius=(2.0, 8.0))
            wanted = 2 if (phantom.labels == 2).any() and i % 2 else 1
            target = random_component(phantom.labels == wanted, rng, minimum=5)
            if target is not None:
                yield phantom.image, target
                made += 1
            if made == count:
                return
    else:
        image, labels = mni_tissue()
        held_out = [i for i in range(image.shape[2]) if i % 5 == 0 and labels[:, :, i].any()]
        made = 0
        while made < count:
            index = int(rng.choice(held_out))
            target = random_component(labels[:, :, index] == int(rng.integers(1, 3)), rng)
            if target is not None:
                yield image[:, :, index].astype(np.float32), target
                made += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=128, help="model window around the click (pixels)")
    parser.add_argument("--click-model", default="click", help="the v2 model: bundled name or checkpoint path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    click = Segmenter(load_model(args.click_model), device="cpu")
    rows = []
    for kind, v1_model in (("phantoms", "phantom"), ("MNI152 structures", "brain")):
        v1 = Segmenter(load_model(v1_model), device="cpu")
        results = {"v1": {c: [] for c in COUNTS}, "v2": {c: [] for c in COUNTS}}
        rng = np.random.default_rng(args.seed)
        for image, target in objects("phantoms" if kind == "phantoms" else "mni", args.objects, rng):
            for version, segmenter in (("v1", v1), ("v2", click)):
                scores = simulated_click_scores(segmenter, image, target, COUNTS, args.window)
                for count, (value, _) in scores.items():
                    results[version][count].append(value)
        for version in ("v1", "v2"):
            row = {"data": kind, "version": version, "model": v1_model if version == "v1" else "click",
                   "objects": len(results[version][1])}
            row.update({f"dice_{c}": float(np.mean(results[version][c])) for c in COUNTS})
            rows.append(row)
    print(f"mean Dice after n simulated clicks ({args.objects} objects each, window {args.window}, "
          f"{args.threads} threads)")
    print(f"{'data':<20}{'version':<9}{'model':<9}" + "".join(f"{f'{c} click(s)':>12}" for c in COUNTS))
    for row in rows:
        print(f"{row['data']:<20}{row['version']:<9}{row['model']:<9}"
              + "".join(f"{row[f'dice_{c}']:>12.3f}" for c in COUNTS))
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "clicks_v1_v2.json").write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
