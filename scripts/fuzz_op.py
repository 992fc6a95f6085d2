"""Bounded, seeded fuzzer of the public op exprfast.up_label_conv.

Valid calls (random small shapes, every float dtype, contiguous / channels_last / strided inputs,
CPU and meta devices, some under torch.autocast, labels and bias present or None) are compared
with the float64 reference exprfast.op.reference.up_label_conv_reference, element by element,
within a rounding bound of the call's dtype; every ~10th valid CPU call also has its gradients
compared. Each valid CPU call is repeated on meta tensors of the same strides: the fake kernels
must give the real kernels' shapes, dtypes and (significant) strides. Some valid calls carry a NaN
or an infinity, which must propagate as in the reference. Bad calls (non-tensors, None, integer
or mismatched dtypes, wrong shapes, mixed devices; on CPU or all on meta) must raise the documented
error class - TypeError for types and dtypes, ValueError for shapes, RuntimeError (the driver's) for
a device mix - naming the faulty argument. Anything else - another exception, a wrong value, a NaN
where the reference is finite, a wrong stride - is a failure, printed with the case. Exits 1 on
failures. Each call is tiny: 10,000 take about 10 s on one core.

    python scripts/fuzz_op.py [--calls 10000] [--seed 0] [--show 20] [--verbose]
"""
import argparse
import random
import re
import sys
import time
import traceback

import torch

import exprfast
from exprfast.op.reference import up_label_conv_reference

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NAMES = ("x", "labels", "weight", "bias")
# Bound factor on eps * (sum of |terms|) per element. float16 / bfloat16: the rounding of the folded
# weights and of the result dominate (the convs accumulate in float32); float32 / float64: the
# accumulation over up to ~600 terms does, worst when the terms are equal (expanded inputs), about
# 10 eps * sum. A wrong tap or a lost term is off by ~sum / 600, far above these in float32 and
# float64 - which run the same code as the low-precision dtypes. --verbose prints the worst ratios.
ROUNDING_FACTOR = {torch.float16: 4, torch.bfloat16: 4, torch.float32: 16, torch.float64: 32}
WORST = {}  # (dtype, what) -> largest error / tolerance seen, for --verbose


class Case:
    """One call: its arguments, how it was made (printed on failure) and what it must do."""

    def __init__(self, kind, desc, args, error=None, name=None, grad=False, nonfinite=None):
        self.kind, self.desc, self.args = kind, desc, list(args)
        self.error, self.name, self.grad, self.nonfinite = error, name, grad, nonfinite
        self.autocast = None  # the dtype of a torch.autocast("cpu") region around the call
        self.also = None  # a second pattern the error message must match

    def describe(self):
        parts = []
        for n, a in zip(NAMES, self.args):
            if isinstance(a, torch.Tensor):
                parts.append(f"{n}={tuple(a.shape)} {str(a.dtype)[6:]} {a.device.type} "
                             f"stride={a.stride()}")
            else:
                parts.append(f"{n}={type(a).__name__}:{a!r}"[:80])
        return f"[{self.kind}] {self.desc}: " + ", ".join(parts)


# ----------------------------------------------------------------------------- input generation

def layout(t, rng, four_d):
    """t (a fresh contiguous tensor) as contiguous, channels_last, a strided slice, or expanded
    (stride 0: its values then repeat along that dimension)."""
    choice = rng.choice(["contiguous", "contiguous", "channels_last", "sliced", "sliced",
                         "expanded"] if four_d
                        else ["contiguous", "contiguous", "sliced", "expanded"])
    if choice == "expanded":
        dim = rng.randrange(t.dim())
        return t.narrow(dim, 0, min(1, t.shape[dim])).expand(t.shape), f"expanded(dim {dim})"
    if choice == "channels_last":
        return t.contiguous(memory_format=torch.channels_last), choice
    if choice == "sliced":
        dim = rng.randrange(t.dim())
        step = rng.choice([2, 3])
        shape = list(t.shape)
        shape[dim] = shape[dim] * step + rng.randrange(2)
        big = torch.zeros(shape, dtype=t.dtype)
        if four_d and rng.random() < 0.5:
            big = big.contiguous(memory_format=torch.channels_last)
        index = [slice(None)] * t.dim()
        index[dim] = slice(0, t.shape[dim] * step, step)
        view = big[tuple(index)]
        view.copy_(t)
        return view, f"sliced(dim {dim}, step {step})"
    return t, choice


