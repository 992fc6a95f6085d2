"""nn.Module faces of the fused op, parameter-compatible with nn.Conv2d(C+K, O, 3, padding=1)."""
import torch
from torch import nn

from .ops import up_label_conv
from .reference import label_bias


class UpLabelConv2d(nn.Module):
    """Nearest 2x upsample of x, concat of the labels as constant maps, then a 3x3 conv (padding 1).

    Same ``weight`` (out_channels, in_channels + label_channels, 3, 3) and ``bias`` as
    ``nn.Conv2d(in_channels + label_channels, out_channels, 3, padding=1)``, initialised the same
    way, so state_dicts load both ways.
    """

    def __init__(self, in_channels, label_channels, out_channels, bias=True, device=None,
                 dtype=None):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(label_channels, int) or label_channels < 0:
            raise ValueError(f"label_channels must be a non-negative int, got {label_channels!r}")
        self.in_channels, self.label_channels, self.out_channels = (
            in_channels, label_channels, out_channels)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels + label_channels, 3, 3, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        nn.Conv2d.reset_parameters(self)  # same initialisation as the equivalent nn.Conv2d

    def forward(self, x, labels=None):
        if labels is None and self.label_channels:
            raise ValueError(f"labels: this layer expects (N, {self.label_channels}) labels, got None")
        return up_label_conv(x, labels, self.weight, self.bias)

    def forward_many(self, x, label_sets):
        """``[self(x, labels) for labels in label_sets]`` with the convolution of ``x`` done once:
        each label set only adds its per-sample border bias (docs/DESIGN.md, identity 2), so
        decoding one latent with several label sets costs one op call, forward and backward."""
        if not self.label_channels or len(label_sets) == 1:
            return [self(x, labels) for labels in label_sets]
        for i, labels in enumerate(label_sets):
            if (not isinstance(labels, torch.Tensor)
                    or labels.shape != (len(x), self.label_channels)):
                raise ValueError(f"label_sets[{i}]: expected ({len(x)}, {self.label_channels}) "
                                 f"labels, got {getattr(labels, 'shape', labels)!r}")
        shared = up_label_conv(x, None, self.weight[:, :self.in_channels], self.bias)
        height, width = shared.shape[2:]
        return [shared + label_bias(labels, self.weight[:, self.in_channels:], height,
                                    width).to(shared.dtype)
                for labels in label_sets]

    def extra_repr(self):
        return (f"{self.in_channels}, label_channels={self.label_channels}, "
                f"out_channels={self.out_channels}, bias={self.bias is not None}")


class UpConv2d(UpLabelConv2d):
    """Nearest 2x upsample then a 3x3 conv (padding 1): ``nn.Sequential(nn.Upsample(scale_factor=2),
    nn.Conv2d(in_channels, out_channels, 3, padding=1))`` in one op, with that conv's parameters."""

    def __init__(self, in_channels, out_channels, bias=True, device=None, dtype=None):
        super().__init__(in_channels, 0, out_channels, bias=bias, device=device, dtype=dtype)

    def forward(self, x):
        return up_label_conv(x, None, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"


def _is_nearest_2x(module):
    if not isinstance(module, nn.Upsample) or module.mode != "nearest" or module.size is not None:
        return False
    scale = module.scale_factor
    scales = scale if isinstance(scale, tuple) else (scale, scale)
    return len(scales) == 2 and all(float(s) == 2.0 for s in scales)


def _is_plain_3x3(module):
    return (type(module) is nn.Conv2d and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.padding == (1, 1) and module.dilation == (1, 1) and module.groups == 1
            and module.padding_mode == "zeros")


def _up_conv_from(conv):
    fused = UpConv2d(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                     device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight, fused.bias = conv.weight, conv.bias  # the same Parameters: optimisers keep working
    return fused


def _fuse_sequential(seq):
    items = list(seq._modules.items())
    fused, i = [], 0
    while i < len(items):
        name, module = items[i]
        if i + 1 < len(items) and _is_nearest_2x(module) and _is_plain_3x3(items[i + 1][1]):
            conv_name, conv = items[i + 1]
            fused.append((conv_name, _up_conv_from(conv)))  # keeps the conv's state_dict keys
            i += 2
        else:
            fused.append((name, module))
            i += 1
    seq._modules.clear()
    seq._modules.update(fused)


def convert(module):
    """Replace, in every nn.Sequential inside `module` (itself included), each
    ``nn.Upsample(scale_factor=2, mode="nearest")`` directly followed by a 3x3, stride 1, padding 1,
    groups 1 ``nn.Conv2d`` with one ``UpConv2d`` holding that conv's parameters. Outputs are
    unchanged; everything else is left alone. Works in place and returns `module`."""
    for submodule in list(module.modules()):
        if isinstance(submodule, nn.Sequential):
            _fuse_sequential(submodule)
    return module
