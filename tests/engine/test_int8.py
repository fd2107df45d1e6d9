"""int8 inference through ONNX Runtime (the optional extra [int8]): labels and attention maps as fp32's, the
quantized model kept in the cache folder and made again when the model changes, a plain message without it."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_aunet import cli
from napari_aunet.engine import int8
from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.finetune import _dice_iou
from napari_aunet.engine.importance import forced_gate
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.phantoms import generate_phantom

needs_onnxruntime = pytest.mark.skipif(not int8.available(), reason="the [int8] extra is not installed")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(int8.CACHE_ENV, str(tmp_path))
    return tmp_path / "int8"


@needs_onnxruntime
def test_int8_labels_and_maps_follow_fp32_on_a_phantom(cache):
    checkpoint = load_model("phantom")
    phantom = generate_phantom((24, 64, 72), seed=3, lesions=(2, 4))
    fp32 = Segmenter(checkpoint, device="cpu", precision="fp32").segment(phantom.image, axis=0)
    quantized = Segmenter(checkpoint, device="cpu", precision="int8").segment(phantom.image, axis=0)
    names = checkpoint.config.class_names
    agreement = _dice_iou(quantized.labels, fp32.labels, names)["dice"]
    assert min(agreement.values()) > 0.95, agreement
    truth_fp32 = _dice_iou(fp32.labels, phantom.labels, names)["dice"]
    truth_int8 = _dice_iou(quantized.labels, phantom.labels, names)["dice"]
    for name in truth_fp32:
        assert truth_int8[name] > truth_fp32[name] - 0.03, (name, truth_fp32[name], truth_int8[name])
    assert set(quantized.attention) == set(fp32.attention)
    for level, found in quantized.attention.items():
        assert found.data.shape == fp32.attention[level].data.shape
        assert found.geometry == fp32.attention[level].geometry
        difference = np.abs(found.data.astype(np.float32) - fp32.attention[level].data.astype(np.float32))
        assert float(difference.mean()) < 0.03, (level, float(difference.mean()))
    assert len(list(cache.glob("*.onnx"))) == 1


@needs_onnxruntime
def test_the_quantized_model_is_reused_and_remade_when_the_model_changes(cache, monkeypatch):
    checkpoint = load_model("phantom")
    volume = generate_phantom((8, 48, 48), seed=5, lesions=(1, 2)).image
    first = Segmenter(checkpoint, device="cpu", precision="int8").segment(volume, axis=0)
    (stored,) = cache.glob("*.onnx")

    made = []
    original = int8.quantized_onnx
    monkeypatch.setattr(int8, "quantized_onnx", lambda *a, **k: made.append(1) or original(*a, **k))
    again = Segmenter(checkpoint, device="cpu", precision="int8").segment(volume, axis=0)
    assert made == [] and np.array_equal(again.labels, first.labels)  # read from the cache folder

    segmenter = Segmenter(checkpoint, device="cpu", precision="int8")
    with torch.no_grad():
        segmenter.model.head.bias.add_(0.5)  # a fine-tuning step changes the weights in place
    segmenter.segment(volume, axis=0)
    assert made == [1] and len(list(cache.glob("*.onnx"))) == 2 and stored.is_file()

    with forced_gate(segmenter.model, 1, 1.0):  # a forced gate is quantized afresh, never cached
        segmenter.segment(volume, axis=0)
    assert made == [1, 1] and len(list(cache.glob("*.onnx"))) == 2


@needs_onnxruntime
def test_a_damaged_cache_file_is_replaced(cache):
    checkpoint = load_model("phantom")
    volume = generate_phantom((8, 48, 48), seed=6, lesions=(1, 2)).image
    Segmenter(checkpoint, device="cpu", precision="int8").segment(volume, axis=0)
    (stored,) = cache.glob("*.onnx")
    stored.write_bytes(b"not an onnx model")
    result = Segmenter(checkpoint, device="cpu", precision="int8").segment(volume, axis=0)
    assert result.labels.any() and stored.stat().st_size > 1000


def test_without_onnxruntime_int8_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] in ("onnxruntime", "onnx"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(generate_phantom((8, 32, 32), seed=1).image, np.eye(4)), scan)
    capsys.readouterr()
    code = cli.main(["segment", str(scan), "-o", str(tmp_path / "out.nii.gz"), "--model", "phantom",
                     "--precision", "int8", "--device", "cpu"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.count("\n") == 0 and "pip install 'napari-aunet[int8]'" in error, error
    assert not (tmp_path / "out.nii.gz").exists()


@needs_onnxruntime
def test_aunet_segment_precision_int8_writes_labels_like_fp32(tmp_path, cache):
    phantom = generate_phantom((12, 48, 56), seed=2, lesions=(2, 3))
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(phantom.image, np.eye(4)), scan)
    outputs = {}
    for precision in ("fp32", "int8"):
        outputs[precision] = tmp_path / f"{precision}.nii.gz"
        assert cli.main(["segment", str(scan), "-o", str(outputs[precision]), "--model", "phantom", "--axis", "0",
                         "--precision", precision, "--device", "cpu", "-q"]) == 0
    fp32, quantized = (np.asarray(nib.load(outputs[p]).dataobj) for p in ("fp32", "int8"))
    assert float((fp32 == quantized).mean()) > 0.98
    assert len(list(cache.glob("*.onnx"))) == 1


@needs_onnxruntime
def test_a_caller_that_runs_batches_directly_calibrates_on_its_batch(cache):
    from conftest import tiny_model

    model = tiny_model(2, in_channels=2)  # e.g. a click model: image + guidance channels, run batch by batch
    segmenter = Segmenter(model, device="cpu", precision="int8")
    batch = np.random.default_rng(0).normal(size=(3, 2, 30, 44)).astype(np.float32)
    probabilities, attention = segmenter._run(batch)
    reference, _ = Segmenter(model, device="cpu", precision="fp32")._run(batch)
    assert probabilities.shape == reference.shape
    assert float(np.abs(probabilities - reference).mean()) < 0.05
    assert {level: a.shape for level, a in attention.items()} == {1: (3, 30, 44), 2: (3, 15, 22)}


@needs_onnxruntime
def test_int8_runs_a_3d_model_window_by_window(cache):
    from conftest import tiny_model

    model = tiny_model(3)
    volume = generate_phantom((40, 36, 44), seed=4, lesions=(1, 2)).image
    options = {"mode": "3d", "roi_size": 24, "overlap": 0.25, "return_probabilities": True}
    fp32 = Segmenter(model, device="cpu", precision="fp32").segment(volume, **options)
    quantized = Segmenter(model, device="cpu", precision="int8").segment(volume, **options)
    assert quantized.labels.shape == volume.shape
    assert float(np.abs(quantized.probabilities - fp32.probabilities).mean()) < 0.05
    assert {k: m.data.shape for k, m in quantized.attention.items()} == {
        k: m.data.shape for k, m in fp32.attention.items()}