def rand_values(rng, gen, shape, dtype, kind):
    if kind == "x":
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
    elif kind == "labels":
        t = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 0.5
    elif kind == "weight":
        t = torch.randn(shape, generator=gen, dtype=torch.float64) / (3 * max(1, shape[1]) ** 0.5)
    else:
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
    return t.to(dtype)


def valid_case(rng, gen, shape=None, dtype=None, allow_nonfinite=True, device="cpu",
               autocast=None):
    N, C, H, W, K, O = shape or (rng.randint(0, 3), rng.randint(1, 6), rng.randint(1, 6),
                                 rng.randint(1, 6), rng.randint(0, 3), rng.randint(1, 20))
    dtype = dtype or rng.choice(FLOATS)
    layouts = []
    x, lay = layout(rand_values(rng, gen, (N, C, H, W), dtype, "x"), rng, True)
    layouts.append(f"x {lay}")
    labels = None
    if K > 0 or rng.random() < 0.5:
        labels, lay = layout(rand_values(rng, gen, (N, K), dtype, "labels"), rng, False)
        layouts.append(f"labels {lay}")
    weight, lay = layout(rand_values(rng, gen, (O, C + K, 3, 3), dtype, "weight"), rng, True)
    layouts.append(f"weight {lay}")
    bias = None
    if rng.random() < 0.7:
        bias, lay = layout(rand_values(rng, gen, (O,), dtype, "bias"), rng, False)
        layouts.append(f"bias {lay}")
    args = [x, labels, weight, bias]
    nonfinite = None
    if allow_nonfinite and rng.random() < 0.08:
        present = [i for i, a in enumerate(args) if a is not None and a.numel() > 0]
        if present:
            i = rng.choice(present)
            value = rng.choice([float("nan"), float("inf"), float("-inf")])
            index = tuple(rng.randrange(s) for s in args[i].shape)
            if any(st == 0 and sz > 1 for st, sz in zip(args[i].stride(), args[i].shape)):
                args[i] = args[i].clone()  # expanded: one element, not a whole row
            args[i][index] = value
            nonfinite = (NAMES[i], value)
    desc = f"N={N} C={C} H={H} W={W} K={K} O={O} {str(dtype)[6:]} " + ", ".join(layouts)
    if nonfinite:
        desc += f", {nonfinite[0]}{list(index)} = {nonfinite[1]}"
    if device == "meta":
        args = [to_meta(a) for a in args]
        desc += ", all on meta"
    case = Case("valid", desc, args, nonfinite=nonfinite)
    if autocast is not None and dtype == torch.float32:
        case.autocast = autocast
        case.desc += f", under torch.autocast('cpu', {str(autocast)[6:]})"
    return case


def to_meta(a):
    """A meta tensor with a's shape, dtype and strides (or a itself when not a tensor)."""
    if not isinstance(a, torch.Tensor):
        return a
    return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta")


NON_TENSORS = [lambda t: None, lambda t: t.tolist(), lambda t: 3, lambda t: 1.5,
               lambda t: t.numpy() if t.dtype != torch.bfloat16 else t.float().numpy(),
               lambda t: "tensor", lambda t: (t,)]


