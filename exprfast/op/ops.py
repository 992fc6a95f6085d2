"""Python face of the C++/CUDA op exprfast::up_label_conv: fake kernels (shape inference, for
torch.compile and FakeTensor), autograd, and the public function."""
import torch

from . import _extension

BUILD_INFO = _extension.load()  # registers torch.ops.exprfast.*

_OP = "up_label_conv"


def up_label_conv(x, labels, weight, bias=None):
    """``conv2d(cat([upsample_nearest_2x(x), label maps]), weight, bias, padding=1)``, fused.

    x: (N, C, H, W) float tensor. labels: (N, K) real values (one-hot, or any float for a
    slider) or None (K = 0); each becomes a constant 2H x 2W map. weight: (O, C+K, 3, 3), an
    ``nn.Conv2d(C+K, O, 3, padding=1)`` weight. bias: (O,) or None. Returns (N, O, 2H, 2W) in x's
    memory format. Never materialises the upsampled input, in the forward or for backward.

    Raises TypeError for an argument that is not a tensor (labels and bias may be None) or of the
    wrong dtype, ValueError for a wrong shape, RuntimeError for tensors on different devices.
    """
    _check_tensor(x, "x")
    _check_tensor(labels, "labels", optional=True)
    _check_tensor(weight, "weight")
    _check_tensor(bias, "bias", optional=True)
    return torch.ops.exprfast.up_label_conv.default(x, labels, weight, bias)


def _check_tensor(value, name, optional=False):
    """The dispatcher turns None into an undefined tensor and refuses other objects with its own
    RuntimeError; name the argument instead."""
    if isinstance(value, torch.Tensor) or (optional and value is None):
        return
    expected = "a torch.Tensor or None" if optional else "a torch.Tensor"
    raise TypeError(f"{_OP}: {name} must be {expected}, got {type(value).__name__}")


def _suggest_memory_format(x):
    suggest = getattr(torch._prims_common, "suggest_memory_format", None)
    if suggest is not None:
        return suggest(x)
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format


def _check(condition, message, error=ValueError):
    if not condition:
        raise error(f"{_OP}: {message}")


def _check_like_x(x, t, name):
    """The driver's check_like_x: one dtype and one device for all tensors. Devices must be checked
    here too: a meta tensor among CPU/CUDA ones sends the call to this fake kernel, not the driver."""
    _check(t.dtype == x.dtype, f"{name} has dtype {t.dtype} but x has dtype {x.dtype}; cast them "
           "to one dtype (or run under torch.autocast)", TypeError)
    _check(t.device == x.device, f"{name} is on {t.device} but x is on {x.device}; move them to "
           "one device", RuntimeError)


def _check_shapes(x, labels, weight, bias):
    """The C++ driver's input checks, for fake and meta tensors (same order, same messages)."""
    _check(x.dtype.is_floating_point, f"x must be a floating-point tensor, got {x.dtype}", TypeError)
    _check(x.dim() == 4, f"x must be 4-D (N, C, H, W), got shape {list(x.shape)}")
    _check(x.shape[1] > 0 and x.shape[2] > 0 and x.shape[3] > 0,
           f"x must have C, H, W >= 1, got shape {list(x.shape)}")
    N, C = x.shape[:2]
    K = 0
    if labels is not None:
        _check_like_x(x, labels, "labels")
        _check(labels.dim() == 2 and labels.shape[0] == N,
               f"labels must be 2-D (N, K) with N = {N} (x's batch), got shape {list(labels.shape)}")
        K = labels.shape[1]
    _check_like_x(x, weight, "weight")
    _check(weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3),
           f"weight must be a 3x3 conv weight (O, C+K, 3, 3), got shape {list(weight.shape)}")
    _check(weight.shape[1] == C + K, f"weight has {weight.shape[1]} input channels but x has C = {C} and labels K = {K}, so weight must be (O, {C + K}, 3, 3)")
    _check(weight.shape[0] > 0, "weight must have at least one output channel")
    if bias is not None:
        _check_like_x(x, bias, "bias")
        _check(bias.dim() == 1 and bias.shape[0] == weight.shape[0],
               f"bias must be 1-D (O,) with O = {weight.shape[0]} (weight's output channels), got shape {list(bias.shape)}")
    return N, K


@torch.library.register_fake("exprfast::up_label_conv")
def _up_label_conv_fake(x, labels, weight, bias):
    N, _ = _check_shapes(x, labels, weight, bias)
    shape = (N, weight.shape[0], 2 * x.shape[2], 2 * x.shape[3])
    # Allocated in the format, like the driver's at::empty: `.contiguous(format)` would keep
    # row-major strides when O == 1, whose size-1 channel stride differs from the driver's.
    return torch.empty(shape, dtype=x.dtype, device=x.device,
                       memory_format=_suggest_memory_format(x))


@torch.library.register_fake("exprfast::up_label_conv_backward")
def _up_label_conv_backward_fake(grad, x, labels, weight):
    N, K = _check_shapes(x, labels, weight, None)
    _check_like_x(x, grad, "grad")
    expected = [N, weight.shape[0], 2 * x.shape[2], 2 * x.shape[3]]
    if list(grad.shape) != expected:  # the driver's wording, under the backward op's name
        raise ValueError(f"{_OP}_backward: grad must have the output's shape "
                         f"({', '.join(map(str, expected))}), got {list(grad.shape)}")
    return (
        torch.empty_like(x, memory_format=_suggest_memory_format(x)),
        x.new_empty((N, K)),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
        x.new_empty((weight.shape[0],)),
    )


def _setup_context(ctx, inputs, output):
    x, labels, weight, bias = inputs
    ctx.save_for_backward(x, labels, weight)  # never the 4x larger upsampled input
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, labels, weight = ctx.saved_tensors
    grad_x, grad_labels, grad_weight, grad_bias = torch.ops.exprfast.up_label_conv_backward.default(
        grad, x, labels, weight)
    return (grad_x, grad_labels if labels is not None else None, grad_weight,
            grad_bias if ctx.has_bias else None)


def _double_backward(ctx, *grads):
    raise RuntimeError(
        f"{_OP}: double backward (gradients of gradients) is not supported; "
        "use exprfast.op.reference.up_label_conv_reference where you need it")


def _save_nothing(ctx, inputs, output):
    pass


torch.library.register_autograd("exprfast::up_label_conv", _backward, setup_context=_setup_context)
torch.library.register_autograd("exprfast::up_label_conv_backward", _double_backward,
                                setup_context=_save_nothing)
