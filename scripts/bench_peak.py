"""The machine's practical peak in float32 and bfloat16, side by side in interleaved rounds:
large square matrix products (torch.mm) and a large 3x3 convolution (channels_last, the form
most of a training step runs in). The bf16-over-fp32 speedup that a training step can hope for
at equal FLOPs is bounded by their ratio. Writes benchmarks/<name>.md and .json. Run on quiet
cores:

    python scripts/bench_peak.py
"""
import argparse
import sys

import torch

from exprfast.benchmarking import machine_description, time_interleaved, write_table_report

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096],
                   help="matrix sides")
    p.add_argument("--conv", type=int, nargs=3, default=[32, 256, 32],
                   metavar=("BATCH", "CHANNELS", "SIDE"), help="the 3x3 convolution's shape")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--repeat", type=int, default=5, help="timed products per round (median)")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--name", default="peak")
    return p.parse_args(argv)


def rates(operations, flops, rounds, repeat):
    """GFLOP/s of each precision's operation (median of interleaved rounds)."""
    seconds = time_interleaved(operations, rounds=rounds, repeat=repeat)
    return {k: flops / s / 1e9 for k, s in seconds.items()}


def row(name, rate):
    return {"operation": name, "fp32 GFLOP/s": f"{rate['fp32']:.0f}",
            "bf16 GFLOP/s": f"{rate['bf16']:.0f}",
            "bf16 / fp32": f"{rate['bf16'] / rate['fp32']:.2f}"}


def main(argv=None):
    args = parse_args(argv)
    rows = []
    for n in args.sizes:
        ops = {}
        for k, dtype in DTYPES.items():
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            ops[k] = lambda a=a, b=b: torch.mm(a, b)
        rows.append(row(f"torch.mm {n}×{n} @ {n}×{n}", rates(ops, 2 * n ** 3, args.rounds,
                                                            args.repeat)))
        print(rows[-1], flush=True)
    n, c, side = args.conv
    ops = {}
    for k, dtype in DTYPES.items():
        x = torch.randn(n, c, side, side, dtype=dtype).to(memory_format=torch.channels_last)
        w = torch.randn(c, c, 3, 3, dtype=dtype).to(memory_format=torch.channels_last)
        ops[k] = lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1)
    rows.append(row(f"conv 3×3 {c}→{c}, {side}×{side}, batch {n}, channels_last",
                    rates(ops, 2 * n * c * c * 9 * side * side, args.rounds, args.repeat)))
    print(rows[-1], flush=True)
    columns = list(rows[0])
    setup = (f"{machine_description()}. Forward only; FLOPs = 2 × multiply-adds; median of "
             f"{args.rounds} interleaved rounds of {args.repeat} runs each.")
    write_table_report(args, "The machine's float32 and bfloat16 rates", setup, "Rates",
                       columns, rows)


if __name__ == "__main__":
    sys.exit(main())
