"""The attention gate against a hand computation, gradchecks, and the network's shapes and maps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_model

from napari_aunet.engine.config import ModelConfig
from napari_aunet.engine.model import AttentionGate, AttentionUNet, count_parameters


def _set_conv(conv: torch.nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight).reshape(conv.weight.shape))
        conv.bias.copy_(torch.from_numpy(bias))


def _set_bn(bn: torch.nn.Module, mean, var, gamma, beta) -> None:
    with torch.no_grad():
        bn.running_mean.copy_(torch.as_tensor(mean, dtype=torch.float64))
        bn.running_var.copy_(torch.as_tensor(var, dtype=torch.float64))
        bn.weight.copy_(torch.as_tensor(gamma, dtype=torch.float64))
        bn.bias.copy_(torch.as_tensor(beta, dtype=torch.float64))


def _bilinear_half_pixel(image: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (C, H, W) with half-pixel centres (align_corners=False), written out by hand."""
    channels, height, width = image.shape
    out = np.zeros((channels, *out_shape))
    for i in range(out_shape[0]):
        for j in range(out_shape[1]):
            y = max((i + 0.5) * height / out_shape[0] - 0.5, 0.0)
            x = max((j + 0.5) * width / out_shape[1] - 0.5, 0.0)
            y0, x0 = min(int(np.floor(y)), height - 1), min(int(np.floor(x)), width - 1)
            y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
            dy, dx = y - y0, x - x0
            out[:, i, j] = (
                image[:, y0, x0] * (1 - dy) * (1 - dx)
                + image[:, y0, x1] * (1 - dy) * dx
                + image[:, y1, x0] * dy * (1 - dx)
                + image[:, y1, x1] * dy * dx
            )
    return out