def bad_case(rng, gen):
    """A valid call with exactly one defect, and what it must raise."""
    base = valid_case(rng, gen, allow_nonfinite=False)
    x, labels, weight, bias = base.args
    N, C, H, W = x.shape
    O = weight.shape[0]
    K = 0 if labels is None else labels.shape[1]
    dtype = x.dtype
    other_float = rng.choice([d for d in FLOATS if d != dtype])
    integer = rng.choice([torch.int64, torch.int32, torch.uint8, torch.bool])
    args = [x, labels, weight, bias]
    defects = ["non-tensor", "non-tensor", "dtype", "dtype", "shape", "shape", "shape", "device"]
    defect = rng.choice(defects)
    name = rng.choice(NAMES)
    if defect == "non-tensor":
        make = rng.choice(NON_TENSORS)
        source = args[NAMES.index(name)]
        if source is None:
            source = torch.zeros(2)
        value = make(source)
        if value is None and name in ("labels", "bias"):
            value = [0.0] * 2  # None is valid there: a list instead
        args[NAMES.index(name)] = value
        return finish(rng, base, args, f"{name} is a {type(value).__name__}", TypeError, name)
    if defect == "dtype":
        if name == "x":
            bad = rng.choice([integer, torch.complex64])
            args[0] = x.to(bad) if bad != torch.bool else x > 0
            return finish(rng, base, args, f"x has dtype {bad}", TypeError, "x")
        i = NAMES.index(name)
        source = args[i]
        if source is None:
            source = rand_values(rng, gen, (N, 1) if name == "labels" else (O,), dtype, name)
            if name == "labels":
                args[2] = rand_values(rng, gen, (O, C + 1, 3, 3), dtype, "weight")
        bad = rng.choice([other_float, integer])
        args[i] = source.to(bad) if bad != torch.bool else source > 0
        return finish(rng, base, args, f"{name} has dtype {bad} (x {dtype})", TypeError, name)
    if defect == "device":
        # One argument on meta while the rest stay on the CPU, or x on meta and the rest on the CPU.
        if name == "x":
            args[0] = to_meta(x)
            first_other = next(n for n in ("labels", "weight") if args[NAMES.index(n)] is not None)
            return finish(rng, base, args, "x on meta, others on cpu", RuntimeError, first_other,
                          also=r"x is on meta")
        i = NAMES.index(name)
        if args[i] is None:
            args[i] = rand_values(rng, gen, (N, 0) if name == "labels" else (O,), dtype, name)
        args[i] = to_meta(args[i])
        return finish(rng, base, args, f"{name} on meta, others on cpu", RuntimeError, name,
                      also=rf"{name} is on meta")
    # shape defects
    if name == "x":
        bad = rng.choice(["rank3", "rank5", "empty"])
        if bad == "rank3":
            args[0] = x.flatten(0, 1)
        elif bad == "rank5":
            args[0] = x[None]
        else:
            dim = rng.choice([1, 2, 3])
            index = [slice(None)] * 4
            index[dim] = slice(0, 0)
            args[0] = x[tuple(index)]
            if dim == 1:  # keep weight consistent with C = 0 so only the empty x is wrong
                args[2] = weight[:, C:]
        return finish(rng, base, args, f"x shape {bad}", ValueError, "x")
    if name == "labels":
        bad = rng.choice(["rank1", "rank3", "batch"])
        source = labels if labels is not None else rand_values(rng, gen, (N, 0), dtype, "labels")
        if bad == "rank1":
            args[1] = source.flatten()
        elif bad == "rank3":
            args[1] = source[:, :, None]
        else:
            args[1] = rand_values(rng, gen, (N + rng.choice([1, 2]), K), dtype, "labels")
        return finish(rng, base, args, f"labels shape {bad}", ValueError, "labels")
    if name == "weight":
        bad = rng.choice(["rank3", "kernel", "in-channels", "no-outputs"])
        if bad == "rank3":
            args[2] = weight[0]
        elif bad == "kernel":
            kh, kw = rng.choice([(2, 2), (3, 1), (1, 3), (5, 5), (3, 4)])
            args[2] = rand_values(rng, gen, (O, C + K, kh, kw), dtype, "weight")
        elif bad == "in-channels":
            args[2] = rand_values(rng, gen, (O, C + K + rng.choice([-1, 1, 2]), 3, 3), dtype,
                                  "weight")
        else:
            args[2] = weight[:0]
            args[3] = None
        return finish(rng, base, args, f"weight shape {bad}", ValueError, "weight")
    bad = rng.choice(["rank0", "rank2", "length"])
    if bad == "rank0":
        args[3] = rand_values(rng, gen, (), dtype, "bias")
    elif bad == "rank2":
        args[3] = rand_values(rng, gen, (O, 1), dtype, "bias")
    else:
        args[3] = rand_values(rng, gen, (O + rng.choice([-1, 1]),), dtype, "bias")
    return finish(rng, base, args, f"bias shape {bad}", ValueError, "bias")


