"""Click to segment on held-out anatomical structures: Dice after 1, 3 and 5 simulated clicks (and a box), against
a flood fill and scikit-image's random walker fed the same clicks.

Held out from every click model here: the Hammers atlas (83 structures, never read by a recipe) on axial slices with
index % 5 == 0 (never a training slice of any source). Each object is one connected region (>= 20 px) of one Hammers
label on such a slice, drawn on two images: CAT12's T1 template (the atlases' own space; no click model trains on
it) and the MNI ICBM 2009a T1 the click recipe draws its atlases on (the held-out slices only).

Simulated user (DeepEdit/RITM protocol): the first click at the deepest point of the object, each next click at the
deepest point of the largest error region, positive where the object was missed, negative where it overflowed.
Every model runs through the ClickSegmenter the GUI and `aunet click` use, on the whole 3D volume (normalised as in
the GUI). "cut" is the share of objects whose mask after the first click reaches an inner edge of the model's window.
Each table is followed by the same Dice split by kind: "structure" (deep grey matter, ventricles, brainstem,
cerebellum, corpus callosum, hippocampus, amygdala: borders an image shows) and "cortical" (a gyrus or lobe part
with its white matter, cut from its neighbours by atlas lines), and by size (below and from the median object on;
an object drawn twice counts once).
"3D": Dice of the first click propagated through up to 24 slices each way against the structure's 3D connected
region within those slices; "(2D)" the clicked slice alone against the same reference.
Baselines fed the same clicks: a flood fill of each positive click's intensity range (mean +- 1.5 sd of its 5x5
neighbourhood), minus that of each negative click; `skimage.segmentation.random_walker` on the slice with the
positive clicks as object seeds and the negative clicks and the slice's border as background seeds.
How far experts agree (a reference for one click, no method): the region of two other atlases of the same brains'
space (LPBA40, Neuromorphometrics; read here only, no click model trains on them) under the first click — what a
method that had learnt that atlas's rules exactly would return — and the better of the two for each object.

    python benchmarks/clicks_structures.py --data benchmarks/.cache [--objects 60] [--model click --model OLD.safetensors]
        [--first-click-scale 1 --first-click-scale 0.7]   (one row per model and scale)

Needs the deepmriprep 0.3.0 wheel in --data (`make bench-data`). Prints a table; writes benchmarks/results/clicks_structures.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.clickmodel import deepest_point, jittered_box, next_click, random_component
from napari_aunet.engine.clicks import FIRST_CLICK_SCALE, Click, ClickSegmenter, cut_by_window, flood_fill
from napari_aunet.engine.inference import Segmenter
from napari_aunet.training_data import atlas_set

ROOT = Path(__file__).resolve().parents[1]
COUNTS = (1, 3, 5)
HELD_OUT = "hammers"
# other expert atlases in the same space: how well their region under the first click matches Hammers' object
EXPERTS = ("lpba40", "neuromorphometrics")
AXIS = 2  # axial on the atlases' grid and on the MNI 2009a grid
# Hammers regions with borders an image shows (deep grey matter, ventricles, brainstem, cerebellum, corpus callosum,
# hippocampus, amygdala): "structures"; the rest are cortical regions (a gyrus or lobe part with its white matter,
# cut from its neighbours by atlas lines inside the white matter)
STRUCTURE_WORDS = ("hippocampus", "amygdala", "caudate", "putamen", "pallidum", "thalamus", "accumbens", "nigra",
                   "ventricle", "brainstem", "cerebellum", "corpus callosum")


def label_kinds(data: str) -> dict[int, str]:
    """Hammers label id -> "structure" or "cortical", from the atlas's own table in the wheel."""
    import zipfile

    from napari_aunet.training_data import ATLAS_FOLDER, wheel

    with zipfile.ZipFile(wheel(data, "deepmriprep")) as archive:
        rows = archive.read(f"{ATLAS_FOLDER}{HELD_OUT}.csv").decode().splitlines()[1:]
    kinds = {}
    for row in rows:
        number, name = row.split(";")[:2]
        kinds[int(number)] = "structure" if any(w in name.lower() for w in STRUCTURE_WORDS) else "cortical"
    return kinds


def object_kinds(labels: np.ndarray, objects: list, kinds: dict[int, str]) -> list[str]:
    """The kind of each object: that of its label (an object is a region of one label: any of its pixels names it)."""
    return [kinds.get(int(labels[:, :, i][t][0]), "cortical") for i, t in objects]


def by_group(rows: list[dict], groups: list[str], title: str, counts: tuple[int, ...] = COUNTS) -> str:
    """ "    by TITLE, Dice after 1/3/5 clicks: group (n) ...; ..." for the printed table, groups in order of appearance."""
    parts = []
    for group in dict.fromkeys(groups):
        chosen = [r for r, g in zip(rows, groups, strict=True) if g == group]
        parts.append(f"{group} ({len(chosen)}) " + " / ".join(f"{np.mean([r[c] for r in chosen]):.3f}" for c in counts))
    clicks = "click" if counts == (1,) else "clicks"
    return f"    by {title}, Dice after " + "/".join(map(str, counts)) + f" {clicks}: " + "; ".join(parts)


