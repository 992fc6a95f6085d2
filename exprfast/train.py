"""Training of Fader-style attribute-transfer models (``exprfast.models``).

The recipe is Fader Networks' (``train.py`` defaults): Adam, lr 2e-4, betas (0.5, 0.999), gradient
norm clipped at 5, batch 32. Every step is one latent-discriminator update, then one autoencoder
update on the next batch (Fader draws a fresh batch for each update):

* discriminator: cross-entropy of ``discriminate(encode(x))`` against the true attributes
  (thresholded at 0.5; 2 logits per attribute, the per-attribute losses summed), with the encoder
  in eval mode;
* autoencoder: ``MSE(x_hat, x) + lambda(t) * CE(discriminate(z), 1 - a)`` with the discriminator
  in eval mode and frozen: the encoder learns to make the discriminator read the *flipped*
  attributes, i.e. to leave them out of z. ``lambda(t) = lambda_lat * min(t, ramp) / ramp``.

**CPU budget.** Fader's lambda schedule (1e-4, reached after 500k steps) is the default, but it
leaves the attribute in the latent on any CPU-sized run (``DESIGN.md``, "Training on a CPU
budget"). There use e.g. ``--steps 4000 --lambda-lat 1e-2 --lambda-ramp-steps 1000``.

**Data order** is a pure function of (seed, batch number): batch ``b`` is a slice of the seeded
permutation of epoch ``b // E`` (``E = len(train) // batch_size``; each epoch drops its remainder)
and its horizontal flips come from a generator seeded by (seed, b, rank). Resuming at step ``s``
therefore replays exactly the batches a run that never stopped would have seen, and a 2k-step run
and a 1k + 1k resumed run end with identical weights on the CPU.

**Checkpoints** (``run_dir/checkpoint-<step>.pt``, every ``checkpoint_every`` steps, at the end and
on SIGINT/SIGTERM, the last ``keep_checkpoints`` kept) hold only tensors and plain data: the model
config (``build(**model_config)`` rebuilds it), the state_dicts of the model, both optimizers and
the fp16 grad scaler, the step, every rank's RNG states (torch, CUDA, numpy, python ``random``) and
the data order state. They are written to a temporary file and renamed into place, and read with
``torch.load(weights_only=True)`` (``load_checkpoint``, ``model_from_checkpoint``). A signal lets
the step in flight finish, saves, and makes ``train`` return with ``interrupted: True``; a second
signal interrupts at once.

**Distributed.** Under ``torchrun --nproc-per-node N`` each rank trains on its share (every N-th
sample) of every batch, with DDP over gloo (CPU) or nccl (CUDA); ``batch_size`` is the global
batch. BatchNorm stays plain per rank: each rank normalises with the statistics of its own
``batch_size / N`` samples (SyncBatchNorm would add a collective per layer), and DDP broadcasts
rank 0's running statistics at every forward, so rank 0's are the ones saved. Only rank 0 writes
logs, samples and checkpoints.

**Outputs** in ``run_dir``: ``metrics.jsonl`` (one JSON object per logged step: training means over
the last ``log_every`` steps, or validation reconstruction MSE and latent-discriminator accuracy),
TensorBoard events when ``tensorboard`` is installed, ``samples/step-<step>.png`` (rows: validation
faces; columns: original | reconstruction | each attribute flipped), the checkpoints and
``result.json`` (what ``train`` returns). ``samples_per_s`` counts the images of the autoencoder
update (``batch_size`` per step); the discriminator update sees as many again.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import random
import re
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .data import FaceDataset
from .data import ATTR_FILE, celebahq_paths, default_data_root
from .evaluate import classifier_loss
from .files import atomic_torch_save
from .models import DEFAULTS as MODEL_DEFAULTS
from .models import PRESETS, build

FORMAT = "exprfast-train-checkpoint"
VERSION = 1
PRECISIONS = ("fp32", "bf16", "fp16")
# The RGB data fixes img_channels; the other model options are training flags.
MODEL_OPTIONS = tuple(k for k in MODEL_DEFAULTS if k != "img_channels")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CHECKPOINT = re.compile(r"checkpoint-(\d+)\.pt")
_ORDER, _FLIP = 0, 1  # stream tags of the seeded generators
_BAR_NAMES = {"recon_loss": "recon", "adv_loss": "adv", "dis_loss": "dis", "lambda": "lambda",
              "samples_per_s": "img/s", "val_recon_mse": "val_mse", "val_dis_acc": "val_dis_acc"}


# ----------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Every training option; each field ``name`` is the flag ``--name-with-dashes``."""

    # data
    data_root: str | None = None
    img_size: int = 64
    attrs: tuple[str, ...] | None = None
    limit: int | None = None
    flip: bool = True
    cache_dir: str | None = None
    # model
    preset: str = "paper"
    model_overrides: dict = field(default_factory=dict)
    # optimisation (Fader's defaults)
    steps: int = 10_000
    batch_size: int = 32
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    clip_grad_norm: float = 5.0
    lambda_lat: float = 1e-4
    lambda_ramp_steps: int = 500_000
    seed: int = 0
    # run
    run_dir: str = "runs/train"
    resume: str | None = None
    log_every: int = 50
    val_every: int = 500
    val_images: int = 256
    sample_every: int = 500
    sample_images: int = 8
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    progress: bool = True
    # speed
    device: str | None = None
    precision: str = "fp32"
    # channels_last end to end: the fused decoder op then needs no layout conversions (see
    # README, Benchmarks); the paper decoder is slower than fader's in NCHW.
    channels_last: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("data_root", "cache_dir", "run_dir", "resume"):
            if getattr(self, name) is not None:
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.attrs, str):
            self.attrs = (self.attrs,)
        elif self.attrs is not None:
            self.attrs = tuple(self.attrs)
        self.betas = tuple(self.betas)
        self._validate()

    def _validate(self) -> None:
        def require(condition: bool, name: str, what: str) -> None:
            if not condition:
                raise ValueError(f"{_flag(name)} {what}, got {getattr(self, name)!r}")

        for name in ("img_size", "steps", "batch_size", "log_every", "val_every", "val_images",
                     "sample_every", "sample_images", "checkpoint_every", "keep_checkpoints"):
            require(_is_int(getattr(self, name), 1), name, "must be a positive integer")
        require(self.limit is None or _is_int(self.limit, 1), "limit", "must be a positive integer")
        require(_is_int(self.lambda_ramp_steps, 0), "lambda_ramp_steps", "must be an integer >= 0")
        require(_is_int(self.seed, 0), "seed", "must be an integer >= 0")
        require(self.img_size & (self.img_size - 1) == 0 and self.img_size >= 32, "img_size",
                "must be a power of two >= 32")
        require(_is_number(self.lr) and self.lr > 0, "lr", "must be a positive number")
        require(_is_number(self.clip_grad_norm) and self.clip_grad_norm > 0, "clip_grad_norm",
                "must be a positive number")
        require(_is_number(self.lambda_lat) and self.lambda_lat >= 0, "lambda_lat",
                "must be a number >= 0")
        require(len(self.betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in self.betas),
                "betas", "must be two numbers in [0, 1)")
        require(self.preset in PRESETS, "preset", f"must be one of {', '.join(PRESETS)}")
        require(self.precision in PRECISIONS, "precision",
                f"must be one of {', '.join(PRECISIONS)}")
        require(self.attrs is None or (len(self.attrs) > 0 and all(isinstance(a, str) and a
                                                                     for a in self.attrs)),
                "attrs", "must be one or more attribute names")
        require(set(self.model_overrides) <= set(MODEL_OPTIONS), "model_overrides",
                f"may only set {', '.join(MODEL_OPTIONS)}")
        try:  # the model's own checks, on the meta device: no memory, no initialisation
            with torch.device("meta"):
                build(self.preset, self.img_size, self.attrs or ("attr",), **self.model_overrides)
        except ValueError as error:
            raise ValueError(f"bad model flags (--init-fm, --max-fm, ...): {error}") from error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Put every ``TrainConfig`` option on ``parser`` (dest = field name); model options
    (``--init-fm`` ...) default to the preset's values."""
    d = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", default=d.data_root,
                      help=f"CelebA-HQ folder ({ATTR_FILE} + images<N>/) or a folder of class "
                           "folders (root/<class>/*.jpg); default ../shared/data/celebahq beside "
                           "the repository")
    data.add_argument("--img-size", type=int, default=d.img_size,
                      help="image side in pixels, a power of two >= 32 (default %(default)s)")
    data.add_argument("--attrs", nargs="+", default=d.attrs,
                      help="attribute names (default Smiling, or every class of class folders)")
    data.add_argument("--limit", type=int, default=d.limit,
                      help="use only the first N listed images (before the train/val split)")
    data.add_argument("--flip", action=argparse.BooleanOptionalAction, default=d.flip,
                      help="random horizontal flips of the training images")
    data.add_argument("--cache-dir", default=d.cache_dir,
                      help="image cache folder (default ~/.cache/exprfast)")

    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=PRESETS, default=d.preset,
                       help="decoder: paper (fused op), paper-eager, fader (default %(default)s)")
    for name in MODEL_OPTIONS:
        model.add_argument(_flag(name), type=type(MODEL_DEFAULTS[name]), default=None,
                           help=f"model option {name} (default {MODEL_DEFAULTS[name]})")

    optim = parser.add_argument_group("optimisation (defaults: Fader's recipe)")
    optim.add_argument("--steps", type=int, default=d.steps,
                       help="total training steps, counting those of a resumed run "
                            "(default %(default)s)")
    optim.add_argument("--batch-size", type=int, default=d.batch_size,
                       help="global batch, split over the processes (default %(default)s)")
    optim.add_argument("--lr", type=float, default=d.lr, help="Adam lr (default %(default)s)")
    optim.add_argument("--betas", type=float, nargs=2, default=d.betas,
                       help="Adam betas (default %(default)s)")
    optim.add_argument("--clip-grad-norm", type=float, default=d.clip_grad_norm,
                       help="gradient norm clip of both updates (default %(default)s)")
    optim.add_argument("--lambda-lat", type=float, default=d.lambda_lat,
                       help="final weight of the adversarial latent loss (default %(default)s; "
                            "on a CPU budget 1e-2 works much better)")
    optim.add_argument("--lambda-ramp-steps", type=int, default=d.lambda_ramp_steps,
                       help="steps of the linear ramp of lambda from 0 (default %(default)s; "
                            "on a CPU budget e.g. 1000)")
    optim.add_argument("--seed", type=int, default=d.seed,
                       help="seed of the initialisation, data order and flips")

    run = parser.add_argument_group("run")
    run.add_argument("-o", "--run-dir", default=d.run_dir,
                     help="folder of the logs, samples and checkpoints (default %(default)s)")
    run.add_argument("--resume", default=d.resume,
                     help="checkpoint to resume from, or 'auto' for the latest in --run-dir "
                          "(a fresh start if there is none)")
    for name, what in (("log_every", "log training metrics"),
                       ("val_every", "measure validation metrics"),
                       ("sample_every", "write a sample grid"),
                       ("checkpoint_every", "write a checkpoint")):
        run.add_argument(_flag(name), type=int, default=getattr(d, name),
                         help=f"{what} every N steps (default %(default)s)")
    run.add_argument("--val-images", type=int, default=d.val_images,
                     help="validation images measured (default %(default)s)")
    run.add_argument("--sample-images", type=int, default=d.sample_images,
                     help="faces (rows) in a sample grid (default %(default)s)")
    run.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                     help="newest checkpoints kept (default %(default)s)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=d.progress,
                     help="show a progress bar")

    speed = parser.add_argument_group("speed")
    speed.add_argument("--device", default=d.device,
                       help="torch device (default cuda if available, else cpu)")
    speed.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                       help="fp32; bf16 autocast (CPU or CUDA); fp16 autocast with a grad "
                            "scaler (CUDA only) (default %(default)s)")
    speed.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                       default=d.channels_last,
                       help="channels_last memory format (default on: the fused op's native layout)")
    speed.add_argument("--compile", action=argparse.BooleanOptionalAction, default=d.compile,
                       help="torch.compile the encoder, decoder and discriminator")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of parsed ``add_arguments`` flags; ValueError names a bad flag."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
              if f.name != "model_overrides"}
    overrides = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
    return TrainConfig(**values, model_overrides=overrides)


