"""A real-data small-structure segmentation task: four deep grey structures on an unseen MNI152 T1.

Data (nothing is downloaded at run time; the two wheels are fetched once at build time with
    pip download --no-deps nimare==0.22.1 deepmriprep==0.3.0 -d benchmarks/.cache
and read straight from the zip):
    image   the FSL MNI152 6th-generation non-linear asymmetric T1 with skull (MNI152NLin6Asym, 1 mm,
            182x218x182, int16, RAS) from the nimare wheel, nimare/resources/templates/
            tpl-MNI152NLin6Asym_res-01_T1w.nii.gz. Until 2026-11-30 no model of this project was trained on
            it; the brain model rebuilt that day trains on it (its brain mask and intensity classes, not
            these structures), so rows that start from `brain` no longer see an unseen head. Licence: the MNI152 template as
            distributed with FSL (Andrew Janke, MNI/McGill), under FSL's licence terms (non-commercial
            use); the nimare code around it is MIT. If the nimare wheel is missing, the ICBM 2009a T1 in
            resources/samples is used instead, with a warning, and `source` says so.
    labels  the Neuromorphometrics maximum-probability atlas as resampled by CAT12 to MNI152NLin2009cAsym
            (1 mm, 161x197x161, uint8, LAS), deepmriprep/data/templates/neuromorphometrics.nii.gz with the
            names in neuromorphometrics.csv, from the deepmriprep wheel (code MIT). Licence of the labels:
            MICCAI 2012 Grand Challenge on Multi-Atlas Labeling data, CC BY-NC "with no end date";
            credit: MRI scans from the OASIS project, labels "provided by Neuromorphometrics, Inc.
            (http://Neuromorphometrics.com/) under academic subscription". Non-commercial research
            (a benchmark) is within it.

Label rule: class c in 1..4 is every T1 voxel whose centre, mapped through both affines into the atlas
grid (world = T1 affine @ ijk; atlas ijk = inverse atlas affine @ world; nearest neighbour,
scipy.ndimage.map_coordinates order=0, 0 outside), holds the atlas id of the left or the right
structure named in CLASSES; 0 everywhere else. Here the two 1 mm grids coincide up to integer offsets,
so the mapping is exact. The atlas lives in MNI152NLin2009cAsym, the T1 in MNI152NLin6Asym: both are
MNI space, but their anatomy differs by up to a few millimetres, so the labels are an atlas prior
rather than a hand segmentation of this very image.

The arrays are cached in benchmarks/.cache/small_structures-<fingerprint>.npz so later calls are fast.

    python benchmarks/small_structures.py [--cache-dir DIR] [--png /tmp/small_structures.png]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import hashlib
import io
import time
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
CACHE_VERSION = 1
FETCH = "pip download --no-deps nimare==0.22.1 deepmriprep==0.3.0 -d {cache_dir}"
T1_MEMBER = "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz"
MASK_MEMBER = "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz"
FALLBACK_T1 = ROOT / "resources" / "samples" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
ATLAS_MEMBER = "deepmriprep/data/templates/neuromorphometrics.nii.gz"
NAMES_MEMBER = "deepmriprep/data/templates/neuromorphometrics.csv"
# class name -> the atlas region name without its "Left "/"Right " prefix
CLASSES = {
    "thalamus": "Thalamus Proper",
    "caudate": "Caudate",
    "putamen": "Putamen",
    "hippocampus": "Hippocampus",
}


@dataclasses.dataclass(frozen=True)
class Task:
    image: np.ndarray  # the T1 in file order, dtype as stored (int16 for MNI152NLin6Asym)
    labels: np.ndarray  # uint8, same shape: 0 background, 1..4 the classes below
    class_names: tuple[str, ...]  # ("background", "thalamus", "caudate", "putamen", "hippocampus")
    affine: np.ndarray  # 4x4 voxel -> world (mm) of the T1
    spacing: tuple[float, ...]  # voxel size in mm along each file axis
    axial_axis: int  # the file axis closest to superior-inferior
    source: str  # files, wheels and licences


def _wheel(cache_dir: Path, package: str) -> Path | None:
    found = sorted(cache_dir.glob(f"{package}-*.whl"))
    return found[-1] if found else None


def _member(wheel: Path, name: str) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(name)
    return gzip.decompress(data) if name.endswith(".gz") else data


def _nifti(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(data)


def _structure_ids(names_csv: bytes) -> dict[str, list[int]]:
    """Atlas ids of the left and right member of each class, found by name in the atlas's csv."""
    rows = list(csv.DictReader(io.StringIO(names_csv.decode("utf-8")), delimiter=";"))
    ids: dict[str, list[int]] = {}
    for cls, region in CLASSES.items():
        wanted = {f"{side} {region}".lower() for side in ("Left", "Right")}
        ids[cls] = sorted(int(row["ROIid"]) for row in rows if row["ROIname"].strip().lower() in wanted)
        if len(ids[cls]) != 2:
            raise ValueError(
                f"expected a left and a right {region!r} in the atlas names, found ids {ids[cls]}"
            )
    return ids


