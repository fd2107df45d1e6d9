"""Attention U-Net (Oktay et al., 2018, "Attention U-Net: Learning Where to Look for the Pancreas",
arXiv:1804.03999) with the gate computed at the skip connection's own grid, as defined in DESIGN.md.

One class covers the plain U-Net (no gates), the Attention U-Net (every skip gated) and anything in
between, in 2D and 3D. Encoders and decoders are kept in lists indexed by level so "level k" is a name
in the code: level 1 is the full-resolution level, level k is ``2**(k-1)`` times coarser.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _batch_norm(spatial_dims: int) -> type[nn.Module]:
    return nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d


class ConvBlock(nn.Sequential):
    """Two ``Conv3x3 + BatchNorm + ReLU`` layers."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        conv, norm = _conv(spatial_dims), _batch_norm(spatial_dims)
        super().__init__(
            conv(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
        )


class AttentionGate(nn.Module):
    """Additive attention gate.

    For skip features ``x`` (``skip_channels``, fine grid) and gating signal ``g`` (``gating_channels``)::

        gx  = BN(Conv1x1(x))                 # skip_channels  -> inter_channels
        gg  = BN(Conv1x1(g))                 # gating_channels -> inter_channels, resized to x's grid if needed
        psi = Sigmoid(BN(Conv1x1(ReLU(gx + gg))))   # one coefficient per voxel, in [0, 1]
        out = x * psi

    ``forward`` returns ``(out, psi)``; ``psi`` has shape ``(N, 1, *x.shape[2:])``.
    """

    # The skip's 1x1 convolution; CoarseAttentionGate makes it a strided 2x2 one.
    skip_kernel = 1

    def __init__(
        self, spatial_dims: int, skip_channels: int, gating_channels: int, inter_channels: int | None = None
    ) -> None:
        super().__init__()
        conv, norm = _conv(spatial_dims), _batch_norm(spatial_dims)
        inter_channels = inter_channels or max(skip_channels // 2, 1)
        self.spatial_dims = spatial_dims
        self.skip_transform = nn.Sequential(
            conv(skip_channels, inter_channels, kernel_size=self.skip_kernel, stride=self.skip_kernel),
            norm(inter_channels),
        )
        self.gating_transform = nn.Sequential(
            conv(gating_channels, inter_channels, kernel_size=1), norm(inter_channels)
        )
        self.psi = nn.Sequential(conv(inter_channels, 1, kernel_size=1), norm(1), nn.Sigmoid())

    def _mode(self) -> str:
        return "bilinear" if self.spatial_dims == 2 else "trilinear"

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """psi at the grid of the transformed skip (``gg`` resized to it when the grids differ)."""
        gx = self.skip_transform(x)
        gg = self.gating_transform(g)
        if gg.shape[2:] != gx.shape[2:]:
            gg = F.interpolate(gg, size=gx.shape[2:], mode=self._mode(), align_corners=False)
        return self.psi(F.relu(gx + gg))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        psi = self.coefficients(x, g)
        return x * psi, psi


class CoarseAttentionGate(AttentionGate):
    """Oktay et al.'s gate, computed at the coarser grid of the gating signal.

    ``gx = BN(Conv2x2 stride 2(x))`` brings the skip to ``g``'s grid, ``gg = BN(Conv1x1(g))``,
    ``psi = Sigmoid(BN(Conv1x1(ReLU(gx + gg))))`` at the coarse grid, upsampled (bilinear/trilinear,
    align_corners=False) to x's grid; ``out = x * psi``. Returns ``(out, psi at x's grid)``.
    """

    skip_kernel = 2

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        psi = F.interpolate(self.coefficients(x, g), size=x.shape[2:], mode=self._mode(), align_corners=False)
        return x * psi, psi


class DecoderBlock(nn.Module):
    """``up = ConvTranspose(stride 2)(below)``; ``skip = gate(x=skip, g=up)`` (``g=below`` for the coarse and the
    interpolated gate); ``cat([up, skip])``; ConvBlock."""

    def __init__(
        self, spatial_dims: int, below_channels: int, skip_channels: int, gated: bool, gate_grid: str = "fine"
    ) -> None:
        super().__init__()
        up_conv = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
        self.up = up_conv(below_channels, skip_channels, kernel_size=2, stride=2)
        self.gate_grid = gate_grid
        self.gate: nn.Module | None = None
        if gated and gate_grid == "coarse":
            self.gate = CoarseAttentionGate(spatial_dims, skip_channels, below_channels)
        elif gated and gate_grid == "interpolated":
            # g = the coarser features; coefficients() resizes W_g g bilinearly to the skip's grid
            self.gate = AttentionGate(spatial_dims, skip_channels, below_channels)
        elif gated:
            self.gate = AttentionGate(spatial_dims, skip_channels, skip_channels)
        self.conv = ConvBlock(spatial_dims, 2 * skip_channels, skip_channels)

    def forward(self, below: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        up = self.up(below)
        psi = None
        if self.gate is not None:
            skip, psi = self.gate(skip, up if self.gate_grid == "fine" else below)
        return self.conv(torch.cat([up, skip], dim=1)), psi


class AttentionUNet(nn.Module):
    """U-Net whose skip connections can be gated, in 2D or 3D.

    Input ``(N, C, *spatial)`` of any size: it is padded at the far end of every axis up to a multiple
    of ``config.size_multiple`` (edge-replicated) and the outputs are cropped back, never resized.
    ``forward(x)`` returns the logits ``(N, out_channels, *spatial)``; with ``return_attention=True`` it
    returns ``(logits, attention)`` where ``attention[k]`` is the gate map of level ``k``, shape
    ``(N, 1, *ceil(spatial / 2**(k-1)))``, values in ``[0, 1]``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dims, widths = config.spatial_dims, config.widths
        self.encoders = nn.ModuleList()
        in_channels = config.in_channels
        for width in widths:
            self.encoders.append(ConvBlock(dims, in_channels, width))
            in_channels = width
        # decoders[k - 1] merges level k+1 into level k's skip.
        self.decoders = nn.ModuleList(
            DecoderBlock(dims, widths[k], widths[k - 1], gated=k in config.gated_levels, gate_grid=config.gate_grid)
            for k in config.skip_levels
        )
        self.head = _conv(dims)(widths[0], config.out_channels, kernel_size=1)
        self.pool = nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d(2)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        dims = self.config.spatial_dims
        if x.ndim != dims + 2 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.config.in_channels}, {', '.join('*' * dims)}), got {tuple(x.shape)}"
            )
        spatial = x.shape[2:]
        multiple = self.config.size_multiple
        pads = [(-size) % multiple for size in spatial]
        if any(pads):
            # F.pad takes (last_lo, last_hi, ..., first_lo, first_hi); pad only the far end.
            x = F.pad(x, [p for pad in reversed(pads) for p in (0, pad)], mode="replicate")

        skips = []
        features = x
        for level, encoder in enumerate(self.encoders, start=1):
            if level > 1:
                features = self.pool(features)
            features = encoder(features)
            skips.append(features)

        attention: dict[int, torch.Tensor] = {}
        features = skips[-1]
        for level in reversed(self.config.skip_levels):
            features, psi = self.decoders[level - 1](features, skips[level - 1])
            if psi is not None:
                attention[level] = psi
        logits = self.head(features)

        crop = (slice(None), slice(None), *(slice(0, size) for size in spatial))
        logits = logits[crop]
        if not return_attention:
            return logits
        for level, psi in attention.items():
            factor = 2 ** (level - 1)
            attention[level] = psi[
                (slice(None), slice(None), *(slice(0, -(-size // factor)) for size in spatial))
            ]
        return logits, dict(sorted(attention.items()))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _folded(conv: nn.Module, norm: nn.Module) -> nn.Module:
    """One convolution computing ``norm(conv(x))`` of an eval-mode BatchNorm (running statistics)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    fused = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, *([1] * (conv.weight.ndim - 1))))
        fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return fused


def fused_for_inference(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """An inference copy of ``model``: every convolution followed by a BatchNorm in the same ``nn.Sequential``
    (each ConvBlock layer, each gate's transforms and psi) becomes one convolution with a bias, and the BatchNorm
    an identity. Outputs equal the eval-mode model's to float rounding; ``model`` itself is not changed (its
    weights stay unfused on disk and trainable). ``channels_last`` also stores the copy's weights NHWC/NDHWC,
    which oneDNN runs faster on CPUs."""
    fused = copy.deepcopy(model).eval()
    convolutions, norms = (nn.Conv2d, nn.Conv3d), (nn.BatchNorm2d, nn.BatchNorm3d)
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for name, following in zip(names, names[1:], strict=False):
            conv, norm = module._modules[name], module._modules[following]
            if isinstance(conv, convolutions) and isinstance(norm, norms) and norm.track_running_stats:
                module._modules[name] = _folded(conv, norm)
                module._modules[following] = nn.Identity()
    if channels_last:
        dims = getattr(getattr(model, "config", None), "spatial_dims", 2)
        fused = fused.to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    return fused
