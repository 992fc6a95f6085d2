"""Benchmark exprfast.up_label_conv against plain-PyTorch formulations, per decoder layer shape.

Writes benchmarks/ops.md and benchmarks/ops.json. Run: python scripts/bench_ops.py [--device cuda]
"""
import argparse
import functools
import sys

import torch
import torch.nn.functional as F

import exprfast
from exprfast.benchmarking import (machine_description, markdown_table, time_call,
                                   time_interleaved, write_report)
from exprfast.op.reference import up_label_conv_folded, up_label_conv_reference
from exprfast.training.allocator import keep_freed_memory

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
METHODS = {
    "eager": up_label_conv_reference,
    "compiled": None,  # torch.compile(reference), made per shape
    "folded": up_label_conv_folded,
    "exprfast": exprfast.up_label_conv,
}


def decoder_shapes(img_size, init_fm=32, max_fm=512, latent=4):
    """(C, O, H) of each upsample+conv layer of the img_size decoder (Fader widths), ending at 3."""
    n = (img_size // latent).bit_length() - 1
    widths = [min(init_fm * 2**i, max_fm) for i in range(n)]
    outs = widths[::-1][1:] + [3]
    return [(c, o, latent * 2**j) for j, (c, o) in enumerate(zip(widths[::-1], outs))]


def saved_bytes(fn, inputs):
    """Bytes autograd keeps for backward (distinct storages, parameters and inputs included)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(storages.values())


def make_inputs(N, C, O, H, K, device, dtype, memory_format=torch.channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, H, generator=g).to(device, dtype).contiguous(memory_format=memory_format)
    labels = F.one_hot(torch.randint(0, K, (N,), generator=g), K).to(device, dtype)
    weight = (torch.randn(O, C + K, 3, 3, generator=g) / (3 * (C + K) ** 0.5)).to(device, dtype)
    bias = torch.zeros(O).to(device, dtype)
    return [t.requires_grad_() for t in (x, labels, weight, bias)]


def plain_conv_rate(N, C, O, H, device, dtype, repeat):
    """MAC/s of oneDNN/cuDNN on a plain conv with the op's MACs: 2x2 kernel, 4*O outputs, HxW."""
    x = torch.randn(N, C, H + 1, H + 1, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4 * O, C, 2, 2, device=device, dtype=dtype)
    with torch.no_grad():
        seconds = time_call(lambda: F.conv2d(x, w), device, repeat)
    return 16 * N * H * H * C * O / seconds


def bench_shape(N, C, O, H, K, device, dtype, rounds, repeat, methods,
                memory_format=torch.channels_last):
    inputs = make_inputs(N, C, O, H, K, device, dtype, memory_format)
    # The gradient arrives in the input's memory format, as inside a network of that format.
    grad = torch.randn(N, O, 2 * H, 2 * H, device=device, dtype=dtype).contiguous(
        memory_format=memory_format)
    fns = {name: METHODS[name] or torch.compile(up_label_conv_reference, dynamic=False)
           for name in methods}

    def forward(fn):
        with torch.no_grad():
            fn(*inputs)

    def forward_backward(fn):
        fn(*inputs).backward(grad)

    calls = {}
    for name, fn in fns.items():
        calls[name, "fwd"] = functools.partial(forward, fn)
        calls[name, "fwdbwd"] = functools.partial(forward_backward, fn)
    seconds = time_interleaved(calls, device, rounds, repeat)
    row = {"C": C, "O": O, "H": H}
    for name, fn in fns.items():
        row[f"{name}_fwd_ms"] = 1e3 * seconds[name, "fwd"]
        row[f"{name}_fwdbwd_ms"] = 1e3 * seconds[name, "fwdbwd"]
        row[f"{name}_saved_MB"] = saved_bytes(fn, inputs) / 2**20
    macs = 16 * N * H * H * C * O
    row["exprfast_GFLOPs"] = 2 * macs / (row["exprfast_fwd_ms"] / 1e3) / 1e9
    row["plainconv_GFLOPs"] = 2 * plain_conv_rate(N, C, O, H, device, dtype, repeat) / 1e9
    return row


def summarize(rows, methods):
    table = []
    for r in rows:
        t = {"layer (C→O, H→2H)": f"{r['C']}→{r['O']}, {r['H']}→{2 * r['H']}"}
        for name in methods:
            t[f"{name} fwd / fwd+bwd ms"] = f"{r[f'{name}_fwd_ms']:.2f} / {r[f'{name}_fwdbwd_ms']:.2f}"
        for name in [m for m in methods if m != "exprfast"]:
            t[f"× vs {name} (fwd+bwd)"] = f"{r[f'{name}_fwdbwd_ms'] / r['exprfast_fwdbwd_ms']:.2f}"
        t["fwd GFLOP/s (% of plain conv)"] = (
            f"{r['exprfast_GFLOPs']:.0f} ({100 * r['exprfast_GFLOPs'] / r['plainconv_GFLOPs']:.0f} %)")
        if "eager" in methods:
            t["saved for bwd MB: eager / exprfast"] = (
                f"{r['eager_saved_MB']:.1f} / {r['exprfast_saved_MB']:.1f}")
        table.append(t)
    return table


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--memory-format", default="channels_last",
                   choices=list(MEMORY_FORMATS), help="of x and the output gradient")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--img-sizes", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--labels", type=int, default=2, help="label channels K")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds, every method in turn (median)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per round (median)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--out", default="benchmarks", help="folder for ops.md / ops.json")
    p.add_argument("--name", default="ops", help="report file name (without extension)")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="let glibc keep freed memory, as training does (exprfast.training.allocator)")
    args = p.parse_args(argv)
    if "exprfast" not in args.methods:
        p.error("--methods must include exprfast (the table compares with it)")
    if args.device == "cuda" and not exprfast.backend_info()["cuda_available"]:
        p.error("--device cuda needs a GPU and an exprfast build with CUDA kernels")
    return args