@pytest.mark.parametrize("gating_grid", ["same", "coarser"])
def test_gate_matches_hand_computation(gating_grid):
    rng = np.random.default_rng(1)
    skip_channels, gating_channels, inter = 4, 6, 2
    gate = AttentionGate(2, skip_channels, gating_channels).double().eval()
    assert gate.skip_transform[0].out_channels == inter  # F_int defaults to C_l // 2

    wx, bx = rng.normal(size=(inter, skip_channels)), rng.normal(size=inter)
    wg, bg = rng.normal(size=(inter, gating_channels)), rng.normal(size=inter)
    wpsi, bpsi = rng.normal(size=(1, inter)), rng.normal(size=1)
    _set_conv(gate.skip_transform[0], wx, bx)
    _set_conv(gate.gating_transform[0], wg, bg)
    _set_conv(gate.psi[0], wpsi, bpsi)
    bn_x = dict(mean=rng.normal(size=inter), var=rng.uniform(0.5, 2, inter), gamma=rng.normal(size=inter), beta=rng.normal(size=inter))
    bn_g = dict(mean=rng.normal(size=inter), var=rng.uniform(0.5, 2, inter), gamma=rng.normal(size=inter), beta=rng.normal(size=inter))
    bn_p = dict(mean=rng.normal(size=1), var=rng.uniform(0.5, 2, 1), gamma=rng.normal(size=1), beta=rng.normal(size=1))
    _set_bn(gate.skip_transform[1], **bn_x)
    _set_bn(gate.gating_transform[1], **bn_g)
    _set_bn(gate.psi[1], **bn_p)

    x = rng.normal(size=(skip_channels, 6, 8))
    g_shape = (6, 8) if gating_grid == "same" else (3, 4)
    g = rng.normal(size=(gating_channels, *g_shape))

    eps = gate.psi[1].eps

    def bn(values, mean, var, gamma, beta):
        return (values - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps) * gamma[:, None, None] + beta[:, None, None]

    gx = bn(np.einsum("oc,chw->ohw", wx, x) + bx[:, None, None], **bn_x)
    gg = bn(np.einsum("oc,chw->ohw", wg, g) + bg[:, None, None], **bn_g)
    if gating_grid == "coarser":
        gg = _bilinear_half_pixel(gg, (6, 8))
    hidden = np.maximum(gx + gg, 0)
    psi = 1 / (1 + np.exp(-bn(np.einsum("oc,chw->ohw", wpsi, hidden) + bpsi[:, None, None], **bn_p)))
    expected_out = x * psi

    out, psi_torch = gate(torch.from_numpy(x)[None], torch.from_numpy(g)[None])
    np.testing.assert_allclose(psi_torch[0].detach().numpy(), psi, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out[0].detach().numpy(), expected_out, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gate_gradcheck(spatial_dims):
    torch.manual_seed(0)
    gate = AttentionGate(spatial_dims, 3, 4).double().train()
    spatial_x = (4,) * spatial_dims
    spatial_g = (2,) * spatial_dims
    x = torch.randn(2, 3, *spatial_x, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 4, *spatial_g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gate(a, b)[0], (x, g), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_tiny_network_gradcheck(mode):
    torch.manual_seed(0)
    model = AttentionUNet(tiny_config(2, widths=(2, 3), gated_levels=(1,), out_channels=2)).double()
    model.train(mode == "train")
    x = torch.randn(2, 1, 5, 6, dtype=torch.float64, requires_grad=True)  # odd size: padding path too

    def outputs(inputs):
        logits, attention = model(inputs, return_attention=True)
        return logits, attention[1]

    assert torch.autograd.gradcheck(outputs, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "spatial_dims, shape",
    [(2, (37, 50)), (2, (8, 8)), (2, (1, 3)), (3, (9, 14, 11)), (3, (4, 4, 4))],
)
def test_odd_sizes_keep_shape_and_maps_sit_on_their_level_grid(spatial_dims, shape):
    model = tiny_model(spatial_dims, gated_levels=(1, 2), widths=(4, 8, 8))
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        logits, attention = model(x, return_attention=True)
    assert logits.shape == (2, 3, *shape)
    assert sorted(attention) == [1, 2]
    for level, psi in attention.items():
        factor = 2 ** (level - 1)
        assert psi.shape == (2, 1, *(-(-n // factor) for n in shape))
        assert float(psi.min()) >= 0.0 and float(psi.max()) <= 1.0


def test_padding_never_resizes_content():
    """A model's output on a cropped input equals the output on the full one away from the padded edge."""
    model = tiny_model(2, gated_levels=(1, 2))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert model(x[..., :31, :29]).shape[-2:] == (31, 29)
        full = model(x)
        # Same input size (a multiple of 4) cropped: identical values.
        np.testing.assert_allclose(model(x[..., :28, :28])[..., :8, :8], full[..., :8, :8], atol=1e-5)


def test_gates_off_is_a_plain_unet():
    gated = tiny_model(2, gated_levels=(1, 2))
    plain = tiny_model(2, gated_levels=())
    assert not any("gate" in name for name, _ in plain.named_parameters())
    assert count_parameters(plain) < count_parameters(gated)

    # With every gate saturated open (psi == 1) the gated network computes exactly the plain one.
    missing, unexpected = plain.load_state_dict(gated.state_dict(), strict=False)
    assert not missing and all(".gate." in key for key in unexpected)
    with torch.no_grad():
        for decoder in gated.decoders:
            decoder.gate.psi[1].bias.fill_(1e3)
    x = torch.randn(2, 1, 24, 20)
    with torch.no_grad():
        logits_gated, attention = gated(x, return_attention=True)
        logits_plain, no_attention = plain(x, return_attention=True)
    assert no_attention == {}
    assert all(torch.all(psi == 1.0) for psi in attention.values())
    torch.testing.assert_close(logits_gated, logits_plain)


def test_single_gate_subset():
    model = tiny_model(2, gated_levels=(2,), widths=(4, 8, 8, 8))
    with torch.no_grad():
        _, attention = model(torch.randn(1, 1, 16, 16), return_attention=True)
    assert list(attention) == [2]
    assert [decoder.gate is not None for decoder in model.decoders] == [False, True, False]


def test_wrong_channel_count_is_a_clear_error():
    model = tiny_model(2)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 1"):
        model(torch.randn(1, 3, 16, 16))


def test_config_json_round_trip_and_validation():
    config = tiny_config(3, gated_levels=(2, 1), spacing=[1.0, 0.5, 2.0])
    again = ModelConfig.from_json(config.to_json())
    assert again == config
    assert again.gated_levels == (1, 2) and again.spacing == (1.0, 0.5, 2.0)
    with pytest.raises(ValueError, match="gated levels"):
        tiny_config(2, gated_levels=(3,))
    with pytest.raises(ValueError, match="class names"):
        ModelConfig(out_channels=3, class_names=("a", "b"))
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**config.to_dict(), "surprise": 1})


@pytest.mark.parametrize("spatial_dims, shape", [(2, (19, 26)), (3, (9, 12, 10))])
def test_coarse_grid_gate_variant_gives_maps_on_the_same_grids(spatial_dims, shape):
    model = tiny_model(spatial_dims, gated_levels=(1, 2), gate_grid="coarse")
    assert type(model.decoders[0].gate).__name__ == "CoarseAttentionGate"
    with torch.no_grad():
        logits, attention = model(torch.randn(1, 1, *shape), return_attention=True)
    assert logits.shape[2:] == shape
    for level, psi in attention.items():
        factor = 2 ** (level - 1)
        assert psi.shape[2:] == tuple(-(-n // factor) for n in shape)
        assert 0.0 <= float(psi.min()) and float(psi.max()) <= 1.0
    assert count_parameters(model) != count_parameters(tiny_model(spatial_dims, gated_levels=(1, 2)))


def nyquist_share(image: np.ndarray) -> float:
    """Share of a 2D map's energy (its mean removed) at the 2-pixel period along either axis: the dot grid a
    stride-2 transposed convolution leaves when its four kernel positions differ."""
    centred = image.astype(np.float64) - image.mean()
    if centred.std() < 1e-4:  # flat to float rounding: no pattern at all
        return 0.0
    power = np.abs(np.fft.fft2(centred)) ** 2
    rows, cols = centred.shape
    at_nyquist = power[rows // 2, :].sum() + power[:, cols // 2].sum() - power[rows // 2, cols // 2]
    return float(at_nyquist / max(power.sum(), 1e-30))


@pytest.mark.parametrize("gate_grid", ["interpolated", "coarse"])
def test_gates_fed_by_the_coarser_features_leave_no_dot_grid_on_a_constant_scan(gate_grid):
    """The 'fine' gate takes its gating signal from the transposed convolution's output, whose four kernel
    positions paint a 2-pixel pattern over a featureless scan; gating from the coarser features resized
    bilinearly (or at the coarser grid) does not."""
    torch.manual_seed(0)
    config = ModelConfig(widths=(8, 16, 32, 64), out_channels=2, class_names=("a", "b"))
    flat = torch.full((1, 1, 192, 192), 0.5)
    shares = {}
    for grid in ("fine", gate_grid):
        torch.manual_seed(0)
        model = AttentionUNet(replace(config, gate_grid=grid)).eval()
        with torch.no_grad():
            _, attention = model(flat, return_attention=True)
        # the middle half, away from the zero-padded border, where the scan really is constant
        shares[grid] = {level: nyquist_share(psi[0, 0, m // 4 : -m // 4, m // 4 : -m // 4].numpy())
                        for level, psi in attention.items() for m in [psi.shape[-1]]}
    assert max(shares["fine"][1], shares["fine"][2]) > 0.5  # the artefact, where it comes from
    assert all(share < 0.05 for share in shares[gate_grid].values()), shares[gate_grid]