def run_train(args: argparse.Namespace) -> int:
    """The training command: trains and prints the result (rank 0); 2 on bad flags or data."""
    try:
        result = train(config_from_args(args))
    except (ValueError, FileNotFoundError) as error:
        print(f"exprfast train: error: {error}", file=sys.stderr)
        return 2
    if _env_rank() == 0:
        if result["interrupted"]:
            print(f"interrupted at step {result['step']}; resume with --resume auto",
                  file=sys.stderr)
        print(json.dumps(result, indent=2))
    return 0


# ----------------------------------------------------------------------------- data


def data_paths(config: TrainConfig) -> tuple[Path, Path | None]:
    """``(image_dir, attr_file)``: a CelebA-HQ root gives its ``images<N>`` folder for the image
    size and its attribute file; any other folder is read as class folders (``attr_file``
    None)."""
    root = Path(config.data_root) if config.data_root is not None else default_data_root()
    if root is None:
        raise ValueError("--data-root: no default data folder (../shared/data/celebahq beside "
                         "the repository); pass --data-root")
    if not root.is_dir():
        raise ValueError(f"--data-root {root} is not an existing folder")
    if (root / ATTR_FILE).is_file():
        try:
            return celebahq_paths(root, config.img_size)
        except FileNotFoundError as error:
            raise ValueError(f"--data-root: {error}") from error
    if not any(p.is_dir() for p in root.iterdir()):
        raise ValueError(f"--data-root {root} holds neither {ATTR_FILE} (CelebA-HQ layout) nor "
                         "class folders (root/<class>/*.jpg)")
    return root, None


