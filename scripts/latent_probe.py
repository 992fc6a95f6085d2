"""How much of the attribute does a model's latent still carry? A fresh latent discriminator
reads it back (``evaluation.latent_probe``), beside the model's own discriminator, which the
encoder was trained to fool.

    python scripts/latent_probe.py --models runs/a/checkpoint-0011000.pt runs/b/checkpoint-0013000.pt

Per model: the fresh discriminator (the model's architecture, seed 0, the training recipe's
Adam) learns from the latents of the first --train-faces faces of the train split, and is scored
on the validation split after each of --steps; the model's own discriminator (training
checkpoints and files exported --with-discriminator) on the same validation latents. A latent
that has forgotten the attribute leaves both at the majority class's share. Writes
benchmarks/latent_probe.md and .json (made with OMP_NUM_THREADS=1: the probe is seeded, and its
numbers repeat exactly with the same thread count only).
"""
import argparse
import sys

import torch

from exprfast.benchmarking import markdown_table, write_report
from exprfast.checkpoints import holds_discriminator, load_model
from exprfast.data import open_split
from exprfast.evaluation import encode_split, latent_probe


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[None],
                   help="model files or training checkpoints (default: the bundled model)")
    p.add_argument("--train-faces", type=int, default=8000,
                   help="train-split faces the fresh discriminator learns from")
    p.add_argument("--steps", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--data-root", default=None, help="default ../shared/data/celebahq")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--name", default="latent_probe", help="report file stem")
    return p.parse_args(argv)


def own_accuracy(model, latents, labels) -> list[float]:
    with torch.no_grad():
        read = torch.cat([model.discriminate(part) for part in latents.split(256)])
    return (read.view(len(latents), -1, 2).argmax(-1) == (labels > 0.5)).float().mean(0).tolist()


def main(argv=None):
    args = parse_args(argv)
    rows, payload = [], {"train_faces": args.train_faces, "steps": sorted(set(args.steps)),
                         "models": []}
    for path in args.models:
        loaded = load_model(path)
        model, meta = loaded.model, loaded.meta
        attrs = list(model.attrs)
        train = encode_split(model, open_split(args.data_root, model.img_size, "train",
                                               attrs=attrs, warn=False), args.train_faces)
        held_out = encode_split(model, open_split(args.data_root, model.img_size, "val",
                                                  attrs=attrs, warn=False))
        probe = latent_probe(model, train, held_out, steps=args.steps)
        own = own_accuracy(model, *held_out) if path and holds_discriminator(path) else None
        name = path or "bundled"
        payload["models"].append({"model": name, "step": meta.get("step"), **probe,
                                  "own_discriminator": own, "attrs": attrs})
        for j, attr in enumerate(attrs):
            rows.append({"model": name, "attribute": attr,
                         "own discriminator": "" if own is None else f"{own[j]:.1%}",
                         **{f"fresh, {s} steps": f"{a[j]:.1%}"
                            for s, a in zip(probe["steps"], probe["accuracy"])},
                         "majority class": f"{probe['majority'][j]:.1%}"})
        print(rows[-1], flush=True)
    columns = ["model", "attribute", "own discriminator",
               *(f"fresh, {s} steps" for s in payload["steps"]), "majority class"]
    setup = (f"Accuracy on the validation split's latents. Fresh: a latent discriminator of the "
             f"model's own architecture (seed 0; Adam 2e-4, betas (0.5, 0.999), clip 5, batch "
             f"32) trained on the latents of the first {args.train_faces} train-split faces. "
             f"Own: the model's trained latent discriminator, where the file has it. Majority "
             f"class: what a latent without the attribute allows.")
    path = write_report(args.out, args.name, "What the latent still carries",
                        [("Setup", setup), ("Results", markdown_table(columns, rows))], payload)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
