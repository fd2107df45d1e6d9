"""Entropy of the class probabilities and the slice most worth correcting next."""

from __future__ import annotations

import numpy as np

from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.phantoms import generate_phantom
from napari_aunet.engine.uncertainty import most_uncertain_slice, normalized_entropy


def test_entropy_is_zero_when_sure_and_one_when_undecided():
    probabilities = np.zeros((3, 2, 2), np.float32)
    probabilities[0, 0, 0] = 1.0  # sure
    probabilities[:, 1, 1] = 1 / 3  # undecided
    probabilities[:2, 0, 1] = 0.5
    probabilities[0, 1, 0] = 1.0
    entropy = normalized_entropy(probabilities)
    assert entropy.dtype == np.float16
    assert entropy[0, 0] < 0.01 and entropy[1, 1] > 0.99 and 0.6 < entropy[0, 1] < 0.65  # log 2 / log 3


def test_the_most_uncertain_slice_is_where_the_model_struggles():
    """A phantom with noise tripled on slice 9: the phantom model doubts there most; corrected slices are skipped."""
    phantom = generate_phantom((14, 64, 64), seed=2, lesions=(2, 3))
    image = phantom.image.copy()
    rng = np.random.default_rng(0)
    image[9] += rng.normal(0, 0.6, image[9].shape).astype(np.float32)
    result = Segmenter(load_model("phantom"), device="cpu", precision="fp32").segment(
        image, axis=0, return_probabilities=True, return_attention=False)
    entropy = normalized_entropy(result.probabilities)
    assert most_uncertain_slice(entropy, 0) == 9
    assert most_uncertain_slice(entropy, 0, exclude=[9]) != 9
    assert most_uncertain_slice(np.zeros((4, 4, 4), np.float16), 0) is None
