"""exprfast.models.layers: the 4x4 stride-2 conv with matrix products against F.conv2d."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import exprfast.models.layers as layers
from exprfast.models import build
from exprfast.models.layers import GEMM_MAX_SIDE, DownConv2d, down_conv

FORMATS = [torch.contiguous_format, torch.channels_last]


def _inputs(n, c, o, h, w, memory_format, bias=True, dtype=torch.float64):
    gen = torch.Generator().manual_seed(n * 1000 + c * 100 + h * 10 + w)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype).to(memory_format=memory_format)
    weight = torch.randn(o, c, 4, 4, generator=gen, dtype=dtype)
    b = torch.randn(o, generator=gen, dtype=dtype) if bias else None
    return x.requires_grad_(), weight.requires_grad_(), b if b is None else b.requires_grad_()


@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("n,c,o,h,w,bias", [(3, 5, 7, 2, 2, True), (2, 4, 6, 4, 4, True),
                                            (2, 3, 5, 4, 4, False), (1, 6, 2, 3, 5, True),
                                            (2, 2, 3, 8, 6, True), (2, 5, 4, 2, 2, False)])
def test_values_and_gradients_match_conv2d(n, c, o, h, w, bias, memory_format, weight_format):
    x, weight, b = _inputs(n, c, o, h, w, memory_format, bias)
    weight = weight.detach().to(memory_format=weight_format).requires_grad_()
    expected = F.conv2d(x, weight, b, stride=2, padding=1)
    got = down_conv(x, weight, b)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(expected)
    wanted = [x, weight] + ([b] if bias else [])
    torch.testing.assert_close(torch.autograd.grad(got, wanted, grad),
                               torch.autograd.grad(expected, wanted, grad))


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("side", [2, 4])
def test_keeps_the_memory_format_of_conv2d(side, memory_format):
    x, weight, b = _inputs(2, 8, 16, side, side, memory_format, dtype=torch.float32)
    expected = F.conv2d(x, weight, b, stride=2, padding=1)
    got = down_conv(x, weight, b)
    for fmt in FORMATS:
        assert got.is_contiguous(memory_format=fmt) == expected.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("side", [2, 4])
def test_empty_batch_like_conv2d(side, weight_format):
    x, weight, b = _inputs(0, 3, 5, side, side, torch.channels_last)
    weight = weight.detach().to(memory_format=weight_format).requires_grad_()
    y = down_conv(x, weight, b)
    assert y.shape == F.conv2d(x, weight, b, stride=2, padding=1).shape
    grads = torch.autograd.grad(y.sum(), [x, weight, b])
    assert [g.shape for g in grads] == [x.shape, weight.shape, b.shape]
    assert all(g.abs().sum() == 0 for g in grads[1:])  # no samples, no weight or bias gradient


@pytest.mark.parametrize("weight_format", FORMATS)
@pytest.mark.parametrize("side", [2, 4])
def test_weight_gradient_keeps_the_weight_layout(side, weight_format):
    """A channels_last model's parameters get channels_last gradients (and NCHW ones NCHW), so
    that autograd never has to transpose one into the parameter's layout."""
    x, weight, b = _inputs(2, 8, 16, side, side, torch.channels_last, dtype=torch.float32)
    weight = weight.detach().to(memory_format=weight_format).requires_grad_()
    y = down_conv(x, weight, b)
    (grad_weight,) = torch.autograd.grad(y, [weight], torch.randn_like(y))
    assert grad_weight.stride() == weight.stride()


@pytest.mark.parametrize("h,w", [(2, 2), (4, 4), (3, 4)])
def test_gradcheck_float64(h, w):
    assert torch.autograd.gradcheck(down_conv, _inputs(2, 3, 4, h, w, torch.channels_last))
    assert torch.autograd.gradcheck(down_conv, _inputs(2, 3, 4, h, w, torch.contiguous_format))