def held_out_objects(labels: np.ndarray, image: np.ndarray, count: int, rng: np.random.Generator):
    """``count`` (slice index, bool mask) objects: a connected region of one label on a held-out axial slice."""
    slices = [i for i in range(labels.shape[AXIS]) if i % 5 == 0 and labels[:, :, i].any()]
    found, seen = [], set()
    while len(found) < count:
        index = int(rng.choice(slices))
        plane = labels[:, :, index]
        present = np.unique(plane[plane > 0])
        target = random_component(plane == int(rng.choice(present)), rng, minimum=20)
        if target is None or image[:, :, index][target].mean() <= 0.05 * image.max():
            continue
        key = (index, int(np.flatnonzero(target)[0]))  # an object drawn twice counts once
        if key not in seen:
            seen.add(key)
            found.append((index, target))
    return found


def expert_agreement(atlas: np.ndarray, objects: list) -> list[float]:
    """Dice of ``atlas``'s connected region under each object's first click (0 where it has no label there)."""
    from scipy import ndimage

    scores = []
    for index, target in objects:
        plane = atlas[:, :, index]
        point = deepest_point(target)
        if not plane[point]:
            scores.append(0.0)
            continue
        parts, _ = ndimage.label(plane == plane[point])
        scores.append(dice(parts == parts[point], target))
    return scores


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def run_model(session: ClickSegmenter, index: int, target: np.ndarray) -> tuple[dict, bool, list[float]]:
    session.new_object()
    current = np.zeros(session.volume.shape, bool)
    scores, cut, seconds = {}, False, []
    click = (deepest_point(target), True)
    for count in range(1, max(COUNTS) + 1):
        if click is not None:
            point = (*click[0], index)
            update = session.click(current, Click(point, click[1]), axis=AXIS)
            current[update.region] = update.mask
            seconds.append(update.seconds)
            if count == 1:
                window = update.region[:AXIS]
                plane_shape = session.volume.shape[:AXIS]
                cut = cut_by_window(update.mask[..., 0], window, plane_shape)
        plane = current[:, :, index]
        if count in COUNTS:
            scores[count] = dice(plane, target)
        click = next_click(plane, target)
    return scores, cut, seconds


def run_3d(session: ClickSegmenter, labels: np.ndarray, index: int, target: np.ndarray) -> tuple[float, float]:
    """3D Dice of one first click propagated through the neighbouring slices (up to the session's depth each way),
    and of the clicked slice alone, against the structure's 3D connected region within that depth."""
    from scipy import ndimage

    point = (*deepest_point(target), index)
    value = labels[point]
    parts, _ = ndimage.label(labels == value)
    reference = parts == parts[point]
    reference[:, :, : max(0, index - session.depth)] = False
    reference[:, :, index + session.depth + 1 :] = False
    session.new_object()
    current = np.zeros(session.volume.shape, bool)
    update = session.click(current, Click(point, True), axis=AXIS, three_d=True)
    current[update.region] = update.mask
    flat = np.zeros_like(current)
    flat[:, :, index] = current[:, :, index]
    return dice(current, reference), dice(flat, reference)


def run_box(session: ClickSegmenter, index: int, target: np.ndarray, rng: np.random.Generator) -> float:
    session.new_object()
    current = np.zeros(session.volume.shape, bool)
    update = session.box(current, AXIS, index, jittered_box(target, rng))
    current[update.region] = update.mask
    return dice(current[:, :, index], target)


def flood_baseline(plane: np.ndarray, clicks: list[tuple[tuple[int, int], bool]]) -> np.ndarray:
    mask = np.zeros(plane.shape, bool)
    for (r, c), positive in clicks:
        patch = plane[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3]
        low, high = patch.mean() - 1.5 * patch.std(), patch.mean() + 1.5 * patch.std()
        region = flood_fill((plane >= low) & (plane <= high), (r, c))
        mask = mask | region if positive else mask & ~region
    return mask