def resample_nearest(
    src: np.ndarray, src_affine: np.ndarray, shape: tuple[int, ...], affine: np.ndarray
) -> np.ndarray:
    """`src` sampled at the voxel centres of the grid (shape, affine), nearest neighbour, 0 outside."""
    to_src = np.linalg.inv(src_affine) @ affine
    out = np.zeros(shape, dtype=src.dtype)
    ij = np.indices(shape[:2], dtype=np.float64).reshape(2, -1)
    for k in range(shape[2]):  # one slab at a time keeps memory small
        ijk = np.vstack([ij, np.full(ij.shape[1], k), np.ones(ij.shape[1])])
        coords = (to_src @ ijk)[:3]
        out[:, :, k] = ndimage.map_coordinates(src, coords, order=0, mode="constant", cval=0).reshape(
            shape[:2]
        )
    return out


def _build(cache_dir: Path) -> dict[str, object]:
    nimare, deepmriprep = _wheel(cache_dir, "nimare"), _wheel(cache_dir, "deepmriprep")
    if deepmriprep is None:
        raise FileNotFoundError(
            f"no deepmriprep wheel in {cache_dir}; run: {FETCH.format(cache_dir=cache_dir)}"
        )
    if nimare is not None and T1_MEMBER in zipfile.ZipFile(nimare).namelist():
        t1 = _nifti(_member(nimare, T1_MEMBER))
        t1_text = f"T1: {T1_MEMBER} from {nimare.name} (FSL MNI152 6th gen, FSL licence, non-commercial)"
    else:
        warnings.warn(f"MNI152NLin6Asym T1 not found in {cache_dir}; using {FALLBACK_T1.name}", stacklevel=3)
        t1 = nib.load(FALLBACK_T1)
        t1_text = (
            f"T1: {FALLBACK_T1.relative_to(ROOT)} (ICBM 2009a sym; SEEN IN TRAINING; see MNI152_NOTICE.txt)"
        )
    atlas = _nifti(_member(deepmriprep, ATLAS_MEMBER))
    ids = _structure_ids(_member(deepmriprep, NAMES_MEMBER))
    lut = np.zeros(256, dtype=np.uint8)  # atlas id -> class
    for cls_index, cls in enumerate(CLASSES, start=1):
        lut[ids[cls]] = cls_index
    atlas_classes = lut[np.asarray(atlas.dataobj, dtype=np.uint8)]
    image = np.asanyarray(t1.dataobj)
    labels = resample_nearest(atlas_classes, atlas.affine, image.shape, t1.affine)
    id_text = ", ".join(f"{cls}={ids[cls]}" for cls in CLASSES)
    source = (
        f"{t1_text}; labels: {ATLAS_MEMBER} + {NAMES_MEMBER.rsplit('/', 1)[1]} from {deepmriprep.name} "
        f"(Neuromorphometrics/MICCAI 2012 labels in MNI152NLin2009cAsym via CAT12, CC BY-NC; scans: OASIS; "
        f"labels provided by Neuromorphometrics, Inc. under academic subscription), atlas ids {id_text}, "
        "nearest-neighbour resampled through both affines"
    )
    return {"image": image, "labels": labels, "affine": t1.affine, "source": np.array(source)}


def small_structure_task(cache_dir: Path = ROOT / "benchmarks" / ".cache") -> Task:
    """The task built from the wheels in `cache_dir` (see the module docstring); cached there as .npz."""
    cache_dir = Path(cache_dir)
    wheels = [
        w.name for w in (_wheel(cache_dir, "nimare"), _wheel(cache_dir, "deepmriprep")) if w is not None
    ]
    key = hashlib.sha1(repr((CACHE_VERSION, CLASSES, wheels)).encode()).hexdigest()[:10]
    cached = cache_dir / f"small_structures-{key}.npz"
    if cached.exists():
        with np.load(cached) as npz:
            arrays: dict[str, object] = {name: npz[name] for name in npz.files}
    else:
        arrays = _build(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".tmp.npz")
        np.savez_compressed(partial, **arrays)
        partial.replace(cached)
    affine = np.asarray(arrays["affine"], dtype=np.float64)
    return Task(
        image=np.asarray(arrays["image"]),
        labels=np.asarray(arrays["labels"], dtype=np.uint8),
        class_names=("background", *CLASSES),
        affine=affine,
        spacing=tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)),
        axial_axis=int(np.argmax(np.abs(affine[2, :3]))),
        source=str(arrays["source"]),
    )


