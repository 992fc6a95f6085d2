"""``DownConv2d``: Fader's down-sampling convolution (4x4, stride 2, padding 1), faster on the
2x2 and 4x4 inputs of the latent discriminator.

There, on the CPU, oneDNN computes the convolution's forward and input gradient well but its
weight gradient far below the machine's matrix-product rate, and on a 2x2 input three quarters
of every product meet the padding. :func:`down_conv` keeps what oneDNN does well and writes the
rest as matrix products (``scripts/bench_down_conv.py`` -> ``benchmarks/down_conv.md``). It is
the same function with the same parameters: ``F.conv2d`` is its reference, and tests compare them.
"""
import torch
import torch.nn.functional as F
from torch import nn

# Inputs whose sides are at most this many pixels take down_conv on the CPU
# (benchmarks/down_conv.md: it wins at 2x2 and 4x4 inputs, not from 8x8 up).
GEMM_MAX_SIDE = 4


class _WeightGradAsMatmul(torch.autograd.Function):
    """The 4x4 stride-2 conv, with oneDNN's forward and input gradient and the weight gradient
    as one matrix product of the output gradient and the input's 4x4 patches."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride=2, padding=1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, (2, 2), (1, 1), (1, 1), False, (0, 0), 1,
                (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(grad, x, weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _weight_grad(grad, x, weight):
    """The weight gradient of the 4x4 stride-2 conv: (O, N*h*w) @ (N*h*w, 16*C), with the
    patches' channels last when the weight's are, so that it comes out in the weight's own
    layout (a channels_last parameter would otherwise get a transposing copy of it)."""
    n, o, h, w = grad.shape
    c = x.shape[1]  # sizes spelled out: -1 is ambiguous in an empty batch
    patches = F.pad(x, (1, 1, 1, 1)).unfold(2, 4, 2).unfold(3, 4, 2)  # (N, C, h, w, 4, 4)
    grad_rows = grad.permute(1, 0, 2, 3).reshape(o, n * h * w)
    if _is_channels_last(weight):
        cols = patches.permute(0, 2, 3, 4, 5, 1).reshape(n * h * w, 16 * c)  # (i, j, c) columns
        return (grad_rows @ cols).view(o, 4, 4, c).permute(0, 3, 1, 2)
    cols = patches.permute(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * 16)  # (c, i, j) columns
    return (grad_rows @ cols).view(o, c, 4, 4)


def down_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """``F.conv2d(x, weight, bias, stride=2, padding=1)`` for a 4x4 ``weight``. On a 2x2 input
    the single output sees the input through the kernel's central 2x2 taps only (the others meet
    the padding): a linear layer on those taps, a quarter of the multiplications. Otherwise the
    conv, with its weight gradient (if one is wanted) as a matrix product. Under CPU autocast it
    computes in the autocast dtype, as ``F.conv2d`` would."""
    n, c, h, w = x.shape
    if (h, w) == (2, 2):
        o = weight.shape[0]  # sizes spelled out: -1 is ambiguous in an empty batch
        if _is_channels_last(weight):  # (i, j, c) order: the gradient keeps the weight's layout
            taps = weight.permute(0, 2, 3, 1)[:, 1:3, 1:3, :].reshape(o, 4 * c)
            x = x.permute(0, 2, 3, 1)
        else:
            taps = weight[:, :, 1:3, 1:3].reshape(o, 4 * c)
        return F.linear(x.reshape(n, 4 * c), taps, bias).view(n, o, 1, 1)
    if not (weight.requires_grad and torch.is_grad_enabled()):  # no weight gradient to speed up
        return F.conv2d(x, weight, bias, stride=2, padding=1)
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        with torch.autocast(x.device.type, enabled=False):
            bias = None if bias is None else bias.to(dtype)
            return down_conv(x.to(dtype), weight.to(dtype), bias)
    return _WeightGradAsMatmul.apply(x, weight, bias)


class DownConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1)`` with the same parameters
    and state_dict, computed by :func:`down_conv` on CPU inputs of at most ``gemm_max_side``
    pixels a side and by the convolution otherwise (``gemm_max_side = 0``: always the
    convolution, as benchmarks compare)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 4, stride=2, padding=1, bias=bias)
        self.gemm_max_side = GEMM_MAX_SIDE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 4 and x.device.type == "cpu"
                and 2 <= min(x.shape[-2:]) and max(x.shape[-2:]) <= self.gemm_max_side):
            return down_conv(x, self.weight, self.bias)
        return super().forward(x)
