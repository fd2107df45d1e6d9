"""Which gate does the work: each gated level forced open and closed, on a network where one gate is known to matter."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_aunet.engine.checkpoint import Checkpoint
from napari_aunet.engine.importance import forced_gate, level_importance
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.phantoms import generate_phantom
from napari_aunet.engine.training import PHANTOM_CONFIG, train_phantom_model


@pytest.fixture(scope="module")
def one_gate():
    """A phantom network whose only gate is the finest level's (trained 120 steps): cutting that skip connection
    loses the small lesions' detail, so closing its gate must cost Dice."""
    config = dataclasses.replace(PHANTOM_CONFIG, widths=(8, 16, 32), gated_levels=(1,))
    model, _ = train_phantom_model(config, steps=120, batch_size=8, seed=0)
    checkpoint = Checkpoint(config=config, state_dict=model.state_dict())
    return Segmenter(checkpoint, device="cpu", precision="fp32")


def test_forcing_a_gate_sets_its_map_and_is_undone(one_gate):
    model = one_gate.model
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
        with forced_gate(model, 1, 0.0):
            _, attention = model(x, return_attention=True)
            assert torch.all(attention[1] == 0)
        assert torch.equal(model(x), before)  # the gate is itself again
    with pytest.raises(ValueError, match="no attention gate"):
        with forced_gate(model, 2, 1.0):
            pass


def test_the_only_gate_of_a_one_gate_network_does_the_work(one_gate):
    phantom = generate_phantom((8, 64, 64), seed=21, lesions=(3, 4))
    report = level_importance(one_gate, phantom.image, axis=0, labels=phantom.labels)
    assert report["reference"] == "labels" and report["slices"] == [i for i in range(8) if phantom.labels[i].any()]
    (row,) = report["levels"]
    assert row["level"] == 1 and row["dice"] > 0.8
    assert row["change_closed"] < -0.3  # cutting the only gated skip costs Dice (measured: 0.96 -> 0.36)
    assert set(row["mean_psi"]) == {"organ", "lesion", "outside"}
    assert all(0.0 <= v <= 1.0 for v in row["mean_psi"].values())

    alone = level_importance(one_gate, phantom.image, axis=0)  # no labels: the model's own output is the reference
    assert alone["reference"] == "model" and alone["levels"][0]["dice"] == 1.0


def test_plain_unets_and_bad_slices_are_plain_errors(one_gate):
    from napari_aunet.engine.model import AttentionUNet

    plain = dataclasses.replace(one_gate.config, gated_levels=())
    unet = Segmenter(Checkpoint(config=plain, state_dict=AttentionUNet(plain).state_dict()), device="cpu")
    with pytest.raises(ValueError, match="no attention gates"):
        level_importance(unet, np.zeros((4, 32, 32), np.float32))
    with pytest.raises(ValueError, match="do not exist"):
        level_importance(one_gate, np.zeros((4, 32, 32), np.float32), slices=[9])
