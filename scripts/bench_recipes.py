"""Step time of the training recipes side by side: the paper's recipe against the edit losses.

Builds one ``Trainer`` per recipe on the same CelebA-HQ images in one process and times their
``train_step`` in interleaved rounds (so a busy moment hits every recipe alike); reports the
median step time and its ratio to the paper recipe. Writes benchmarks/recipes.md and .json.

    python scripts/bench_recipes.py --img-size 128 --precision bf16 --rounds 12 --recipes \
        "+clf (reader trained alongside)" "+clf (reader trained alongside), two decode calls" \
        "+clf (reader frozen)" "+clf +patch" "+clf +patch on the reader" "paper, latent reused"
    python scripts/bench_recipes.py --img-size 128 --precision fp32 --base fader \
        --recipes "paper, latent reused" "paper bf16" "paper bf16, latent reused" --name presets128
"""
import argparse
import statistics
import sys
import time

import torch

from exprfast.benchmarking import machine_description, markdown_table, write_report
from exprfast.models.layers import DownConv2d
from exprfast.training import PRECISIONS, Trainer, TrainConfig, open_datasets
from exprfast.training.allocator import keep_freed_memory

# name -> TrainConfig changes; the edit losses as in the ablation (benchmarks/ablation.md)
RECIPES = {
    "paper": {},
    "+clf (reader trained alongside)": {"lambda_clf": 0.05},
    "+clf (reader frozen)": {"lambda_clf": 0.05, "clf_train_steps": 1},
    "+clf +patch": {"lambda_clf": 0.05, "lambda_patch": 0.01},
    "+clf +patch on the reader": {"lambda_clf": 0.05, "lambda_patch": 0.05,
                                  "patch_on_reader": True},
    "paper, latent reused": {"reuse_latent": True},
}
# Not timed unless named: the presets and precisions of issue 10's step-time targets, to be
# timed side by side with --base fader; the classifier-loss step with two decode calls; and
# steps whose small 4x4 stride-2 convs all run as oneDNN convs (the code before DownConv2d);
# steps whose optimizers are torch.optim.Adam(fused=True) (the code before FlatAdam); steps with
# --compile (inductor on the encoder, decoder and discriminator).
TWO_DECODES = "+clf (reader trained alongside), two decode calls"
CONV_ONLY = ", small down convs on oneDNN"
TORCH_ADAM = ", torch.optim.Adam"
COMPILED = ", compiled"
COMPARISONS = {
    "fader": {"preset": "fader"},
    "paper bf16": {"precision": "bf16"},
    "paper bf16, latent reused": {"precision": "bf16", "reuse_latent": True},
    TWO_DECODES: {"lambda_clf": 0.05},
    "paper" + CONV_ONLY: {},
    "fader" + CONV_ONLY: {"preset": "fader"},
    "paper bf16" + CONV_ONLY: {"precision": "bf16"},
    "paper" + TORCH_ADAM: {},
    "fader" + TORCH_ADAM: {"preset": "fader"},
    "paper bf16" + TORCH_ADAM: {"precision": "bf16"},
    "paper" + COMPILED: {"compile": True},
    "fader" + COMPILED: {"preset": "fader", "compile": True},
    "paper bf16" + COMPILED: {"precision": "bf16", "compile": True},
}


def decode_separately(trainer):
    """The classifier-loss step as it was before ``FaderModel.decode_many``: the reconstruction
    and the edit decoded by two calls, each convolving z in the first layer (the baseline the
    shared first layer is timed against)."""
    model = trainer.model

    def forward(x, attrs, flipped=None):
        z = model.encode(x)
        x_flip = None if flipped is None else model.decode(z, flipped)
        return z, model.decode(z, attrs), x_flip

    trainer.autoencoder.forward = forward


def convs_only(trainer):
    """Every DownConv2d of the model (encoder, latent discriminator) runs as a oneDNN conv."""
    for module in trainer.model.modules():
        if isinstance(module, DownConv2d):
            module.gemm_max_side = 0


class _TorchAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True) over the parameters themselves, as the trainer had it."""

    def sync_grads(self):  # the trainer's call for FlatAdam; here the gradients are the params'
        pass


def torch_adam(trainer):
    """The trainer's optimizers (still without state) replaced by torch.optim.Adam."""
    for name in ("ae_optimizer", "dis_optimizer", "reader_optimizer", "patch_optimizer"):
        optimizer = getattr(trainer, name)
        if optimizer is not None:
            group = optimizer.param_groups[0]
            setattr(trainer, name, _TorchAdam(optimizer.params, lr=group["lr"],
                                              betas=group["betas"], fused=True))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=8, help="timed steps per recipe")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps per recipe first (compiled ones settle after ~6)")
    p.add_argument("--limit", type=int, default=1024, help="images used")
    p.add_argument("--data-root", default=None, help="default ../shared/data/celebahq")
    p.add_argument("--recipes", nargs="+", choices=[*RECIPES, *COMPARISONS],
                   default=list(RECIPES), help="recipes timed (and paper, and the base)")
    p.add_argument("--base", choices=[*RECIPES, *COMPARISONS], default="paper",
                   help="the recipe the ratios are to (default %(default)s)")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="glibc keeps freed memory, as training does (default on; "
                        "scripts/bench_allocator.py compares)")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--name", default="recipes", help="report file name (without extension)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    allocator = keep_freed_memory() if args.keep_freed_memory else "allocator as it is"
    common = dict(data_root=args.data_root, img_size=args.img_size, limit=args.limit,
                  precision=args.precision, batch_size=args.batch_size, progress=False,
                  lambda_lat=0.01, lambda_ramp_steps=0)
    train_set, _ = open_datasets(TrainConfig(**common))
    every = {**RECIPES, **COMPARISONS}
    trainers = {name: Trainer(TrainConfig(**{**common, **changes}), train_set,
                              torch.device("cpu"))
                for name, changes in every.items()
                if name in ("paper", args.base) or name in args.recipes}
    if TWO_DECODES in trainers:
        decode_separately(trainers[TWO_DECODES])
    for name in trainers:
        if name.endswith(CONV_ONLY):
            convs_only(trainers[name])
        if name.endswith(TORCH_ADAM):
            torch_adam(trainers[name])
    for trainer in trainers.values():  # warm-up (and past clf_train_steps for the frozen one)
        for _ in range(args.warmup):
            trainer.train_step()
    times = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_step()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times[args.base])
    rows = [{"recipe": name, "step ms": f"{1000 * statistics.median(t):.0f}",
             f"x {args.base}": f"{statistics.median(t) / base:.2f}",
             "samples/s": f"{args.batch_size / statistics.median(t):.1f}"}
            for name, t in times.items()]
    columns = ["recipe", "step ms", f"x {args.base}", "samples/s"]
    print(markdown_table(columns, rows))
    sections = [("", f"{machine_description()}. {args.img_size} px, {args.precision} and the "
                     f"paper preset unless a recipe names others, batch {args.batch_size}, "
                     f"channels_last; median of {args.rounds} interleaved steps per recipe after "
                     f"{args.warmup} warm-up steps, all recipes in one process on the same images; "
                     f"{allocator}."),
                ("Step time", markdown_table(columns, rows))]
    payload = {"machine": machine_description(), "settings": vars(args), "allocator": allocator,
               "times_s": times, "recipes": {name: every[name] for name in times}}
    title = "Training recipes: step time"
    print(f"wrote {write_report(args.out, args.name, title, sections, payload)}")


if __name__ == "__main__":
    main()
