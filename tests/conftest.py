"""Shared fixtures: tiny models (widths 4-8) and small phantoms so engine tests run in seconds."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_aunet.engine.config import ModelConfig, Normalization
from napari_aunet.engine.model import AttentionUNet


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _own_data_dir(tmp_path_factory):
    """Autosaved label edits and quantized models of the tests go to folders of their own, never to the user's
    data or cache directory."""
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))
    os.environ["AUNET_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache-home"))


def tiny_config(spatial_dims: int = 2, gated_levels=(1, 2), out_channels: int = 3, **kwargs) -> ModelConfig:
    names = ("background", "organ", "lesion", "extra")[:out_channels]
    return ModelConfig(
        spatial_dims=spatial_dims,
        in_channels=kwargs.pop("in_channels", 1),
        out_channels=out_channels,
        widths=kwargs.pop("widths", (4, 8, 8)),
        gated_levels=gated_levels,
        class_names=names,
        normalization=kwargs.pop("normalization", Normalization(mode="zscore")),
        **kwargs,
    )


def tiny_model(spatial_dims: int = 2, seed: int = 0, **kwargs) -> AttentionUNet:
    torch.manual_seed(seed)
    return AttentionUNet(tiny_config(spatial_dims, **kwargs)).eval()


@pytest.fixture(scope="session")
def tiny_model_2d() -> AttentionUNet:
    return tiny_model(2)


@pytest.fixture(scope="session")
def tiny_model_3d() -> AttentionUNet:
    return tiny_model(3)


def axes_affine(perm, signs, spacing, origin) -> np.ndarray:
    """File axis i runs along world axis perm[i] (0=R, 1=A, 2=S), direction signs[i], spacing[i] mm."""
    aff = np.eye(4)
    aff[:3, :3] = 0.0
    for i, (w, s, d) in enumerate(zip(perm, signs, spacing, strict=True)):
        aff[w, i] = s * d
    aff[:3, 3] = origin
    return aff
