"""exprfast.up_label_conv against its pure-PyTorch definition: values, gradients, dispatch."""
import random
import sys

import numpy as np
import pytest
import torch

import exprfast
from exprfast.op.reference import up_label_conv_folded, up_label_conv_reference


def make_inputs(N, C, H, W, K, O, device, dtype=torch.float32, bias=True, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    labels = torch.rand(N, K, generator=g, dtype=torch.float64) * 2 - 0.5 if K else None
    weight = torch.randn(O, C + K, 3, 3, generator=g, dtype=torch.float64) / (3 * (C + K) ** 0.5)
    b = torch.randn(O, generator=g, dtype=torch.float64) if bias else None
    tensors = [t if t is None else t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
               for t in (x, labels, weight, b)]
    return tensors


def reference64(x, labels, weight, bias):
    cast = [t if t is None else t.detach().double().cpu() for t in (x, labels, weight, bias)]
    return up_label_conv_reference(*cast)


def random_cases(count, seed):
    rng = random.Random(seed)
    for _ in range(count):
        yield dict(N=rng.choice([0, 1, 2, 3, 5]), C=rng.choice([1, 2, 3, 8]),
                   H=rng.choice([1, 2, 3, 7]), W=rng.choice([1, 2, 5, 6]),
                   K=rng.choice([0, 1, 5]), O=rng.choice([1, 3, 4, 16, 17]), bias=rng.random() < 0.7,
                   channels_last=rng.random() < 0.5, seed=rng.randrange(1 << 30))


CASES = list(random_cases(40, seed=1234))

# Below 16 output channels the forward takes the phase form, from 16 the transposed-conv form.
FORMS = pytest.mark.parametrize("O", [3, 16], ids=["phase-form", "transposed-form"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{N}C{C}H{H}W{W}K{K}O{O}".format(**c))
def test_forward_matches_reference(case, device):
    x, labels, weight, bias = make_inputs(case["N"], case["C"], case["H"], case["W"], case["K"],
                                          case["O"], device, bias=case["bias"], seed=case["seed"])
    if case["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    out = exprfast.up_label_conv(x, labels, weight, bias)
    expected = reference64(x, labels, weight, bias)
    assert out.shape == expected.shape
    assert out.dtype == x.dtype and out.device == x.device
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES[:20], ids=lambda c: "N{N}C{C}H{H}W{W}K{K}O{O}".format(**c))
def test_backward_matches_reference_autograd(case, device):
    inputs = make_inputs(case["N"], case["C"], case["H"], case["W"], case["K"], case["O"], device,
                         bias=case["bias"], seed=case["seed"], requires_grad=True)
    present = [t for t in inputs if t is not None]
    grad_out = torch.randn(case["N"], case["O"], 2 * case["H"], 2 * case["W"], device=device)
    ours = torch.autograd.grad(exprfast.up_label_conv(*inputs), present, grad_out)
    ref = torch.autograd.grad(up_label_conv_reference(*inputs), present, grad_out)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("N,C,H,W,K,O", [(2, 3, 4, 5, 2, 3), (1, 1, 1, 1, 1, 1), (3, 2, 1, 3, 0, 2),
                                          (2, 2, 3, 1, 5, 2), (2, 2, 3, 2, 1, 16)])
def test_gradcheck_float64(N, C, H, W, K, O, device):
    inputs = make_inputs(N, C, H, W, K, O, device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(exprfast.up_label_conv, inputs)


@FORMS
@pytest.mark.parametrize("labels,bias", [(True, True), (False, False)])
def test_opcheck(labels, bias, O, device):
    x, l, w, b = make_inputs(2, 3, 4, 5, 2 if labels else 0, O, device, bias=bias,
                             requires_grad=True)
    torch.library.opcheck(torch.ops.exprfast.up_label_conv.default, (x, l, w, b))
    torch.library.opcheck(torch.ops.exprfast.up_label_conv.default,
                          (x.detach().contiguous(memory_format=torch.channels_last), l, w, b))


def test_opcheck_backward_op(device):
    x, l, w, _ = make_inputs(2, 3, 4, 5, 2, 4, device)
    grad = torch.randn(2, 4, 8, 10, device=device)
    torch.library.opcheck(torch.ops.exprfast.up_label_conv_backward.default, (grad, x, l, w),
                          test_utils=("test_schema", "test_faketensor"))


@FORMS
def test_memory_formats_and_strided_inputs(O, device):
    x, labels, weight, bias = make_inputs(3, 4, 6, 5, 2, O, device)
    expected = reference64(x, labels, weight, bias)
    variants = {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "sliced": torch.stack([x, x], dim=-1)[..., 0],
        "permuted": x.transpose(2, 3).contiguous().transpose(2, 3),
    }
    for name, xv in variants.items():
        torch.testing.assert_close(xv, x)
        out = exprfast.up_label_conv(xv, labels[:, :], weight, bias)
        torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-5, atol=1e-5, msg=name)
    cl_out = exprfast.up_label_conv(variants["channels_last"], labels, weight, bias)
    assert cl_out.is_contiguous(memory_format=torch.channels_last)
    assert exprfast.up_label_conv(x, labels, weight, bias).is_contiguous()
    # Strided labels / weight / bias (slices of larger tensors).
    def strided(t):
        return torch.stack([t, t], dim=-1)[..., 0]

    out = exprfast.up_label_conv(x, strided(labels), strided(weight), strided(bias))
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-5, atol=1e-5)


def test_channels_last_backward(device):
    x, labels, weight, bias = make_inputs(2, 3, 4, 4, 2, 5, device, requires_grad=True)
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    grad_out = torch.randn(2, 5, 8, 8, device=device).contiguous(memory_format=torch.channels_last)
    ours = torch.autograd.grad(exprfast.up_label_conv(xc, labels, weight, bias), (xc, labels, weight, bias), grad_out)
    ref = torch.autograd.grad(up_label_conv_reference(x, labels, weight, bias), (x, labels, weight, bias), grad_out)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_folded_formulation_matches_reference(device):
    x, labels, weight, bias = make_inputs(2, 3, 5, 4, 3, 4, device, dtype=torch.float64)
    torch.testing.assert_close(up_label_conv_folded(x, labels, weight, bias).cpu(),
                               reference64(x, labels, weight, bias))


@FORMS
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_tolerance(dtype, O, device):
    if device == "cpu" and dtype == torch.float16:
        pytest.skip("float16 convolutions are a GPU feature; CPU low precision is bfloat16")
    x, labels, weight, bias = make_inputs(4, 16, 8, 8, 2, O, device, dtype=dtype)
    out = exprfast.up_label_conv(x, labels, weight, bias)
    assert out.dtype == dtype
    expected = reference64(x, labels, weight, bias)  # of the same rounded inputs
    # Stated tolerance: 2 % of the output's scale (bfloat16 keeps 8 significant bits).
    scale = expected.abs().max().item()
    torch.testing.assert_close(out.double().cpu(), expected, rtol=0, atol=0.02 * scale)


def test_autocast_bfloat16_casts_labels_and_parameters():
    layer = exprfast.nn.UpLabelConv2d(8, 2, 4)
    x = torch.randn(2, 8, 4, 4)
    labels = torch.rand(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16(), labels)  # bf16 activations, float32 labels and weights
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
    expected = reference64(x, labels, layer.weight, layer.bias)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=0.05 * expected.abs().max().item())
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32


def test_torch_compile_fullgraph(device):
    layer = exprfast.nn.UpLabelConv2d(3, 2, 4).to(device)

    def model(x, labels):
        return torch.relu(layer(x, labels)).mean()

    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 5, 4, device=device, requires_grad=True)
    labels = torch.rand(2, 2, device=device)
    loss = compiled(x, labels)
    loss.backward()
    torch.testing.assert_close(loss, model(x, labels))
    grad_compiled = x.grad.clone()
    x.grad = None
    model(x, labels).backward()
    torch.testing.assert_close(grad_compiled, x.grad)


