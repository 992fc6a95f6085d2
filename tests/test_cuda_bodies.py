"""The CUDA kernels' per-thread bodies, run on the CPU over their whole launch grid
(csrc/cpu/grid_emulation.cpp) and compared with plain PyTorch."""
import pytest
import torch

import exprfast.op  # noqa: F401  (registers the ops)


def border_onehot(size):
    cls = torch.ones(size, dtype=torch.long)
    cls[0], cls[-1] = 0, 2
    return torch.nn.functional.one_hot(cls, 3).double()


def expected_bias_added(y, bias9):
    rows, cols = border_onehot(y.shape[2]), border_onehot(y.shape[3])
    return y.double() + torch.einsum("norc,yr,xc->noyx", bias9.double(), rows, cols)


FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


@pytest.mark.parametrize("out_format", list(FORMATS))
@pytest.mark.parametrize("y_format", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 5, 2, 2), (3, 1, 6, 2)])
def test_add_label_bias_body_over_grid(shape, dtype, y_format, out_format):
    y = torch.randn(shape).to(dtype).contiguous(memory_format=FORMATS[y_format])
    opmath = torch.float64 if dtype == torch.float64 else torch.float32
    bias9 = torch.randn(shape[0], shape[1], 3, 3, dtype=opmath)
    out = torch.full(shape, float("nan"), dtype=dtype).contiguous(memory_format=FORMATS[out_format])
    torch.ops.exprfast._grid_add_label_bias(y, bias9, out)
    tol = 1e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-6
    torch.testing.assert_close(out.double(), expected_bias_added(y, bias9), rtol=tol, atol=tol)


def expected_shuffled(z, bias9, out_shape):
    """out[n, o, Y, X] = z[n, (py, px, o), (Y + 1) // 2, (X + 1) // 2] + B, py = (Y + 1) % 2."""
    N, O, H, W = out_shape
    ys, xs = torch.arange(H) + 1, torch.arange(W) + 1
    phases = z.double().reshape(N, 2, 2, O, *z.shape[2:])
    y = phases[:, ys[:, None] % 2, xs[None, :] % 2, :, ys[:, None] // 2, xs[None, :] // 2]
    return expected_bias_added(y.permute(2, 3, 0, 1), bias9)


@pytest.mark.parametrize("out_format", list(FORMATS))
@pytest.mark.parametrize("z_format", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 1, 2, 2), (3, 2, 6, 2)])
def test_shuffle_label_bias_body_over_grid(shape, dtype, z_format, out_format):
    N, O, H, W = shape
    z = torch.randn(N, 4 * O, H // 2 + 1, W // 2 + 1).to(dtype).contiguous(memory_format=FORMATS[z_format])
    opmath = torch.float64 if dtype == torch.float64 else torch.float32
    bias9 = torch.randn(N, O, 3, 3, dtype=opmath)
    out = torch.full(shape, float("nan"), dtype=dtype).contiguous(memory_format=FORMATS[out_format])
    torch.ops.exprfast._grid_shuffle_label_bias(z, bias9, out)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-9
    torch.testing.assert_close(out.double(), expected_shuffled(z, bias9, shape), rtol=tol, atol=tol)


@pytest.mark.parametrize("threads", [1, 7, 256])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 2, 2, 2), (2, 4, 34, 18)])
def test_region_sums_body_over_grid(shape, fmt, threads):
    grad = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    sums = torch.ops.exprfast._grid_region_sums(grad, threads)
    rows, cols = border_onehot(shape[2]), border_onehot(shape[3])
    torch.testing.assert_close(sums, torch.einsum("noyx,yr,xc->norc", grad, rows, cols))


def test_grid_hooks_reject_bad_thread_count():
    with pytest.raises(ValueError, match="threads must be positive"):
        torch.ops.exprfast._grid_region_sums(torch.zeros(1, 1, 2, 2), 0)