@pytest.mark.parametrize("side", [2, 4])
def test_bfloat16_autocast_is_close_to_conv2d(side):
    x, weight, b = _inputs(32, 64, 128, side, side, torch.channels_last, dtype=torch.float32)
    with torch.autocast("cpu", torch.bfloat16):
        got, expected = down_conv(x, weight, b), F.conv2d(x, weight, b, stride=2, padding=1)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.1)
    grad = torch.randn_like(expected)
    for g, g_ref in zip(torch.autograd.grad(got, [x, weight, b], grad),
                        torch.autograd.grad(expected, [x, weight, b], grad)):
        assert g.dtype == g_ref.dtype == torch.float32
        torch.testing.assert_close(g, g_ref, rtol=0.02, atol=0.02 * g_ref.abs().max().item())


@pytest.mark.parametrize("side", [2, 4])
def test_gradients_of_a_frozen_weight_or_a_constant_input(side):
    """As in training: the discriminator's own update (no input gradient) and the adversarial
    loss through a frozen discriminator (no weight gradient)."""
    x, weight, b = _inputs(2, 4, 6, side, side, torch.channels_last)
    grad = torch.randn(2, 6, side // 2, side // 2, dtype=torch.float64)
    for wanted in ([weight, b], [x]):
        got = torch.autograd.grad(down_conv(x, weight, b), wanted, grad)
        expected = torch.autograd.grad(F.conv2d(x, weight, b, stride=2, padding=1), wanted, grad)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("side", [2, 3, 4, GEMM_MAX_SIDE + 1, 8])
def test_module_is_nn_conv2d_with_the_same_state_dict(side):
    torch.manual_seed(0)
    reference = nn.Conv2d(6, 10, 4, 2, 1).double()
    layer = DownConv2d(6, 10).double()
    layer.load_state_dict(reference.state_dict())
    assert isinstance(layer, nn.Conv2d)
    assert layer.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(3, 6, side, side, dtype=torch.float64, requires_grad=True)
    y, y_ref = layer(x), reference(x)
    torch.testing.assert_close(y, y_ref)
    grad = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, [x, layer.weight, layer.bias], grad),
                               torch.autograd.grad(y_ref, [x, reference.weight, reference.bias],
                                                   grad))


def test_module_takes_the_matrix_product_only_on_small_cpu_inputs(monkeypatch):
    calls = []

    def recording(x, weight, bias):
        calls.append(x.shape[-1])
        return F.conv2d(x, weight, bias, stride=2, padding=1)

    monkeypatch.setattr(layers, "down_conv", recording)
    layer = DownConv2d(2, 3)
    for side in (2, GEMM_MAX_SIDE, GEMM_MAX_SIDE + 1, 2 * GEMM_MAX_SIDE):
        layer(torch.randn(1, 2, side, side))
    assert calls == [2, GEMM_MAX_SIDE]
    layer.gemm_max_side = 0  # the benchmarks' baseline: the convolution at every size
    layer(torch.randn(1, 2, 2, 2))
    assert calls == [2, GEMM_MAX_SIDE]


def test_latent_discriminator_compiles_fullgraph_with_the_same_gradients():
    """``--compile`` compiles the discriminator: its DownConv2d layers (the linear form at 2x2,
    the custom weight gradient at 4x4) must trace whole and give the eager gradients."""
    torch.manual_seed(0)
    discriminator = build("paper", img_size=32).latent_discriminator.eval()
    z = torch.randn(4, discriminator.conv_layers[0].conv.in_channels, 4, 4)
    compiled = torch.compile(discriminator, fullgraph=True, backend="aot_eager")
    grads = []
    for net in (discriminator, compiled):
        discriminator.zero_grad(set_to_none=True)
        net(z).square().sum().backward()
        grads.append([p.grad.clone() for p in discriminator.parameters()])
    torch.testing.assert_close(grads[1], grads[0])
