"""Checkpoints round-trip exactly, refuse pickles and broken files with a clear message, save atomically."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from conftest import tiny_model
from safetensors.torch import save_file

from napari_aunet.engine import checkpoint as checkpoint_module
from napari_aunet.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_keeps_weights_config_and_metadata(tmp_path, tiny_model_2d):
    path = tmp_path / "model.safetensors"
    history = {"steps": [10, 20], "loss": [0.9, 0.5]}
    provenance = {"images": ["a.nii.gz"], "seed": 3}
    save_checkpoint(path, tiny_model_2d, history=history, provenance=provenance, model_card="a card")
    loaded = load_checkpoint(path)
    assert loaded.config == tiny_model_2d.config
    assert loaded.history == history and loaded.provenance == provenance
    assert loaded.model_card == "a card"
    assert loaded.versions["torch"] == torch.__version__
    model = loaded.build_model()
    x = torch.randn(2, 1, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tiny_model_2d(x), rtol=0, atol=0)
    described = loaded.describe()
    assert described["config"]["widths"] == [4, 8, 8] and described["parameters"] > 0


def test_saved_weights_are_contiguous_even_from_channels_last(tmp_path):
    model = tiny_model(2).to(memory_format=torch.channels_last)
    path = save_checkpoint(tmp_path / "cl.safetensors", model)
    loaded = load_checkpoint(path)
    assert all(tensor.is_contiguous() for tensor in loaded.state_dict.values())


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("writer", ["torch_save", "plain_pickle"])
def test_pickle_files_are_refused_without_unpickling(tmp_path, writer, monkeypatch):
    path = tmp_path / "evil.safetensors"
    if writer == "torch_save":
        torch.save({"weights": torch.zeros(2), "payload": _Boom()}, path)
    else:
        path.write_bytes(pickle.dumps(_Boom()))
    monkeypatch.setattr(os, "system", lambda *a: pytest.fail("something was unpickled"))
    with pytest.raises(CheckpointError, match="never unpickles") as error:
        load_checkpoint(path)
    assert "evil.safetensors" in str(error.value)


def test_broken_and_foreign_files_are_refused_clearly(tmp_path, tiny_model_2d):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x01garbage that is no checkpoint" * 30)  # fixed: random bytes may start like a pickle
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, foreign)
    good = save_checkpoint(tmp_path / "good.safetensors", tiny_model_2d)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])

    for path, reason in [
        (tmp_path / "missing.safetensors", "no such file"),
        (empty, "empty or truncated"),
        (garbage, "not a safetensors file"),
        (foreign, "not a napari-aunet checkpoint"),
        (truncated, "damaged or truncated safetensors file"),  # (a header length may start with 0x80)
    ]:
        with pytest.raises(CheckpointError, match=reason) as error:
            load_checkpoint(path)
        assert path.name in str(error.value) and "\n" not in str(error.value)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, tiny_model_2d):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model_2d)
    loaded = load_checkpoint(path)
    from safetensors.torch import save as to_bytes

    tensors = dict(loaded.state_dict)
    tensors["head.weight"] = torch.zeros(7, 4, 1, 1)
    metadata = {"format": "napari-aunet/1", "config": loaded.config.to_json()}
    (tmp_path / "bad_shape.safetensors").write_bytes(to_bytes(tensors, metadata=metadata))
    with pytest.raises(CheckpointError, match="head.weight"):
        load_checkpoint(tmp_path / "bad_shape.safetensors")

    tensors = dict(loaded.state_dict)
    tensors["head.bias"] = torch.full_like(tensors["head.bias"], float("nan"))
    (tmp_path / "nan.safetensors").write_bytes(to_bytes(tensors, metadata=metadata))
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(tmp_path / "nan.safetensors")

    metadata_bad = {"format": "napari-aunet/1", "config": '{"widths": "oops"'}
    (tmp_path / "bad_config.safetensors").write_bytes(to_bytes(dict(loaded.state_dict), metadata=metadata_bad))
    with pytest.raises(CheckpointError, match="config metadata is invalid"):
        load_checkpoint(tmp_path / "bad_config.safetensors")


def test_failed_save_leaves_the_previous_file_intact(tmp_path, tiny_model_2d, monkeypatch):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model_2d)
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_model(2, seed=5))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert np.array_equal(
        load_checkpoint(path).state_dict["head.weight"].numpy(), tiny_model_2d.state_dict()["head.weight"].numpy()
    )
