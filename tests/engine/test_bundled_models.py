"""The bundled models, by name: what a user gets the moment the plugin is installed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_aunet.engine.attention_stats import attention_statistics
from napari_aunet.engine.bundled import load_model, resolve_model_path
from napari_aunet.engine.finetune import _dice_iou
from napari_aunet.engine.inference import Segmenter, resample
from napari_aunet.recipes import mni_tissue


def test_default_is_the_brain_model_and_every_model_has_a_card():
    assert resolve_model_path("default") == resolve_model_path("brain")
    for name in ("brain", "phantom"):
        checkpoint = load_model(name)
        assert checkpoint.model_card.startswith(name)
        assert checkpoint.provenance["recipe"] == name
    assert load_model("brain").config.spacing == (1.0, 1.0, 1.0)


@pytest.mark.slow
def test_brain_model_holds_on_a_perturbed_coarser_t1():
    """MNI T1 at 1.5 mm with a bias field and another contrast curve: resampled to 1 mm and back."""
    t1, labels = mni_tissue()
    axial = slice(60, 72)
    image = t1[:, :, axial].astype(np.float32) / 255.0
    bias = np.linspace(0.7, 1.3, image.shape[0])[:, None, None]
    image = (image**1.3) * bias * 1000
    shape = (131, 155, 12)  # 1.5 mm in-plane
    coarse = resample(image, shape)
    truth = resample(labels[:, :, axial].astype(np.float32), shape, mode="nearest").astype(np.uint8)
    segmenter = Segmenter(load_model("brain"), device="cpu")
    result = segmenter.segment(coarse, axis=2, spacing=(1.5, 1.5, 1.0))
    assert result.resampled_shape == (196, 232, 12)
    scores = _dice_iou(result.labels, truth, segmenter.config.class_names)["dice"]
    assert scores["grey matter"] > 0.85 and scores["white matter"] > 0.85
    statistics = attention_statistics(result.attention, result.labels > 0)
    assert [row.level for row in statistics] == [1, 2, 3]
    assert all(0.0 <= row.mass_inside <= 1.0 for row in statistics)
    assert result.attention[2].factor == 2  # named by its level, whatever the resampling