def walker_baseline(plane: np.ndarray, clicks: list[tuple[tuple[int, int], bool]]) -> np.ndarray:
    from skimage.segmentation import random_walker

    seeds = np.zeros(plane.shape, np.int32)
    seeds[0, :] = seeds[-1, :] = seeds[:, 0] = seeds[:, -1] = 2
    for (r, c), positive in clicks:
        seeds[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = 1 if positive else 2
    scaled = (plane - plane.min()) / max(float(np.ptp(plane)), 1e-6)
    return random_walker(scaled, seeds, beta=130, mode="cg_j") == 1


def run_baseline(method, plane: np.ndarray, target: np.ndarray) -> dict:
    clicks, scores = [], {}
    current = np.zeros(target.shape, bool)
    click = (deepest_point(target), True)
    for count in range(1, max(COUNTS) + 1):
        if click is not None:
            clicks.append(click)
            current = method(plane, clicks)
        if count in COUNTS:
            scores[count] = dice(current, target)
        click = next_click(current, target)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="benchmarks/.cache")
    parser.add_argument("--objects", type=int, default=60)
    parser.add_argument("--objects-3d", type=int, default=20, help="objects also propagated in 3D")
    parser.add_argument("--model", action="append", help="click model names or checkpoint files (default: click)")
    parser.add_argument("--first-click-scale", type=float, action="append",
                        help=f"scale(s) a slice's first click is shown at (default {FIRST_CLICK_SCALE}); one row each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "clicks_structures.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.model or ["click"]
    results = []
    label_kind = label_kinds(args.data)
    for image_name in ("template", "mni2009a"):
        held = atlas_set(args.data, (HELD_OUT, *EXPERTS), image=image_name)
        volume, labels = held.image, held.atlases[HELD_OUT]
        objects = held_out_objects(labels, volume, args.objects, np.random.default_rng(args.seed))
        sizes = np.array([int(t.sum()) for _, t in objects])
        kinds = object_kinds(labels, objects, label_kind)
        median = int(np.median(sizes))
        scales = [f"< {median} px" if size < median else f">= {median} px" for size in sizes]
        print(f"\n{image_name}: {len(objects)} held-out {HELD_OUT} objects on axial slices % 5 == 0, "
              f"{sizes.min()}-{sizes.max()} px (median {median})")
        print(f"{'method':40} {'1 click':>8} {'3 clicks':>8} {'5 clicks':>8} {'box':>6} {'cut':>5} {'p95 ms':>7} "
              f"{'3D':>6} {'(2D)':>6}")
        for name, scale in [(m, s) for m in models for s in args.first_click_scale or [FIRST_CLICK_SCALE]]:
            session = ClickSegmenter(Segmenter(load_model(name), device="cpu"), volume)
            session.first_click_scale = scale
            rows, cuts, boxes, latency = [], 0, [], []
            rng = np.random.default_rng(args.seed + 1)
            for index, target in objects:
                scores, cut, seconds = run_model(session, index, target)
                rows.append(scores)
                cuts += cut
                latency.append(seconds[0])
                boxes.append(run_box(session, index, target, rng))
            means = {c: float(np.mean([r[c] for r in rows])) for c in COUNTS}
            volumes = [run_3d(session, labels, index, target) for index, target in objects[: args.objects_3d]]
            method = Path(name).stem + ("" if args.first_click_scale is None else f" @{scale:g}")
            row = {"image": image_name, "method": method, **{f"dice_{c}": round(means[c], 3) for c in COUNTS},
                   "box": round(float(np.mean(boxes)), 3), "cut": round(cuts / len(objects), 3),
                   "p95_ms": round(1000 * float(np.percentile(latency, 95)), 1),
                   "dice_3d": round(float(np.mean([v[0] for v in volumes])), 3),
                   "dice_3d_one_slice": round(float(np.mean([v[1] for v in volumes])), 3)}
            results.append(row)
            print(f"{row['method']:40} {means[1]:8.3f} {means[3]:8.3f} {means[5]:8.3f} {row['box']:6.3f} "
                  f"{row['cut']:5.2f} {row['p95_ms']:7.1f} {row['dice_3d']:6.3f} {row['dice_3d_one_slice']:6.3f}")
            print(by_group(rows, kinds, "kind"))
            print(by_group(rows, scales, "size"))
            row["objects"] = [{"kind": k, "pixels": int(n), **{f"dice_{c}": round(r[c], 4) for c in COUNTS}}
                              for r, k, n in zip(rows, kinds, sizes, strict=True)]
        for label, method in (("flood fill of the click's range", flood_baseline),
                              ("random walker (skimage)", walker_baseline)):
            started = time.perf_counter()
            rows = [run_baseline(method, volume[:, :, index].astype(np.float32), target) for index, target in objects]
            means = {c: float(np.mean([r[c] for r in rows])) for c in COUNTS}
            row = {"image": image_name, "method": label, **{f"dice_{c}": round(means[c], 3) for c in COUNTS},
                   "seconds": round(time.perf_counter() - started, 1)}
            results.append(row)
            print(f"{label:40} {means[1]:8.3f} {means[3]:8.3f} {means[5]:8.3f} {'':>6} {'':>5} {'':>7}")
            print(by_group(rows, kinds, "kind"))
            print(by_group(rows, scales, "size"))
        agreement = {name: expert_agreement(held.atlases[name], objects) for name in EXPERTS}
        agreement["the better of the two"] = list(np.max(list(agreement.values()), axis=0))
        for name, scores in agreement.items():
            label = f"expert: {name} at the click" if name in EXPERTS else f"expert: {name}"
            results.append({"image": image_name, "method": label, "dice_1": round(float(np.mean(scores)), 3)})
            print(f"{label:40} {np.mean(scores):8.3f}")
            print(by_group([{1: score} for score in scores], kinds, "kind", counts=(1,)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"objects": args.objects, "held_out": HELD_OUT, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