def open_datasets(config: TrainConfig) -> tuple[FaceDataset, FaceDataset]:
    """The train (flipped if ``config.flip``) and val splits."""
    image_dir, attr_file = data_paths(config)
    common = dict(attrs=config.attrs, size=config.img_size, limit=config.limit,
                  cache_dir=config.cache_dir)
    train_set = FaceDataset(image_dir, attr_file, split="train", flip=config.flip, **common)
    val_set = FaceDataset(image_dir, attr_file, split="val", **common)
    return train_set, val_set


class BatchStream:
    """Training batches as a pure function of (seed, batch number); see the module docstring.
    Rank ``r`` of ``world_size`` gets samples ``r, r + world_size, ...`` of each batch."""

    def __init__(self, dataset: FaceDataset, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size > len(dataset):
            raise ValueError(f"--batch-size {batch_size} exceeds the {len(dataset)} training "
                             "images")
        if batch_size % world_size:
            raise ValueError(f"--batch-size {batch_size} must be divisible by the number of "
                             f"processes ({world_size})")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = len(dataset) // batch_size
        self._epoch, self._order = None, None

    def batch(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, k = divmod(number, self.batches_per_epoch)
        if epoch != self._epoch:  # one permutation per epoch, kept while it is in use
            generator = _generator(self.seed, _ORDER, epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.dataset),
                                                             generator=generator)
        indices = self._order[k * self.batch_size:(k + 1) * self.batch_size]
        return self.dataset.batch(indices[self.rank::self.world_size],
                                  _generator(self.seed, _FLIP, number, self.rank))

    def state(self, next_batch: int) -> dict:
        return {"seed": self.seed, "batch_size": self.batch_size,
                "dataset_size": len(self.dataset), "next_batch": next_batch}


def _generator(*keys: int) -> torch.Generator:
    """A torch generator seeded from the whole key (no collisions between nearby keys)."""
    seed = int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- training step


def lambda_at(step: int, lambda_lat: float, ramp_steps: int) -> float:
    """Weight of the adversarial loss at ``step`` (0-based): linear from 0 to ``lambda_lat``
    over ``ramp_steps`` (constant when 0), as Fader's ``get_lambda``."""
    return lambda_lat if ramp_steps == 0 else lambda_lat * min(step, ramp_steps) / ramp_steps


def attribute_targets(attrs: torch.Tensor) -> torch.Tensor:
    """(N, A) attribute values -> 0/1 classes (thresholded at 0.5)."""
    return (attrs > 0.5).long()


def discriminator_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """2-class cross-entropy per attribute of ``(N, 2A)`` logits, averaged over the batch and
    summed over the attributes (Fader's ``get_attr_loss``)."""
    return classifier_loss(logits.float().view(len(logits), -1, 2), targets)


def discriminator_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of (image, attribute) pairs classified right."""
    predicted = logits.view(len(logits), -1, 2).argmax(-1)
    return (predicted == targets).float().mean()


class AutoEncoder(nn.Module):
    """A FaderModel's encoder and decoder as one module, ``forward(x, attrs) -> (z, x_hat)``, so
    DDP syncs exactly the parameters of the autoencoder update."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder
        self._forward = model.forward  # a bound method: the model's checks, not its discriminator

    def forward(self, x: torch.Tensor, attrs: torch.Tensor):
        return self._forward(x, attrs)


class Trainer:
    """The model, its two optimizers and one training step (the loop is ``train``)."""

    def __init__(self, config: TrainConfig, train_set: FaceDataset, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> None:
        self.config, self.device = config, device
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.model = build(config.preset, config.img_size, train_set.attr_names,
                           **config.model_overrides).to(device)
        _seed_rngs(config.seed, rank)  # dropout masks differ between ranks
        self.memory_format = (torch.channels_last if config.channels_last
                              else torch.contiguous_format)
        self.model.to(memory_format=self.memory_format)
        if config.compile:
            for part in (self.model.encoder, self.model.decoder, self.model.latent_discriminator):
                part.compile()
        self.autoencoder = self._distributed(AutoEncoder(self.model))
        self.discriminator = self._distributed(self.model.latent_discriminator)
        self.ae_params = [*self.model.encoder.parameters(), *self.model.decoder.parameters()]
        self.dis_params = list(self.model.latent_discriminator.parameters())
        adam = dict(lr=config.lr, betas=config.betas)
        self.ae_optimizer = torch.optim.Adam(self.ae_params, **adam)
        self.dis_optimizer = torch.optim.Adam(self.dis_params, **adam)
        self.amp_dtype = _AMP_DTYPES.get(config.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self.stream = BatchStream(train_set, config.batch_size, config.seed, rank, world_size)
        self.step = 0

    def _distributed(self, module: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def train_step(self) -> dict[str, torch.Tensor | float]:
        """One discriminator update, then one autoencoder update; metrics as 0-d tensors."""
        lam = lambda_at(self.step, self.config.lambda_lat, self.config.lambda_ramp_steps)
        dis_loss, dis_acc = self._discriminator_update(*self.batch(2 * self.step))
        recon_loss, adv_loss = self._autoencoder_update(*self.batch(2 * self.step + 1), lam)
        self.scaler.update()
        self.step += 1
        return {"recon_loss": recon_loss, "adv_loss": adv_loss, "dis_loss": dis_loss,
                "dis_acc": dis_acc, "lambda": lam}

    def batch(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``number`` of the stream (this rank's share), on the device."""
        return self._to_device(*self.stream.batch(number))

    def _to_device(self, images: torch.Tensor, attrs: torch.Tensor):
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return images, attrs.to(self.device, non_blocking=True)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype,
                              enabled=self.amp_dtype is not None)

    def _discriminator_update(self, images, attrs):
        self.model.encoder.eval()  # as Fader: the discriminator sees eval-mode latents
        self.discriminator.train()
        targets = attribute_targets(attrs)
        with self._autocast():
            with torch.no_grad():
                z = self.model.encode(images)
            logits = self.discriminator(z)
        loss = discriminator_loss(logits, targets)
        self._update(loss, self.dis_optimizer, self.dis_params)
        return loss.detach(), discriminator_accuracy(logits.detach(), targets)

    def _autoencoder_update(self, images, attrs, lam: float):
        self.autoencoder.train()
        self.model.latent_discriminator.eval()
        flipped = 1 - attribute_targets(attrs)
        with _frozen(self.model.latent_discriminator), self._autocast():
            z, x_hat = self.autoencoder(images, attrs)
            logits = self.model.discriminate(z)
        recon_loss = F.mse_loss(x_hat.float(), images)
        adv_loss = discriminator_loss(logits, flipped)
        self._update(recon_loss + lam * adv_loss, self.ae_optimizer, self.ae_params)
        return recon_loss.detach(), adv_loss.detach()

    def _update(self, loss, optimizer, params) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)  # clip the true gradients (a no-op without fp16)
        nn.utils.clip_grad_norm_(params, self.config.clip_grad_norm)
        self.scaler.step(optimizer)

    @torch.no_grad()
    def validate(self, dataset: FaceDataset, n_images: int) -> dict[str, float]:
        """Reconstruction MSE and latent-discriminator accuracy on the first ``n_images`` of
        ``dataset``, eval mode (``train_step`` sets the modes it needs again)."""
        self.model.eval()
        n = min(n_images, len(dataset))
        squared_error = hits = 0.0
        for start in range(0, n, self.config.batch_size):
            stop = min(start + self.config.batch_size, n)
            images, attrs = self._to_device(*dataset.batch(range(start, stop)))
            with self._autocast():
                z, x_hat = self.model(images, attrs)
                logits = self.model.discriminate(z)
            squared_error += F.mse_loss(x_hat.float(), images, reduction="sum").item()
            hits += discriminator_accuracy(logits, attribute_targets(attrs)).item() * len(images)
        return {"val_recon_mse": squared_error / images[0].numel() / n, "val_dis_acc": hits / n}

    @torch.no_grad()
    def sample_grid(self, dataset: FaceDataset, n_images: int) -> torch.Tensor:
        """``(rows, columns, 3, S, S)``: the first ``n_images`` of ``dataset``, their
        reconstructions, and their decodings with each attribute flipped."""
        self.model.eval()
        images, attrs = self._to_device(*dataset.batch(range(min(n_images, len(dataset)))))
        z = self.model.encode(images)
        columns = [images, self.model.decode(z, attrs)]
        for j in range(attrs.shape[1]):
            flipped = attrs.clone()
            flipped[:, j] = 1 - attribute_targets(attrs[:, j])
            columns.append(self.model.decode(z, flipped))
        return torch.stack(columns, dim=1).float().cpu()

    def state_dict(self) -> dict:
        """Everything but the RNG states, as tensors and plain data."""
        return {
            "format": FORMAT, "version": VERSION,
            "model_config": dict(self.model.config),
            "model": self.model.state_dict(),
            "ae_optimizer": self.ae_optimizer.state_dict(),
            "dis_optimizer": self.dis_optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "data": self.stream.state(2 * self.step),
            "train_config": dataclasses.asdict(self.config),
        }

    def load_state_dict(self, checkpoint: dict) -> None:
        mismatched = {k: v for k, v in checkpoint["model_config"].items()
                      if self.model.config.get(k) != v}
        if mismatched:
            raise ValueError(f"--resume: the checkpoint's model has {mismatched}, these flags "
                             f"build {({k: self.model.config.get(k) for k in mismatched})}; "
                             "pass the checkpoint's model flags")
        self.model.load_state_dict(checkpoint["model"])
        self.ae_optimizer.load_state_dict(checkpoint["ae_optimizer"])
        self.dis_optimizer.load_state_dict(checkpoint["dis_optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = checkpoint["step"]
        expected = self.stream.state(2 * self.step)
        if checkpoint["data"] != expected:
            warnings.warn(f"--resume: the data order differs from the checkpoint's run "
                          f"({checkpoint['data']} vs now {expected}); training goes on with the "
                          "new order", stacklevel=2)


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """No weight gradients for ``module`` inside the block (its inputs still get theirs)."""
    module.requires_grad_(False)
    try:
        yield
    finally:
        module.requires_grad_(True)


# ----------------------------------------------------------------------------- RNG states


def _seed_rngs(seed: int, rank: int) -> None:
    derived = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    torch.manual_seed(derived)
    np.random.seed(derived)
    random.seed(derived)


def rng_state(device: torch.device) -> dict:
    """This process's RNG states as tensors and plain data."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": (name, keys.tolist(), pos, has_gauss, cached),
        "python": random.getstate(),
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- checkpoints




def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A training checkpoint, read with ``weights_only=True`` (nothing but tensors and plain
    data is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickle, zip and runtime errors on foreign or corrupt files
        raise ValueError(f"{path} is not an exprfast training checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an exprfast training checkpoint (format {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint version {payload.get('version')!r}; this "
                         f"exprfast reads version {VERSION}")
    return payload


def model_from_checkpoint(path: str | os.PathLike, map_location="cpu") -> nn.Module:
    """The trained FaderModel of a checkpoint, in eval mode."""
    payload = load_checkpoint(path, map_location)
    model = build(**payload["model_config"])
    model.load_state_dict(payload["model"])
    return model.to(map_location).eval()


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step:07d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints in ``run_dir``, oldest step first."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint-*.pt")
             if (m := _CHECKPOINT.fullmatch(p.name))] if run_dir.is_dir() else []
    return [p for _, p in sorted(found)]


def _resume_path(config: TrainConfig) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "auto":
        found = list_checkpoints(config.run_dir)
        return found[-1] if found else None
    path = Path(config.resume)
    if not path.is_file():
        raise ValueError(f"--resume {path} is not an existing checkpoint file")
    return path


# ----------------------------------------------------------------------------- logging


class _RunLog:
    """Rank 0's outputs: metrics.jsonl, TensorBoard events (when installed), the progress bar.
    Inactive on the other ranks."""

    def __init__(self, run_dir: Path, config: TrainConfig, start_step: int, active: bool):
        self.active = active
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.bar = tqdm(total=config.steps, initial=start_step, unit="step",
                        desc="exprfast: training", disable=not (active and config.progress))
        self.writer, self.latest = None, {}
        if not active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._drop_records_after(start_step)  # a resumed run rewrites what followed
        self.writer = _tensorboard_writer(run_dir)

    def _drop_records_after(self, step: int) -> None:
        if self.metrics_path.is_file():
            lines = self.metrics_path.read_text().splitlines()
            kept = [line for line in lines if json.loads(line)["step"] <= step]
            self.metrics_path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        with self.metrics_path.open("a") as file:
            file.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, step)
        self.latest.update((_BAR_NAMES[k], f"{v:.3g}") for k, v in metrics.items()
                           if k in _BAR_NAMES)
        self.bar.set_postfix(self.latest, refresh=False)

    def save_image(self, grid: torch.Tensor, step: int) -> None:
        if self.active:
            save_image_grid(grid, self.run_dir / "samples" / f"step-{step:07d}.png")

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


class _Window:
    """Means of the step metrics since the last log, and the samples/s of those steps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums, self.steps, self.seconds = {}, 0, 0.0

    def add(self, metrics: dict, seconds: float) -> None:
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1
        self.seconds += seconds

    def means(self, batch_size: int) -> dict[str, float]:
        means = {name: float(total) / self.steps for name, total in self.sums.items()}
        means["samples_per_s"] = batch_size * self.steps / self.seconds
        self.reset()
        return means


def save_image_grid(grid: torch.Tensor, path: str | os.PathLike, pad: int = 2) -> None:
    """Write ``(rows, columns, 3, H, W)`` images in [-1, 1] as one PNG, white gaps between."""
    rows, columns, _, height, width = grid.shape
    tiles = F.pad(grid.clamp(-1, 1), (pad, 0, pad, 0), value=1.0)
    canvas = tiles.permute(2, 0, 3, 1, 4).reshape(3, rows * (height + pad),
                                                  columns * (width + pad))
    canvas = F.pad(canvas, (0, pad, 0, pad), value=1.0)
    pixels = ((canvas + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# ----------------------------------------------------------------------------- signals


class _StopRequest:
    """While active, SIGINT and SIGTERM only set ``signal``: the loop finishes the step in
    flight, saves and returns (``requested``: a signal reached any rank). The first signal puts
    the previous handlers back, so a second one interrupts at once."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.signal, self.requested, self._previous = None, False, {}
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


# ----------------------------------------------------------------------------- distributed


def _env_rank() -> int:
    return int(os.environ.get("RANK", 0))


def _resolve_device(config: TrainConfig) -> torch.device:
    name = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a torch device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if config.precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (autocast + grad scaler); use "
                         "bf16 on the CPU")
    return device


@contextlib.contextmanager
def _process_group(device: torch.device):
    """Joins the torchrun process group (gloo on CPU, nccl on CUDA) when WORLD_SIZE > 1;
    yields ``(rank, world_size)``."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1 or dist.is_initialized():
        yield (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        # Free what still holds the group (DDP reducers sit in reference cycles) first: a group
        # destroyed later, at interpreter exit, aborts the process ("terminate called without an
        # active exception").
        gc.collect()
        dist.destroy_process_group()


def _any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    if world_size == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def _parameter_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- the loop


def train(config: TrainConfig) -> dict:
    """Train a model as ``config`` says (see the module docstring); returns the final metrics:
    ``step``, the last logged training means, ``val_recon_mse``, ``val_dis_acc``,
    ``interrupted``, ``checkpoint``, ``run_dir``, ``seconds`` (and ``ranks_agree`` under DDP:
    whether every rank ended with the same parameters). The same dict on every rank."""
    device = _resolve_device(config)
    train_set, val_set = open_datasets(config)
    with _process_group(device) as (rank, world_size):
        return _train_in_group(config, train_set, val_set, device, rank, world_size)


def _train_in_group(config, train_set, val_set, device, rank, world_size) -> dict:
    """The body of ``train`` inside the process group. A function of its own so that the trainer
    (whose DDP reducer holds the group) is freed before the group is destroyed."""
    trainer = Trainer(config, train_set, device, rank, world_size)
    resume = _resume_path(config)
    if resume is not None:
        _restore(trainer, load_checkpoint(resume, device), rank, world_size, device)
    elif rank == 0 and list_checkpoints(config.run_dir):
        warnings.warn(f"--run-dir {config.run_dir} holds checkpoints of an earlier run; this "
                      "fresh run will replace them (--resume auto continues it)", stacklevel=2)
    log = _RunLog(Path(config.run_dir), config, trainer.step, active=rank == 0)
    try:
        result = _loop(trainer, log, val_set, world_size)
    finally:
        log.close()
    if world_size > 1:
        result["ranks_agree"] = len(set(_gather(_parameter_digest(trainer.model),
                                                world_size))) == 1
        result = _gather(result, world_size)[0]  # rank 0's, which has the validation
    if rank == 0:
        (Path(config.run_dir) / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _restore(trainer: Trainer, checkpoint: dict, rank: int, world_size: int,
             device: torch.device) -> None:
    trainer.load_state_dict(checkpoint)
    states = checkpoint["rng"]
    if len(states) == world_size:
        set_rng_state(states[rank], device)
    else:  # another process count: fresh, still deterministic, streams
        _seed_rngs(trainer.config.seed + trainer.step, rank)


def _loop(trainer: Trainer, log: _RunLog, val_set: FaceDataset, world_size: int) -> dict:
    config, start = trainer.config, time.perf_counter()
    window, train_means, val, val_step, saved = _Window(), {}, {}, None, None
    with _StopRequest() as stop:
        while trainer.step < config.steps and not stop.requested:
            step_start = time.perf_counter()
            metrics = trainer.train_step()
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)  # so the step time is the GPU's too
            window.add(metrics, time.perf_counter() - step_start)
            log.bar.update()
            step = trainer.step
            if step % config.log_every == 0:
                train_means = window.means(config.batch_size)
                log.write(step, train_means)
            if step % config.val_every == 0 and log.active:
                val, val_step = trainer.validate(val_set, config.val_images), step
                log.write(step, val)
            if step % config.sample_every == 0 and log.active:
                log.save_image(trainer.sample_grid(val_set, config.sample_images), step)
            stop.requested = _any_rank(stop.signal is not None, world_size, trainer.device)
            if stop.requested or step % config.checkpoint_every == 0:
                saved = _checkpoint(trainer, world_size, log.active)
        if saved is None or saved.step != trainer.step:  # the final state
            saved = _checkpoint(trainer, world_size, log.active)
    if window.steps:
        train_means = window.means(config.batch_size)
    if log.active and val_step != trainer.step:
        val = trainer.validate(val_set, config.val_images)
        log.write(trainer.step, val)
    return {"step": trainer.step, **train_means, **val, "interrupted": stop.requested,
            "checkpoint": str(saved.path), "run_dir": config.run_dir,
            "seconds": round(time.perf_counter() - start, 2)}


class _Saved(NamedTuple):
    step: int
    path: Path


def _checkpoint(trainer: Trainer, world_size: int, write: bool) -> _Saved:
    """Save (rank 0) a checkpoint with every rank's RNG states; drop the oldest beyond
    ``keep_checkpoints``. Collective under DDP."""
    states = _gather(rng_state(trainer.device), world_size)
    path = checkpoint_path(trainer.config.run_dir, trainer.step)
    if write:
        atomic_torch_save({**trainer.state_dict(), "rng": states}, path)
        for old in list_checkpoints(trainer.config.run_dir)[:-trainer.config.keep_checkpoints]:
            old.unlink()
    return _Saved(trainer.step, path)


# ----------------------------------------------------------------------------- helpers


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
