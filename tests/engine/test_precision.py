"""bf16 autocast on the CPU stays within 0.005 Dice of fp32 on the sample scans (DESIGN.md's condition for using
it by default where the CPU has native bf16)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_aunet.engine import inference, int8
from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.finetune import _dice_iou
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.phantoms import generate_phantom
from napari_aunet.recipes import mni_tissue


def _dice_both(model: str, volume: np.ndarray, truth: np.ndarray, axis: int, other: str = "bf16",
               maps_within: float = 0.01) -> tuple[dict, dict, float]:
    checkpoint = load_model(model)
    results = {p: Segmenter(checkpoint, device="cpu", precision=p).segment(volume, axis=axis, views=1)
               for p in ("fp32", other)}
    scores = {p: _dice_iou(r.labels, truth, checkpoint.config.class_names)["dice"] for p, r in results.items()}
    agreement = float((results["fp32"].labels == results[other].labels).mean())
    for level, attention in results["fp32"].attention.items():
        difference = np.abs(attention.data.astype(np.float32) - results[other].attention[level].data)
        assert float(difference.mean()) < maps_within
    return scores["fp32"], scores[other], agreement


@pytest.mark.slow
def test_bf16_matches_fp32_on_the_mni_sample():
    t1, labels = mni_tissue()
    slab = slice(50, 130)  # 80 axial slices through the whole brain height
    fp32, bf16, agreement = _dice_both("brain", t1[:, :, slab], labels[:, :, slab], axis=2)
    for name in fp32:
        assert abs(fp32[name] - bf16[name]) < 0.005, (name, fp32[name], bf16[name])
    assert agreement > 0.99


@pytest.mark.slow
@pytest.mark.skipif(not int8.available(), reason="the [int8] extra is not installed")
def test_int8_matches_fp32_on_the_mni_sample(tmp_path, monkeypatch):
    monkeypatch.setenv(int8.CACHE_ENV, str(tmp_path))
    t1, labels = mni_tissue()
    slab = slice(50, 130)
    fp32, quantized, agreement = _dice_both("brain", t1[:, :, slab], labels[:, :, slab], axis=2, other="int8",
                                            maps_within=0.02)
    for name in fp32:
        assert abs(fp32[name] - quantized[name]) < 0.005, (name, fp32[name], quantized[name])
    assert agreement > 0.98


def test_bf16_matches_fp32_on_the_phantom_sample():
    phantom = generate_phantom((32, 64, 64), seed=0, lesions=(2, 4))
    fp32, bf16, agreement = _dice_both("phantom", phantom.image, phantom.labels, axis=0)
    for name in fp32:
        assert abs(fp32[name] - bf16[name]) < 0.005, (name, fp32[name], bf16[name])
    assert agreement > 0.99


def test_auto_precision_follows_the_cpu(monkeypatch):
    checkpoint = load_model("phantom")
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: True)
    assert Segmenter(checkpoint, device="cpu").precision == "bf16"
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: False)
    assert Segmenter(checkpoint, device="cpu").precision == "fp32"
    assert Segmenter(checkpoint, device="cpu", precision="fp32").precision == "fp32"  # still selectable
