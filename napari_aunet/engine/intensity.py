"""Intensity normalisation, part of the model so training and inference agree."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from .config import Normalization

# Percentiles and statistics are estimated on at most this many voxels (strided sample) for speed.
_SAMPLE_VOXELS = 2_000_000


class BadVolumeError(ValueError):
    """A volume the engine cannot segment (NaN/inf values, wrong dimensionality, empty)."""


def check_volume(volume: np.ndarray, spatial_dims: tuple[int, ...] = (2, 3)) -> None:
    """Raise :class:`BadVolumeError` with a plain message when ``volume`` cannot be segmented."""
    if volume.ndim not in spatial_dims:
        raise BadVolumeError(
            f"expected a {' or '.join(f'{d}D' for d in spatial_dims)} volume, got an array of shape {volume.shape}"
        )
    if volume.size == 0:
        raise BadVolumeError(f"the volume is empty (shape {volume.shape})")
    if not (np.issubdtype(volume.dtype, np.number) or volume.dtype == bool):
        raise BadVolumeError(f"the volume holds {volume.dtype} values, not numbers")
    if np.issubdtype(volume.dtype, np.complexfloating):
        raise BadVolumeError("the volume holds complex numbers; convert it to magnitude first")


NAN_POLICIES = ("background", "refuse")


def looks_like_ct(volume: np.ndarray) -> bool:
    """Values reach well below zero (air at about -1000 HU) and above 100: a CT in Hounsfield units."""
    sample = np.asarray(volume).reshape(-1)[:: max(1, np.asarray(volume).size // 200_000)]
    sample = sample[np.isfinite(sample)] if np.issubdtype(sample.dtype, np.floating) else sample
    return bool(sample.size) and float(np.percentile(sample, 1)) < -500 and float(sample.max()) > 100


def domain_warning(volume: np.ndarray, modality: str) -> str | None:
    """One line when a scan is clearly outside what a model knows (its config's ``modality``: ``mri`` or ``ct``;
    empty: any), else None. Nothing is refused: the user may know better."""
    if modality == "mri" and looks_like_ct(volume):
        return ("this looks like a CT in Hounsfield units (air near -1000), but the model was trained on MRI "
                "(T1-weighted): expect nonsense labels")
    if modality == "ct" and not looks_like_ct(volume):
        return "this does not look like a CT in Hounsfield units (no air near -1000), but the model was trained on CT"
    return None


def fill_non_finite(volume: np.ndarray, policy: str = "background") -> tuple[np.ndarray, int]:
    """``volume`` with its NaN and infinite voxels set to the scan's finite minimum (its background), and how many
    there were. Resampled or masked scans often carry NaN outside the field of view. ``policy="refuse"`` (or a
    scan with no finite voxel at all) raises :class:`BadVolumeError` instead. Integer scans pass through. Call it
    before :func:`check_volume`, which expects finite values."""
    if policy not in NAN_POLICIES:
        raise ValueError(f"unknown NaN policy {policy!r}; use background or refuse")
    if volume.ndim not in (2, 3) or volume.size == 0 or not np.issubdtype(volume.dtype, np.floating):
        return volume, 0  # nothing to fill; check_volume names what is wrong with a volume of another shape
    finite = np.isfinite(volume)
    bad = volume.size - int(finite.sum())
    if bad == 0:
        return volume, 0
    if policy == "refuse" or bad == volume.size:
        what = "only NaN or infinite voxels" if bad == volume.size else f"{bad} NaN or infinite voxel(s) of {volume.size}"
        raise BadVolumeError(f"the volume holds {what}; fix or mask them first")
    filled = np.where(finite, volume, volume[finite].min()).astype(volume.dtype, copy=False)
    return filled, bad


def sample_values(volume: np.ndarray) -> np.ndarray:
    """At most ``_SAMPLE_VOXELS`` of ``volume``'s values (a strided sample), float64, for percentiles and means."""
    flat = np.asarray(volume).reshape(-1)
    step = max(1, flat.size // _SAMPLE_VOXELS)
    # through float32, as the normalised volume is computed
    return flat[::step].astype(np.float32).astype(np.float64)


def normalizer(volume: np.ndarray, normalization: Normalization) -> Callable[[np.ndarray], np.ndarray]:
    """The normalisation ``normalization`` says, with its statistics taken from the whole ``volume``, as a function
    that maps any part of it (a crop, a batch of slices) to float32: parts normalised apart equal the same parts of
    ``normalize(volume)``. Each call makes one float32 copy and works in place on it."""
    mode = normalization.mode
    if mode == "none":
        return lambda part: np.array(part, dtype=np.float32)
    if mode == "ct_window":
        lower, upper = normalization.lower, normalization.upper
    elif mode == "percentile":
        lower, upper = np.percentile(sample_values(volume), [normalization.lower, normalization.upper])
        if upper <= lower:
            return lambda part: np.zeros(np.shape(part), dtype=np.float32)
    else:  # zscore
        sample = sample_values(volume)
        if normalization.threshold is not None:
            sample = sample[sample > normalization.threshold]
            if sample.size == 0:
                return lambda part: np.zeros(np.shape(part), dtype=np.float32)
        mean, std = float(sample.mean()), float(sample.std())
        return functools.partial(_affine, shift=mean, scale=1.0 / max(std, 1e-8))
    return functools.partial(_affine, lower=float(lower), upper=float(upper), shift=float(lower),
                             scale=1.0 / (float(upper) - float(lower)))


def _affine(part: np.ndarray, shift: float, scale: float, lower: float | None = None,
            upper: float | None = None) -> np.ndarray:
    data = np.array(part, dtype=np.float32)
    if lower is not None:
        np.clip(data, np.float32(lower), np.float32(upper), out=data)
    data -= np.float32(shift)
    data *= np.float32(scale)
    return data


def normalize(volume: np.ndarray, normalization: Normalization) -> np.ndarray:
    """Return ``volume`` as float32 normalised as ``normalization`` says (same shape)."""
    return normalizer(volume, normalization)(volume)
