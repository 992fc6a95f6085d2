"""Step time of the training recipes side by side: the paper's recipe against the edit losses.

Builds one ``Trainer`` per recipe on the same CelebA-HQ images in one process and times their
``train_step`` in interleaved rounds (so a busy moment hits every recipe alike); reports the
median step time and its ratio to the paper recipe. Writes benchmarks/recipes.md and .json.

    python scripts/bench_recipes.py --img-size 128 --precision bf16
"""
import argparse
import statistics
import sys
import time

import torch

from exprfast.benchmarking import machine_description, markdown_table, write_report
from exprfast.training import PRECISIONS, Trainer, TrainConfig, open_datasets

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


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=8, help="timed steps per recipe")
    p.add_argument("--limit", type=int, default=1024, help="images used")
    p.add_argument("--data-root", default=None, help="default ../shared/data/celebahq")
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES),
                   help="recipes timed (paper is always among them: the ratios' base)")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--name", default="recipes", help="report file name (without extension)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    common = dict(data_root=args.data_root, img_size=args.img_size, limit=args.limit,
                  precision=args.precision, batch_size=args.batch_size, progress=False,
                  lambda_lat=0.01, lambda_ramp_steps=0)
    train_set, _ = open_datasets(TrainConfig(**common))
    trainers = {name: Trainer(TrainConfig(**common, **changes), train_set, torch.device("cpu"))
                for name, changes in RECIPES.items()
                if name == "paper" or name in args.recipes}
    for trainer in trainers.values():  # warm-up (and past clf_train_steps for the frozen one)
        trainer.train_step()
        trainer.train_step()
    times = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_step()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["paper"])
    rows = [{"recipe": name, "step ms": f"{1000 * statistics.median(t):.0f}",
             "x paper": f"{statistics.median(t) / base:.2f}",
             "samples/s": f"{args.batch_size / statistics.median(t):.1f}"}
            for name, t in times.items()]
    print(markdown_table(["recipe", "step ms", "x paper", "samples/s"], rows))
    sections = [("", f"{machine_description()}. {args.img_size} px, {args.precision}, batch "
                     f"{args.batch_size}, paper preset, channels_last; median of {args.rounds} "
                     "interleaved steps per recipe after 2 warm-up steps."),
                ("Step time", markdown_table(["recipe", "step ms", "x paper", "samples/s"], rows))]
    payload = {"machine": machine_description(), "settings": vars(args),
               "times_s": times, "recipes": {name: RECIPES[name] for name in times}}
    title = "Training recipes: step time"
    print(f"wrote {write_report(args.out, args.name, title, sections, payload)}")


if __name__ == "__main__":
    main()