def _brain_mask(cache_dir: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    nimare = _wheel(cache_dir, "nimare")
    if nimare is None or MASK_MEMBER not in zipfile.ZipFile(nimare).namelist():
        return None
    mask = np.asarray(_nifti(_member(nimare, MASK_MEMBER)).dataobj) > 0
    return mask if mask.shape == shape else None


def _save_png(task: Task, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        return False
    # Reorient to RAS for display only: axial = axis 2, coronal = axis 1, sagittal = axis 0.
    ornt = nib.orientations.io_orientation(task.affine)
    image = nib.orientations.apply_orientation(task.image, ornt).astype(np.float32)
    labels = nib.orientations.apply_orientation(task.labels, ornt)
    zs = np.flatnonzero(labels.any(axis=(0, 1)))
    centre = np.round(np.argwhere(labels > 0).mean(axis=0)).astype(int)
    k = (zs[0] + zs[-1]) // 2
    cuts = [
        ("axial", image[:, :, k], labels[:, :, k], k),
        ("coronal", image[:, centre[1]], labels[:, centre[1]], centre[1]),
        ("sagittal", image[centre[0]], labels[centre[0]], centre[0]),
    ]
    colours = ListedColormap(["none", "tab:red", "tab:blue", "tab:green", "tab:orange"])
    vmax = float(np.percentile(image, 99.5))
    fig, axes = plt.subplots(2, 3, figsize=(15, 10))
    for col, (name, img, lab, index) in enumerate(cuts):
        for row in range(2):
            ax = axes[row, col]
            ax.imshow(img.T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
            if row == 1:
                ax.imshow(
                    np.ma.masked_equal(lab.T, 0),
                    cmap=colours,
                    origin="lower",
                    vmin=0,
                    vmax=4,
                    alpha=0.45,
                    interpolation="nearest",
                )
                ax.contour(
                    lab.T, levels=[0.5, 1.5, 2.5, 3.5], colors="yellow", linewidths=0.4, origin="lower"
                )
            ax.set_title(f"{name} slice {index} (RAS){' + labels' if row else ''}")
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i)) for i in range(1, 5)]
    fig.legend(handles, task.class_names[1:], loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "benchmarks" / ".cache")
    parser.add_argument("--png", type=Path, default=Path("/tmp/small_structures.png"))
    args = parser.parse_args()
    start = time.perf_counter()
    task = small_structure_task(args.cache_dir)
    print(f"loaded in {time.perf_counter() - start:.2f} s")
    print(f"source: {task.source}")
    print(
        f"image {task.image.shape} {task.image.dtype}, spacing {task.spacing}, axial axis {task.axial_axis}"
    )
    axis = task.axial_axis
    other = tuple(a for a in range(3) if a != axis)
    slice_area = int(np.prod([task.image.shape[a] for a in other]))
    per_slice = np.stack([(task.labels == c).sum(axis=other) for c in range(len(task.class_names))])
    voxel_ml = float(np.prod(task.spacing)) / 1000
    mask = _brain_mask(args.cache_dir, task.image.shape)
    brain = task.image[mask] if mask is not None else task.image[task.image > 0]
    print(
        f"brain mean intensity {brain.mean():.1f} (p10 {np.percentile(brain, 10):.0f}, p90 {np.percentile(brain, 90):.0f})"
    )
    print("class         voxels     mL  largest slice  share of slice  slices    in brain mask  mean T1 (sd)")
    for c, name in enumerate(task.class_names):
        sel = task.labels == c
        count = int(sel.sum())
        rows = np.flatnonzero(per_slice[c])
        peak = int(per_slice[c].argmax())
        inside = f"{(mask[sel].mean() if mask is not None else float('nan')) * 100:12.1f} %"
        values = task.image[sel].astype(np.float64)
        print(
            f"{name:12s} {count:8d} {count * voxel_ml:6.1f}  {peak:13d}  {per_slice[c, peak] / slice_area * 100:12.2f} %"
            f"  {rows[0]:3d}-{rows[-1]:3d}  {inside}  {values.mean():7.1f} ({values.std():.1f})"
        )
    structures = np.flatnonzero(per_slice[1:].sum(axis=0))
    print(f"axial slices (axis {axis}) holding any structure: {structures[0]}..{structures[-1]}")
    if _save_png(task, args.png):
        print(f"wrote {args.png}")
    else:
        print("matplotlib not installed: no PNG")


if __name__ == "__main__":
    main()