def main(argv=None):
    args = parse_args(argv)
    allocator = keep_freed_memory() if args.keep_freed_memory else "allocator left as it is"
    dtype = getattr(torch, args.dtype)
    shapes = sorted({s for size in args.img_sizes for s in decoder_shapes(size)}, key=lambda s: (s[2], -s[0]))
    rows = []
    for C, O, H in shapes:
        rows.append(bench_shape(args.batch, C, O, H, args.labels, args.device, dtype, args.rounds,
                                args.repeat, args.methods, MEMORY_FORMATS[args.memory_format]))
        print(markdown_table(list(summarize(rows[-1:], args.methods)[0]), summarize(rows[-1:], args.methods)), flush=True)
    table = summarize(rows, args.methods)
    machine = machine_description(args.device)
    setup = (f"Batch {args.batch}, K = {args.labels} label channels, {args.dtype}, {args.device}: {machine}. "
             f"Median of {args.rounds} interleaved rounds (every method in turn) of {args.repeat} "
             f"runs each. Inputs and output gradients {args.memory_format}. Decoder layers of the "
             f"{', '.join(map(str, args.img_sizes))} px models (Fader widths 512…32, last layer → 3 RGB). "
             "eager = interpolate + cat + conv2d; compiled = torch.compile of that; folded = the "
             "best plain-PyTorch rewrite (folded 4x4 kernel through conv_transpose2d + label bias); "
             "GFLOP/s count the op's useful MACs (16·N·H·W·C·O) and compare with a plain conv of the "
             f"same MACs (2x2 kernel, 4·O outputs). {allocator[0].upper() + allocator[1:]}.")
    path = write_report(args.out, args.name, "up_label_conv benchmark",
                        [("Setup", setup), ("Results", markdown_table(list(table[0]), table))],
                        {"args": vars(args), "machine": machine, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
