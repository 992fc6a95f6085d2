"""The 4x4 stride-2 convolutions of the encoder and latent discriminator on small inputs:
oneDNN's convolution (``F.conv2d``) against ``exprfast.models.layers.down_conv``, forward +
backward, at every input side up to --max-side of the 64, 128 and 256 px models (found by
running them), side by side in interleaved rounds, with the gradients training asks for: of the
input and the weight (an encoder layer), of the weight only (the discriminator's own update on a
detached latent), of the input only (the adversarial loss through the frozen discriminator).

Writes benchmarks/<name>.md and .json. Run on quiet cores:

    python scripts/bench_down_conv.py
"""
import argparse
import functools
import sys

import torch
import torch.nn.functional as F

from exprfast.benchmarking import machine_description, time_interleaved, write_table_report
from exprfast.models import build
from exprfast.models.layers import down_conv

METHODS = {
    "conv": lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
    "down_conv": down_conv,
}
GRADIENTS = {"x, w": (True, True), "w": (False, True), "x": (True, False)}
MEMORY_FORMATS = {"channels_last": torch.channels_last, "NCHW": torch.contiguous_format}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-sizes", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--max-side", type=int, default=8, help="largest input side timed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--memory-formats", nargs="+", choices=list(MEMORY_FORMATS),
                   default=list(MEMORY_FORMATS))
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per round (median)")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--name", default="down_conv")
    return p.parse_args(argv)


def down_conv_shapes(img_sizes, max_side):
    """{(in_channels, out_channels, input side): [where]} of every 4x4 stride-2 conv that the
    models of ``img_sizes`` (encoder, latent discriminator) run on inputs of at most
    ``max_side`` pixels."""
    shapes = {}

    def record(where):
        def hook(conv, inputs, _output):
            side = inputs[0].shape[-1]
            if conv.kernel_size == (4, 4) and conv.stride == (2, 2) and side <= max_side:
                shapes.setdefault((conv.in_channels, conv.out_channels, side), []).append(where)
        return hook

    for size in img_sizes:
        model = build("paper", img_size=size)
        parts = {"encoder": model.encoder, "discriminator": model.latent_discriminator}
        for name, part in parts.items():
            for module in part.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.register_forward_hook(record(f"{name} {size}"))
        with torch.no_grad():
            model.eval()
            model.discriminate(model.encode(torch.zeros(2, 3, size, size)))
    return shapes


def time_shape(c, o, side, batch, precision, memory_format, gradients, rounds, repeat):
    """Median seconds of forward + backward per method (interleaved rounds), computing the
    gradients of (input, weight) that ``gradients`` asks for (and the bias's with the weight's)."""
    x = torch.randn(batch, c, side, side).to(memory_format=memory_format)
    x.requires_grad_(gradients[0])
    w = torch.randn(o, c, 4, 4).to(memory_format=memory_format)  # as Module.to(memory_format)
    w.requires_grad_(gradients[1])
    b = torch.randn(o, requires_grad=gradients[1])

    def step(method):
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            y = METHODS[method](x, w, b)
        y.float().sum().backward()

    return time_interleaved({m: functools.partial(step, m) for m in METHODS}, rounds=rounds,
                            repeat=repeat)


def main(argv=None):
    args = parse_args(argv)
    shapes = down_conv_shapes(args.img_sizes, args.max_side)
    rows = []
    for (c, o, side), where in sorted(shapes.items(), key=lambda kv: (kv[0][2], kv[0])):
        for precision in args.precisions:
            for fmt in args.memory_formats:
                row = {"layer (C→O, H→H/2)": f"{c}→{o}, {side}→{side // 2}",
                       "in": ", ".join(sorted(set(where))), "precision": precision,
                       "memory format": fmt}
                for grads, wanted in GRADIENTS.items():
                    t = time_shape(c, o, side, args.batch_size, precision, MEMORY_FORMATS[fmt],
                                   wanted, args.rounds, args.repeat)
                    row[f"grad {grads}: conv / down_conv ms"] = (
                        f"{1e3 * t['conv']:.1f} / {1e3 * t['down_conv']:.1f}")
                    row[f"× grad {grads}"] = f"{t['conv'] / t['down_conv']:.2f}"
                rows.append(row)
                print(row, flush=True)
    columns = list(rows[0])
    setup = (f"{machine_description()}. Batch {args.batch_size}; forward + backward; "
             f"median of {args.rounds} interleaved rounds of "
             f"{args.repeat} runs each; the gradients named; the weight in the input's memory "
             "format, as a model converted with .to(memory_format) has it. conv: F.conv2d "
             "(oneDNN); down_conv: exprfast.models.layers.down_conv (a linear layer on the "
             "kernel's central 2x2 taps at 2x2 inputs; otherwise oneDNN's forward and input "
             "gradient, and the weight gradient as one matrix product). bf16: under CPU "
             "autocast, as training runs.")
    write_table_report(args, "Fader's 4x4 stride-2 convolution on small inputs", setup,
                       "Forward + backward", columns, rows)


if __name__ == "__main__":
    sys.exit(main())
