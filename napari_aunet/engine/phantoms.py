"""Synthetic phantoms with known labels: an organ in a noisy background holding small lesions.

The "small target" case: lesions a few voxels across, inside a larger structure, under noise and a
smooth bias field. Any size, 2D or 3D, reproducible from a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHANTOM_CLASSES = ("background", "organ", "lesion")


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # float32, same shape as labels
    labels: np.ndarray  # uint8: 0 background, 1 organ, 2 lesion
    class_names: tuple[str, ...] = PHANTOM_CLASSES


def _smooth_field(rng: np.random.Generator, grids: list[np.ndarray], strength: float) -> np.ndarray:
    """A low-frequency multiplicative field around 1 (MRI-like bias)."""
    field = np.zeros(np.broadcast_shapes(*(g.shape for g in grids)), dtype=np.float32)
    for grid in grids:
        field = field + rng.uniform(-1, 1) * np.cos(np.pi * grid * rng.uniform(0.5, 1.5) + rng.uniform(0, np.pi))
    return (1.0 + strength * field / len(grids)).astype(np.float32)


def generate_phantom(
    shape: tuple[int, ...] = (64, 64),
    seed: int = 0,
    lesions: tuple[int, int] = (1, 4),
    lesion_radius: tuple[float, float] = (2.0, 5.0),
    noise: float = 0.15,
    bias: float = 0.3,
) -> Phantom:
    """Generate one phantom of ``shape`` (2D or 3D, voxels).

    ``lesions`` is the inclusive range of the lesion count, ``lesion_radius`` the range of lesion radii
    in voxels, ``noise`` the Gaussian noise standard deviation relative to the organ intensity (1.0).
    """
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise ValueError(f"phantom shape must be 2D or 3D with every side >= 8 voxels, got {shape}")
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)

    # Organ: a randomly placed, randomly stretched ellipsoid, wobbly at the edge.
    centre = rng.uniform(-0.2, 0.2, len(shape))
    radii = rng.uniform(0.45, 0.75, len(shape))
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    wobble = 0.08 * np.cos(3 * grids[0] + rng.uniform(0, np.pi)) * np.cos(2 * grids[1] + rng.uniform(0, np.pi))
    organ = distance + wobble < 1.0
    labels = organ.astype(np.uint8)

    image = np.where(organ, 1.0, 0.25).astype(np.float32)
    # Lesions: small balls inside the organ, brighter than it.
    organ_voxels = np.argwhere(organ)
    count = int(rng.integers(lesions[0], lesions[1] + 1)) if len(organ_voxels) else 0
    index_grids = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    for _ in range(count):
        centre_voxel = organ_voxels[rng.integers(len(organ_voxels))]
        radius = rng.uniform(*lesion_radius)
        ball = sum((g - c) ** 2 for g, c in zip(index_grids, centre_voxel, strict=True)) <= radius**2
        ball &= organ
        labels[ball] = 2
        image[ball] = rng.uniform(1.6, 2.0)

    image *= _smooth_field(rng, grids, bias)
    image += rng.normal(0.0, noise, size=shape).astype(np.float32)
    return Phantom(image=image.astype(np.float32), labels=labels)
