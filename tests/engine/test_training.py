"""Phantoms have the labels they claim; the masked loss ignores unannotated voxels; training learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model

from napari_aunet.engine.phantoms import generate_phantom
from napari_aunet.engine.training import IGNORE, masked_loss, phantom_batches, seed_everything, train


@pytest.mark.parametrize("shape", [(64, 64), (32, 40, 24)])
def test_phantom_is_reproducible_and_labelled(shape):
    first, again = generate_phantom(shape, seed=4), generate_phantom(shape, seed=4)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.image.shape == shape and first.image.dtype == np.float32
    assert set(np.unique(first.labels)) <= {0, 1, 2} and (first.labels == 1).any()
    # Lesions are brighter than the organ on average, the organ brighter than the background.
    means = [first.image[first.labels == c].mean() for c in np.unique(first.labels)]
    assert means == sorted(means)


def test_phantom_rejects_bad_shapes():
    with pytest.raises(ValueError, match="phantom shape"):
        generate_phantom((4, 64))


def test_masked_loss_ignores_unannotated_voxels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORE
    loss = masked_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(logits.grad[:, :, :4] == 0)  # nothing is taught where nobody annotated
    assert torch.any(logits.grad[:, :, 4:] != 0)

    changed = logits.detach().clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 8) * 10
    assert masked_loss(changed, target) == pytest.approx(float(loss.detach()))


def test_masked_loss_of_an_unannotated_batch_is_zero_not_nan():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = masked_loss(logits, torch.full((1, 4, 4), IGNORE))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(logits.grad == 0)


def test_a_few_training_steps_lower_the_loss_and_are_repeatable():
    def run():
        seed_everything(7)
        model = tiny_model(2, widths=(8, 16, 16))
        history = train(model, phantom_batches(model.config, 4, 32, seed=7), steps=40, learning_rate=1e-2, log_every=5)
        return model, history

    model, history = run()
    assert history.loss[-1] < history.loss[0]
    again, history_again = run()
    assert history.loss == history_again.loss
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, again.state_dict()[name], rtol=0, atol=0, msg=name)


def test_cancel_stops_training_early():
    model = tiny_model(2)
    steps_seen = []
    history = train(
        model, phantom_batches(model.config, 2, 32, seed=0), steps=50, cancel=lambda: len(steps_seen) >= 3,
        progress=lambda step, total, loss: steps_seen.append(step),
    )
    assert steps_seen == [1, 2, 3] and not model.training
    assert history.seconds >= 0