def finish(rng, base, args, what, error, name, also=None):
    # A bad call on meta tensors must fail the same way (the fake kernel's checks); device mixes
    # and non-tensors stay as they are.
    on_meta = error is not RuntimeError and rng.random() < 0.2
    if on_meta:
        args = [to_meta(a) for a in args]
        what += ", all on meta"
    case = Case("bad", base.desc + "; DEFECT: " + what, args, error=error, name=name)
    case.also = also
    return case


# ----------------------------------------------------------------------------- checks

def cpu64(t):
    return None if t is None else t.detach().to("cpu", torch.float64)


def abs_bound_problem(args):
    """The same op on |inputs|: per output element, the sum of |terms| (the rounding scale)."""
    return up_label_conv_reference(*[None if a is None else a.abs() for a in args])


def check_close(ours, ref, bound, dtype, what, nonfinite_source=None):
    """ours within ROUNDING_FACTOR * eps * bound of ref, elementwise; None when fine, else a reason."""
    if ours.shape != ref.shape:
        return f"{what}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    ours = ours.detach().to("cpu", torch.float64)
    ref_finite = torch.isfinite(ref)
    ours_finite = torch.isfinite(ours)
    bad = ref_finite & ~ours_finite
    if dtype == torch.bfloat16 and nonfinite_source == "x" and ref.dim() == 4:
        # oneDNN's bfloat16 brgemm convolutions (channels_last, CPU) spread a NaN along the
        # output rows it already reaches - plain F.conv2d does too; tolerated only there.
        row_hit = (~ref_finite).any(dim=3, keepdim=True)
        bad &= ~row_hit
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        return f"{what}: {ours[i].item()} at {list(i)} where the reference is finite ({ref[i].item():.6g})"
    # Where the reference is not finite ours must not be either - except where the non-finite
    # value sits in weight: the reference's padding then multiplies 0 * inf (NaN) where a conv
    # that skips the padding (ours, oneDNN's, cuDNN's) gets a number.
    if nonfinite_source != "weight":
        bad = ~ref_finite & ours_finite
        if bad.any():
            i = tuple(bad.nonzero()[0].tolist())
            return f"{what}: {ours[i].item():.6g} at {list(i)} where the reference is {ref[i].item()}"
    # Plus a floor of a few subnormal spacings (eps * tiny): float16 gradients of tiny inputs are
    # sums of up to 4 subnormal intermediates, each rounded on an absolute grid.
    info = torch.finfo(dtype)
    tol = ROUNDING_FACTOR[dtype] * info.eps * (bound.nan_to_num(0, 0, 0) + 4 * info.tiny)
    err = torch.where(ref_finite, (ours - ref).abs(), torch.zeros_like(ref))
    if err.numel():
        key = (str(dtype)[6:], what.split(" (")[0])
        WORST[key] = max(WORST.get(key, 0.0), (err / tol).max().item())
    over = err > tol
    if over.any():
        i = tuple(over.nonzero()[0].tolist())
        worst = (err / tol).max().item()
        return (f"{what}: {ours[i].item():.8g} at {list(i)}, reference {ref[i].item():.8g} "
                f"(error {err[i].item():.3g} > tolerance {tol[i].item():.3g}; worst {worst:.1f}x)")
    return None


def call(case, args):
    if case.autocast is None:
        return exprfast.up_label_conv(*args)
    with torch.autocast("cpu", dtype=case.autocast):
        return exprfast.up_label_conv(*args)


def kernel_args(case):
    """The tensors the kernel sees: autocast casts the float32 CPU ones to its dtype."""
    if case.autocast is None:
        return case.args
    return [a.to(case.autocast) if isinstance(a, torch.Tensor) else a for a in case.args]


