"""The nn.Module faces: nn.Conv2d compatibility and convert()."""
import pytest
import torch
from torch import nn

import exprfast
from exprfast.op.nn import UpConv2d, UpLabelConv2d, convert
from exprfast.op.reference import up_label_conv_reference


def test_parameters_named_and_shaped_like_conv2d():
    layer = UpLabelConv2d(5, 2, 7)
    conv = nn.Conv2d(7, 7, 3, padding=1)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {
        "weight": torch.Size([7, 7, 3, 3]), "bias": torch.Size([7])}
    assert layer.state_dict().keys() == conv.state_dict().keys()
    assert UpLabelConv2d(5, 2, 7, bias=False).bias is None
    # Same initialisation distribution as nn.Conv2d: uniform within 1/sqrt(fan_in).
    bound = 1 / (7 * 9) ** 0.5
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound


def test_state_dict_round_trip_with_conv2d():
    layer = UpLabelConv2d(4, 3, 6)
    conv = nn.Conv2d(7, 6, 3, padding=1)
    layer.load_state_dict(conv.state_dict())
    x, labels = torch.randn(2, 4, 5, 3), torch.rand(2, 3)
    torch.testing.assert_close(layer(x, labels), up_label_conv_reference(x, labels, conv.weight, conv.bias))
    back = nn.Conv2d(7, 6, 3, padding=1)
    back.load_state_dict(UpLabelConv2d(4, 3, 6).state_dict())
    up = UpConv2d(7, 6)
    up.load_state_dict(back.state_dict())
    torch.testing.assert_close(up.weight, back.weight)


def test_up_conv_equals_upsample_then_conv():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    seq = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv)
    up = UpConv2d(3, 4)
    up.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 5, 6)
    torch.testing.assert_close(up(x), seq(x), rtol=1e-5, atol=1e-5)


def test_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="in_channels"):
        UpLabelConv2d(0, 1, 3)
    with pytest.raises(ValueError, match="label_channels"):
        UpLabelConv2d(3, -1, 3)
    with pytest.raises(ValueError, match="labels"):
        UpLabelConv2d(3, 2, 3)(torch.randn(1, 3, 2, 2))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_forward_many_equals_one_call_per_label_set(memory_format):
    """The same x with several label sets: one convolution of x plus each set's border bias must
    give what separate calls give, values and gradients (x, labels, weight, bias)."""
    torch.manual_seed(0)
    layer = UpLabelConv2d(6, 3, 5).double()
    x = torch.randn(4, 6, 3, 5, dtype=torch.double).contiguous(memory_format=memory_format)
    label_sets = [torch.rand(4, 3, dtype=torch.double) for _ in range(3)]

    def run(fn):
        xs = x.detach().clone().requires_grad_()
        labels = [t.detach().clone().requires_grad_() for t in label_sets]
        layer.zero_grad()
        outs = fn(xs, labels)
        sum((k + 1) * (o * o.detach().sin()).sum() for k, o in enumerate(outs)).backward()
        return outs, [xs.grad, *(t.grad for t in labels), layer.weight.grad, layer.bias.grad]

    many, many_grads = run(layer.forward_many)
    ones, one_grads = run(lambda xs, labels: [layer(xs, t) for t in labels])
    for a, b in zip(many + many_grads, ones + one_grads):
        torch.testing.assert_close(a, b)
    assert many[0].is_contiguous(memory_format=memory_format)


def test_forward_many_rejects_bad_label_sets():
    layer = UpLabelConv2d(3, 2, 4)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"label_sets\[1\]: expected \(2, 2\)"):
        layer.forward_many(x, [torch.rand(2, 2), torch.rand(3, 2)])
    with pytest.raises(ValueError, match=r"label_sets\[0\]"):
        layer.forward_many(x, [None, torch.rand(2, 2)])


def small_decoder():
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(8, 6, 3, padding=1),
        nn.BatchNorm2d(6), nn.ReLU(),
        nn.Sequential(nn.Upsample(scale_factor=2.0), nn.Conv2d(6, 4, 3, padding=1, bias=False)),
        nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(4, 4, 3, padding=1),  # not nearest
        nn.Upsample(scale_factor=2), nn.Conv2d(4, 3, 5, padding=2),  # not 3x3
        nn.Upsample(scale_factor=2), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1),  # not adjacent
        nn.Upsample(scale_factor=3), nn.Conv2d(3, 3, 3, padding=1),  # not 2x
        nn.Tanh(),
    )


def test_convert_fuses_only_exact_patterns_and_keeps_outputs():
    torch.manual_seed(0)
    model = small_decoder().eval()
    x = torch.randn(2, 8, 2, 2)
    before, state = model(x), model.state_dict()
    params = {id(p) for p in model.parameters()}
    assert convert(model) is model
    fused = [m for m in model.modules() if isinstance(m, UpConv2d)]
    assert len(fused) == 2
    assert fused[1].bias is None
    assert sum(isinstance(m, nn.Upsample) for m in model.modules()) == 4
    assert model.state_dict().keys() == state.keys()  # same keys: old checkpoints still load
    assert {id(p) for p in model.parameters()} == params  # same Parameter objects
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    model.load_state_dict(state)


def test_convert_leaves_other_modules_alone():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
    assert convert(model) is model and len(model) == 2
