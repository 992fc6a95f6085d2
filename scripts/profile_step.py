"""Where a training step's time goes: data, encoder, decoder, latent discriminator, optimizers.

Times exprfast.training's whole step, then each part of it alone, on the same batch and in the
same precision, memory format and modes as the step runs it:

* data: gathering the step's two batches (memmap, uint8 -> float, flips, to device);
* encoder: its no-grad forward (discriminator update) + forward and backward (autoencoder update);
* decoder: forward and backward from the latent;
* discriminator: forward and backward twice (its own update; the adversarial loss's gradient
  into the latent, through the frozen discriminator);
* optimizers: both updates' gradient clipping and Adam steps;
* rest: the step minus those parts (losses, autocast casts, Python).

Writes benchmarks/<name>.md and .json. Run on quiet cores:

    python scripts/profile_step.py --img-size 128 --presets paper fader --precision fp32
"""
import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn

from exprfast.benchmarking import machine_description, time_call, write_table_report
from exprfast.models import PRESETS
from exprfast.training import PRECISIONS, Trainer, TrainConfig, open_datasets
from exprfast.training.allocator import keep_freed_memory
from exprfast.training.trainer import attribute_targets, discriminator_loss


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-sizes", type=int, nargs="+", default=[128])
    p.add_argument("--presets", nargs="+", choices=PRESETS, default=["paper", "fader"])
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=5, help="timed runs per part (median)")
    p.add_argument("--limit", type=int, default=1024, help="images used")
    p.add_argument("--data-root", default=None, help="default ../shared/data/celebahq")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--name", default="profile", help="report file name (without extension)")
    return p.parse_args(argv)


def part_times(trainer: Trainer, repeat: int) -> dict[str, float]:
    """Seconds of the whole step and of each part (module docstring)."""
    device, model = trainer.device, trainer.model
    for _ in range(2):  # optimizer states and allocator caches as in a running job
        trainer.train_step()
    times = {"step": time_call(trainer.train_step, device, repeat=repeat)}
    images, attrs = trainer.batch(0)
    targets = attribute_targets(attrs)
    times["data"] = time_call(lambda: (trainer.batch(0), trainer.batch(1)), device, repeat=repeat)

    def encoder():
        model.zero_grad(set_to_none=True)
        model.encoder.eval()
        with torch.no_grad(), trainer._autocast():
            model.encode(images)
        model.encoder.train()
        with trainer._autocast():
            z = model.encode(images)
        z.float().sum().backward()

    with torch.no_grad(), trainer._autocast():
        z0 = model.encode(images)

    def decoder():
        model.zero_grad(set_to_none=True)
        z = z0.detach().requires_grad_()
        with trainer._autocast():
            x_hat = model.decode(z, attrs)
        F.mse_loss(x_hat.float(), images).backward()

    def discriminator():
        model.zero_grad(set_to_none=True)
        for frozen in (False, True):  # frozen: no weight gradients, as in the autoencoder update
            model.latent_discriminator.train(not frozen)
            model.latent_discriminator.requires_grad_(not frozen)
            z = z0.detach().requires_grad_(frozen)
            with trainer._autocast():
                loss = discriminator_loss(model.discriminate(z), targets)
            loss.backward()
        model.latent_discriminator.requires_grad_(True)

    def optimizers():
        for optimizer in (trainer.dis_optimizer, trainer.ae_optimizer):
            optimizer.sync_grads()
            params = [p for group in optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, trainer.config.clip_grad_norm)
            optimizer.step()

    model.train()
    for name, part in [("encoder", encoder), ("decoder", decoder),
                       ("discriminator", discriminator), ("optimizers", optimizers)]:
        times[name] = time_call(part, device, repeat=repeat)
    times["rest"] = times["step"] - sum(v for k, v in times.items() if k != "step")
    return times


def main(argv=None):
    args = parse_args(argv)
    allocator = keep_freed_memory()  # as training runs
    rows = []
    for size in args.img_sizes:
        for preset in args.presets:
            config = TrainConfig(data_root=args.data_root, img_size=size, limit=args.limit,
                                 preset=preset, precision=args.precision, device=args.device,
                                 batch_size=args.batch_size, progress=False)
            trainer = Trainer(config, open_datasets(config)[0], torch.device(args.device))
            times = part_times(trainer, args.repeat)
            row = {"img size": size, "preset": preset,
                   **{k: f"{1e3 * v:.0f} ({100 * v / times['step']:.0f} %)" if k != "step"
                      else f"{1e3 * v:.0f}" for k, v in times.items()}}
            rows.append(row)
            print(row, flush=True)
    columns = ["img size", "preset", "step", "data", "encoder", "decoder", "discriminator",
               "optimizers", "rest"]
    setup = (f"{machine_description(args.device)}. Batch {args.batch_size}, {args.precision}, "
             f"channels_last, {args.limit} CelebA-HQ images; median of {args.repeat} runs of "
             "each part, in ms (share of the step). Parts as scripts/profile_step.py describes; "
             "their sum can exceed the step a little, the parts being timed cold one by one; "
             f"{allocator}.")
    write_table_report(args, "Where a training step's time goes", setup, "Parts", columns, rows,
                       args.device)


if __name__ == "__main__":
    sys.exit(main())
