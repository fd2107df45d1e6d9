"""Strong 2D augmentation on torch batches, so a model trained on a few heads holds on other scans.

Geometry (applied to image and labels together): flips, a rotation of up to ``rotation`` degrees, a scale in
``scale`` and, when ``elastic`` > 0, a smooth random deformation; labels are resampled nearest, images
bilinear. Intensity (image only): with probability ``low_resolution`` a voxel size 1-``max_voxel`` times
coarser along each axis (averaged down, interpolated back: the partial-volume blur of thick slices), a smooth
multiplicative bias field, a gamma curve, contrast/brightness and noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class StrongAugmentation:
    rotation: float = 15.0  # degrees, uniform in [-rotation, rotation]
    scale: tuple[float, float] = (0.85, 1.15)
    bias: float = 0.3  # amplitude of the multiplicative bias field
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.1
    noise: float = 0.05
    elastic: float = 0.0  # largest displacement of the smooth deformation, in units of the half field of view
    low_resolution: float = 0.0  # share of images made coarser
    max_voxel: float = 3.0  # coarsest voxel size, in input voxels

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator):
        """``images`` (N, 1, H, W) float in about [0, 1]; ``targets`` (N, H, W) int64. Returns new tensors."""
        count = images.shape[0]

        def uniform(low: float, high: float, *shape) -> torch.Tensor:
            return low + (high - low) * torch.rand(*(shape or (count,)), generator=generator)

        angle = uniform(-self.rotation, self.rotation) * math.pi / 180
        zoom = uniform(*self.scale)
        flip_x = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
        flip_y = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([
            torch.stack([cos * flip_x, -sin, torch.zeros(count)], dim=1),
            torch.stack([sin, cos * flip_y, torch.zeros(count)], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        if self.elastic > 0:
            coarse = uniform(-self.elastic, self.elastic, count, 2, 5, 5)
            grid = grid + F.interpolate(coarse, size=images.shape[-2:], mode="bicubic",
                                        align_corners=True).permute(0, 2, 3, 1)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        targets = F.grid_sample(targets[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                align_corners=False)[:, 0].long()

        if self.low_resolution > 0:
            images = _coarser(images, torch.rand(count, generator=generator) < self.low_resolution,
                              uniform(1.0, self.max_voxel, count, 2))
        height, width = images.shape[-2:]
        ys = torch.linspace(-1, 1, height)[None, :, None]
        xs = torch.linspace(-1, 1, width)[None, None, :]
        coefficients = uniform(-1, 1, count, 4)
        field = (coefficients[:, 0, None, None] * ys + coefficients[:, 1, None, None] * xs
                 + coefficients[:, 2, None, None] * ys * xs + coefficients[:, 3, None, None] * (ys**2 - xs**2))
        images = images * (1 + self.bias * field / 2)[:, None]
        images = images.clamp(min=0) ** uniform(*self.gamma)[:, None, None, None]
        images = images * uniform(*self.contrast)[:, None, None, None] + uniform(
            -self.brightness, self.brightness)[:, None, None, None]
        images = images + self.noise * torch.randn(images.shape, generator=generator)
        return images, targets


def _coarser(images: torch.Tensor, chosen: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Average the chosen images down by ``factors`` (per image, per axis) and interpolate them back."""
    out = images.clone()
    size = images.shape[-2:]
    for index in torch.nonzero(chosen).flatten().tolist():
        low = [max(4, round(n / float(f))) for n, f in zip(size, factors[index], strict=True)]
        small = F.interpolate(images[index:index + 1], size=low, mode="area")
        out[index:index + 1] = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return out