def significant_strides(t):
    """Strides of the dimensions longer than 1 (PyTorch's own fake-vs-real criterion, as in
    torch.library.opcheck: a size-1 dimension's stride never addresses memory)."""
    if t.numel() == 0:
        return ()
    return tuple(st for st, sz in zip(t.stride(), t.shape) if sz > 1)


def same_meta(what, fake, real):
    if (fake.shape != real.shape or fake.dtype != real.dtype
            or significant_strides(fake) != significant_strides(real)):
        return (f"fake kernel disagrees with the real one ({what}): {tuple(fake.shape)} stride "
                f"{fake.stride()} {fake.dtype} vs {tuple(real.shape)} stride {real.stride()} "
                f"{real.dtype}")
    return None


def run_meta(case, rng):
    """All-meta call: the fake kernels' output (and gradients') shapes, dtypes and device."""
    x, labels, weight, bias = case.args
    grad = rng.random() < 0.3
    args = [None if a is None else a.detach().requires_grad_(grad) for a in case.args]
    out = exprfast.up_label_conv(*args)
    N, C, H, W = x.shape
    want = (N, weight.shape[0], 2 * H, 2 * W)
    if out.device.type != "meta" or tuple(out.shape) != want or out.dtype != x.dtype:
        return f"meta call gave {out.device} {tuple(out.shape)} {out.dtype}, want meta {want}"
    if grad:
        present = [a for a in args if a is not None]
        grads = torch.autograd.grad(out, present, torch.empty_like(out))
        for a, g in zip(present, grads):
            if g.device.type != "meta" or g.shape != a.shape or g.dtype != a.dtype:
                return f"meta gradient {g.device} {tuple(g.shape)} {g.dtype} for input {tuple(a.shape)}"
    return None


def run_valid(case, rng):
    x = case.args[0]
    if x.device.type == "meta":
        return run_meta(case, rng)
    out = call(case, case.args)
    dtype = case.autocast or x.dtype
    if out.dtype != dtype or out.device != x.device:
        return f"output is {out.dtype} on {out.device}, want {dtype} on {x.device}"
    args64 = [cpu64(a) for a in kernel_args(case)]
    ref = up_label_conv_reference(*args64)
    source = case.nonfinite[0] if case.nonfinite else None
    problem = check_close(out, ref, abs_bound_problem(args64), dtype, "forward", source)
    if problem:
        return problem
    fake = exprfast.up_label_conv(*[to_meta(a) for a in kernel_args(case)])
    problem = same_meta("forward", fake, out)
    if problem:
        return problem
    if case.grad:
        return check_grads(case, args64, rng)
    return None


def check_grads(case, args64, rng):
    dtype = case.autocast or case.args[0].dtype
    inputs = [None if a is None else a.detach().clone().requires_grad_() for a in case.args]
    out = call(case, inputs)
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    g_ours, lay = layout(grad_out.to(out.dtype), rng, True)
    present = [i for i, a in enumerate(inputs) if a is not None]
    ours = torch.autograd.grad(out, [inputs[i] for i in present], g_ours, allow_unused=True)
    ref_in = [None if a is None else a.clone().requires_grad_() for a in args64]
    g64 = cpu64(g_ours)
    ref = torch.autograd.grad(up_label_conv_reference(*ref_in), [ref_in[i] for i in present], g64,
                              allow_unused=True)
    abs_in = [None if a is None else a.abs().requires_grad_() for a in args64]
    bounds = torch.autograd.grad(up_label_conv_reference(*abs_in), [abs_in[i] for i in present],
                                 g64.abs(), allow_unused=True)
    for i, a, r, b in zip(present, ours, ref, bounds):
        if r is None:
            r = torch.zeros_like(args64[i])
            b = torch.zeros_like(args64[i])
        if a is None:
            return f"grad of {NAMES[i]} is None"
        if a.dtype != case.args[i].dtype:
            return f"grad of {NAMES[i]} has dtype {a.dtype}, the input {case.args[i].dtype}"
        problem = check_close(a, r, b, dtype, f"grad {NAMES[i]} (grad_out {lay})")
        if problem:
            return problem
    # The backward op's fake kernel against the real one (what torch.compile plans with).
    x, labels, weight, _ = kernel_args(case)
    real = torch.ops.exprfast.up_label_conv_backward.default(g_ours, x, labels, weight)
    fake = torch.ops.exprfast.up_label_conv_backward.default(
        *[to_meta(a) for a in (g_ours, x, labels, weight)])
    for name, f, r in zip(("grad_x", "grad_labels", "grad_weight", "grad_bias"), fake, real):
        problem = same_meta(f"backward {name}", f, r)
        if problem:
            return problem
    return None