def test_torch_compile_inductor_fullgraph():
    layer = exprfast.nn.UpLabelConv2d(3, 2, 4)
    compiled = torch.compile(lambda x, l: layer(x, l) * 2, fullgraph=True)
    x, labels = torch.randn(2, 3, 4, 4), torch.rand(2, 2)
    torch.testing.assert_close(compiled(x, labels), layer(x, labels) * 2)


def test_nan_in_gives_nan_out(device):
    x, labels, weight, bias = make_inputs(1, 2, 3, 3, 1, 2, device)
    x[0, 0, 1, 1] = float("nan")
    out = exprfast.up_label_conv(x, labels, weight, bias)
    assert out.isnan().any() and not out.isnan().all()
    labels[0, 0] = float("nan")
    assert exprfast.up_label_conv(x, labels, weight, bias).isnan().all()


def test_double_backward_is_refused_clearly():
    x, labels, weight, bias = make_inputs(1, 2, 3, 3, 1, 2, "cpu", dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(exprfast.up_label_conv(x, labels, weight, bias).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_labels_none_equals_zero_labels_shape():
    x, _, weight, bias = make_inputs(2, 3, 4, 4, 0, 2, "cpu")
    none = exprfast.up_label_conv(x, None, weight, bias)
    empty = exprfast.up_label_conv(x, torch.zeros(2, 0), weight, bias)
    torch.testing.assert_close(none, empty)


BAD_INPUTS = {
    "x rank": (lambda x, l, w, b: (x[0], l, w, b), ValueError, "x must be 4-D"),
    "x integer": (lambda x, l, w, b: (x.long(), l, w, b), TypeError, "x must be a floating-point"),
    "weight in-channels": (lambda x, l, w, b: (x, l, w[:, 1:], b), ValueError, "weight has 4 input channels"),
    "weight kernel": (lambda x, l, w, b: (x, l, w[:, :, :2, :2], b), ValueError, "3x3 conv weight"),
    "weight rank": (lambda x, l, w, b: (x, l, w[0], b), ValueError, "3x3 conv weight"),
    "labels batch": (lambda x, l, w, b: (x, l[:1], w, b), ValueError, "labels must be 2-D .N, K. with N = 2"),
    "labels rank": (lambda x, l, w, b: (x, l[:, :, None], w, b), ValueError, "labels must be 2-D"),
    "labels dtype": (lambda x, l, w, b: (x, l.double(), w, b), TypeError, "labels has dtype"),
    "labels integer": (lambda x, l, w, b: (x, l.long(), w, b), TypeError, "labels has dtype"),
    "weight dtype": (lambda x, l, w, b: (x, l, w.double(), b), TypeError, "weight has dtype"),
    "bias shape": (lambda x, l, w, b: (x, l, w, b[:2]), ValueError, "bias must be 1-D"),
    "bias dtype": (lambda x, l, w, b: (x, l, w, b.half()), TypeError, "bias has dtype"),
    "empty channels": (lambda x, l, w, b: (x[:, :0], l, w[:, :2], b), ValueError, "C, H, W >= 1"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
@pytest.mark.parametrize("mode", ["eager", "fake"])
def test_bad_input_raises_clear_error(case, mode):
    make_bad, error, message = BAD_INPUTS[case]
    args = make_bad(*make_inputs(2, 3, 4, 4, 2, 3, "cpu"))
    if mode == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode() as fake_mode:
            args = [None if a is None else fake_mode.from_tensor(a) for a in args]
            with pytest.raises(error, match=message):
                exprfast.up_label_conv(*args)
    else:
        with pytest.raises(error, match=message):
            exprfast.up_label_conv(*args)


@pytest.mark.skipif(not torch.cuda.is_available() or not exprfast.backend_info()["cuda"],
                    reason="needs a CUDA GPU and a CUDA build of exprfast")
def test_device_mix_raises_clear_error():
    x, labels, weight, bias = make_inputs(2, 3, 4, 4, 2, 3, "cpu")
    with pytest.raises(RuntimeError, match="is on cuda"):
        exprfast.up_label_conv(x, labels, weight.cuda(), bias)


# A meta tensor among CPU ones used to send the call to the fake kernel, which returned an
# uninitialised CPU tensor without complaint; only x on meta gave a (meta) result.
@pytest.mark.parametrize("on_meta", ["labels", "weight", "bias"])
def test_meta_argument_among_cpu_ones_raises(on_meta):
    args = dict(zip(("x", "labels", "weight", "bias"), make_inputs(2, 3, 4, 4, 2, 3, "cpu")))
    args[on_meta] = args[on_meta].to("meta")
    with pytest.raises(RuntimeError, match=f"up_label_conv: {on_meta} is on meta but x is on cpu"):
        exprfast.up_label_conv(**args)


def test_meta_x_among_cpu_arguments_raises():
    x, labels, weight, bias = make_inputs(2, 3, 4, 4, 2, 3, "cpu")
    with pytest.raises(RuntimeError, match="up_label_conv: labels is on cpu but x is on meta"):
        exprfast.up_label_conv(x.to("meta"), labels, weight, bias)
    with pytest.raises(RuntimeError, match="up_label_conv: weight is on cpu but x is on meta"):
        exprfast.up_label_conv(x.to("meta"), None, weight[:, :3], bias)


def test_repro_meta_bias_raises():
    with pytest.raises(RuntimeError, match="bias is on meta"):
        exprfast.up_label_conv(torch.randn(1, 2, 1, 1), torch.rand(1, 1), torch.randn(1, 3, 3, 3),
                               torch.randn(1).to("meta"))


@FORMS
@pytest.mark.parametrize("channels_last", [False, True])
def test_all_meta_gives_meta_result_like_the_kernel(O, channels_last):
    inputs = make_inputs(2, 3, 4, 5, 2, O, "cpu")
    if channels_last:
        inputs[0] = inputs[0].contiguous(memory_format=torch.channels_last)
    real = exprfast.up_label_conv(*inputs)
    meta = [t.to("meta").requires_grad_() for t in inputs]
    out = exprfast.up_label_conv(*meta)
    assert out.device.type == "meta" and out.shape == real.shape and out.dtype == real.dtype
    assert out.stride() == real.stride()
    grads = torch.autograd.grad(out, meta, torch.empty_like(out))
    assert [(g.device.type, g.shape) for g in grads] == [("meta", t.shape) for t in meta]


def test_fake_strides_match_kernel_for_one_output_channel():
    # Found by scripts/fuzz_op.py: with O = 1 the fake kernel kept row-major strides for a
    # channels_last x (`.contiguous(channels_last)` of a 1-channel tensor is a no-op).
    x, labels, weight, bias = make_inputs(2, 3, 4, 5, 2, 1, "cpu")
    x = x.contiguous(memory_format=torch.channels_last)
    real = exprfast.up_label_conv(x, labels, weight, bias)
    fake = exprfast.up_label_conv(*[t.to("meta") for t in (x, labels, weight, bias)])
    assert fake.stride() == real.stride()


# None for x or weight used to report dtype UNKNOWN_SCALAR, other objects the dispatcher's
# RuntimeError; the documented error is a TypeError naming the argument.
NOT_TENSORS = {
    "x None": ("x", None, "x must be a torch.Tensor, got NoneType"),
    "x list": ("x", [[[[1.0]]]], "x must be a torch.Tensor, got list"),
    "x numpy": ("x", np.zeros((2, 3, 4, 4), np.float32), "x must be a torch.Tensor, got ndarray"),
    "weight None": ("weight", None, "weight must be a torch.Tensor, got NoneType"),
    "weight int": ("weight", 3, "weight must be a torch.Tensor, got int"),
    "labels list": ("labels", [[1.0, 0.0]] * 2, "labels must be a torch.Tensor or None, got list"),
    "labels int": ("labels", 1, "labels must be a torch.Tensor or None, got int"),
    "bias float": ("bias", 0.5, "bias must be a torch.Tensor or None, got float"),
    "bias numpy": ("bias", np.zeros(3, np.float32), "bias must be a torch.Tensor or None, got ndarray"),
}


@pytest.mark.parametrize("case", list(NOT_TENSORS), ids=list(NOT_TENSORS))
def test_non_tensor_argument_raises_type_error(case):
    name, value, message = NOT_TENSORS[case]
    args = dict(zip(("x", "labels", "weight", "bias"), make_inputs(2, 3, 4, 4, 2, 3, "cpu")))
    args[name] = value
    with pytest.raises(TypeError, match=f"^up_label_conv: {message}$"):
        exprfast.up_label_conv(**args)


def test_direct_op_call_with_none_names_the_argument():
    x, labels, weight, bias = make_inputs(2, 3, 4, 4, 2, 3, "cpu")
    with pytest.raises(TypeError, match="up_label_conv: x must be a torch.Tensor, got None"):
        torch.ops.exprfast.up_label_conv.default(None, labels, weight, bias)
    with pytest.raises(TypeError, match="up_label_conv: weight must be a torch.Tensor, got None"):
        torch.ops.exprfast.up_label_conv.default(x, labels, None, bias)


@pytest.mark.skipif(not sys.platform.startswith("linux") or "OpenMP" not in torch.__config__.parallel_info(),
                    reason="torch runs no OpenMP here: at::parallel_for is serial for torch too")
def test_cpu_kernels_are_built_parallel():
    # ATen's parallel_for is compiled into the extension: without OpenMP there, every CPU kernel
    # of the op silently runs on one thread (CMakeLists.txt). The other tests run them threaded.
    assert exprfast.backend_info()["cpu_kernels_parallel"]