def run_bad(case):
    try:
        exprfast.up_label_conv(*case.args)
    except Exception as err:  # noqa: BLE001 - classifying it is the point
        message = str(err).split("\n")[0]
        if type(err) is not case.error:
            return f"raised {type(err).__name__} ({message[:200]}), want {case.error.__name__}"
        if not re.search(rf"up_label_conv: {case.name}\b", message):
            return f"{case.error.__name__} does not name {case.name!r}: {message[:200]}"
        if case.also and not re.search(case.also, message):
            return f"{case.error.__name__} does not say {case.also!r}: {message[:200]}"
        return None
    return f"no error, want {case.error.__name__} naming {case.name!r}"


# ----------------------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=20, help="failures printed in full")
    parser.add_argument("--verbose", action="store_true",
                        help="also print the largest error / tolerance ratio per dtype")
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny calls; threads only add overhead
    rng = random.Random(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    counts = {"valid": 0, "bad": 0, "meta": 0, "nonfinite": 0, "grad": 0, "autocast": 0}
    failures = []
    start = time.perf_counter()
    valid_cpu = 0
    for call in range(opts.calls):
        try:
            if rng.random() < 0.35:
                case = bad_case(rng, gen)
            else:
                device = "meta" if rng.random() < 0.15 else "cpu"
                autocast = rng.choice([torch.bfloat16, torch.float16]) if (
                    device == "cpu" and rng.random() < 0.1) else None
                case = valid_case(rng, gen, device=device, autocast=autocast)
                if device == "cpu" and case.nonfinite is None:
                    valid_cpu += 1
                    case.grad = valid_cpu % 10 == 0
        except Exception:  # noqa: BLE001 - a bug in the fuzzer itself
            print(f"fuzz: generating call {call} failed:\n{traceback.format_exc()}")
            return 2
        counts[case.kind] += 1
        counts["meta"] += case.kind == "valid" and case.args[0].device.type == "meta"
        counts["nonfinite"] += case.nonfinite is not None
        counts["grad"] += case.grad
        counts["autocast"] += case.autocast is not None
        try:
            problem = run_valid(case, rng) if case.kind == "valid" else run_bad(case)
        except Exception as err:  # noqa: BLE001
            problem = f"unexpected {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        if problem:
            failures.append((call, case, problem))
            if len(failures) <= opts.show:
                print(f"FAIL call {call}: {problem}\n    {case.describe()}")
    elapsed = time.perf_counter() - start
    if len(failures) > opts.show:
        print(f"... {len(failures) - opts.show} more failures")
    kinds = {}
    for _, case, problem in failures:
        key = re.sub(r"-?\d[\d.e+-]*|\[.*?\]|\(.*?\)", "#", problem)[:80]
        kinds[key] = kinds.get(key, 0) + 1
    for key, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {count:5d} x {key}")
    if opts.verbose:
        for (dtype, what), ratio in sorted(WORST.items()):
            print(f"  worst error / tolerance: {dtype:8s} {what:10s} {ratio:.3f}")
    print(f"fuzz: of the valid calls {counts['meta']} on meta, {counts['autocast']} under "
          f"autocast, {counts['nonfinite']} with NaN/inf; {counts['grad']} gradient checks "
          f"(seed {opts.seed})")
    print(f"fuzz: {opts.calls} calls ({counts['valid']} valid, {counts['bad']} bad): "
          f"{len(failures)} failures in {elapsed:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
