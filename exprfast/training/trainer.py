"""One training step of a Fader-style model, with the optional edit losses.

The base recipe is Fader Networks' (``train.py`` defaults): Adam, lr 2e-4, betas (0.5, 0.999),
gradient norm clipped at 5, batch 32. Every step is ``lat_dis_steps`` (default 1; Fader's
``n_lat_dis``) latent-discriminator updates, then one autoencoder update, each on the next batch
(Fader draws a fresh batch for each update):

* discriminator: cross-entropy of ``discriminate(encode(x))`` against the true attributes
  (thresholded at 0.5; 2 logits per attribute, the per-attribute losses summed), with the encoder
  in eval mode;
* autoencoder: ``MSE(x_hat, x) + lambda(t) * CE(discriminate(z), 1 - a)`` with the discriminator
  in eval mode and frozen: the encoder learns to make the discriminator read the *flipped*
  attributes, i.e. to leave them out of z. ``lambda(t) = lambda_lat * min(t, ramp) / ramp``.

More discriminator updates keep it closer to the encoder it has to police: with one, the
encoder keeps moving the attribute to where the discriminator is not looking, so the latent still
carries it (``scripts/latent_probe.py``: a fresh discriminator reads it back) and the decoder
takes it from there rather than from the labels, which makes edits faint. ``lat_dis_reset_every``
starts the discriminator afresh every K steps (measured: that does not take it out either;
docs/SMILES.md, "What the latent still carries").

``reuse_latent`` (off by default: a recipe change) skips the discriminator's own batch: after
the autoencoder update, the discriminator learns from that update's detached, train-mode latent.
That saves one encoder forward per step (speed: ``benchmarks/presets*.md``; quality:
``benchmarks/reuse_latent.md``).

That recipe trains the decoder only to reconstruct, so nothing asks a decoded *flip* to show the
flipped attribute, and at CPU-sized budgets the edits stay faint. Two optional terms on
``x_flip = decode(z, 1 - a)`` (every attribute flipped), ramped like lambda, fix that:

* ``lambda_clf``: AttGAN's attribute-classification loss ``CE(reader(x_flip), 1 - a)``. The
  reader (``AttributeReader``) is trained on the real faces of the autoencoder batch, every step
  (AttGAN) or only during the first ``clf_train_steps`` steps and then frozen (Fader's
  pretrained classifier);
* ``lambda_patch``: a PatchGAN critic's least-squares loss on ``x_flip``, the critic trained on
  the real faces against the detached ``x_flip``. With ``patch_on_reader`` the critic is a head
  on the reader's trunk (AttGAN's shared discriminator), and the reader's update, made after
  the autoencoder's, trains both heads: attributes on the real faces, realness on real vs flip.
  The separate critic can see only one region of the faces (``patch_region``, e.g. the mouth),
  and ``r1_gamma`` adds R1 to its loss (Mescheder et al. 2018: gamma/2 times its squared
  gradient at the real faces), which smooths what it rewards (docs/SMILES.md: on the mouth,
  R1 removed the critic's texture and its sharpening together).

``rec_loss`` swaps Fader's mean squared reconstruction error for L1 or MS-SSIM + L1
(``reconstruction_loss``), losses that blur edges less.

**The mouth refiner** (``mouth_refiner``, a second stage; ``models.refiner``). The model from
``init_from`` stays frozen (eval mode), and so does its reader, which the stage carries into
its checkpoints (so exported files read photos as before). A step decodes one batch's
reconstructions without gradients, cuts the refiner's box out of them and of the real faces at
one random place near ``refine_box`` (the same for the batch), updates the conditional critic
(hinge loss: real box against the detached redrawn one, each beside the decoded box and the
true values), then the refiner (given the decoded box and the true values):
``lambda_refiner_l1 * L1(redrawn, real) + hinge_generator_loss`` against the updated critic.
Trained on reconstructions alone, it learns mouths that match the values of real faces, and
weakened the edits (docs/SMILES.md). ``lambda_refiner_clf`` trains it on edits as well: the
same latents are also decoded with every attribute flipped, and the refiner redraws those
boxes too, with no real face to match. The critic learns them as fakes as well (AttGAN's
discriminator sees the edits), and ``lambda_refiner_clf * CE(mouth_reader(redrawn box),
values)`` asks every redrawn box, edit or reconstruction, to read as its values: the
``MouthReader`` learns the attributes from the real boxes, updated every step before the
refiner (AttGAN's classifier, on the box). A critic that saw only reconstructions let the
refiner please the reader with white speckles and stripes; as it is, measured on the bundled
model, it keeps the smiles put on but paints coloured grids over smiles taken off, so it is not
in the bundled model (docs/SMILES.md, "trained on the edits too"). ``refiner_highpass`` trains
a refiner whose change is high-passed (``MouthRefiner(highpass=...)``); measured from the
6,000-step refiner, it reshaped the mouth with what the filter lets through and weakened the
edits, while the same high-pass set on the refiner trained without it (at export) kept them.
``refiner_cycle`` gives a fraction of each batch, in place of its reconstruction, its round
trip through the other values, ``decode(encode(decode(z, flipped)), values)``: the decoder's edit
of a face that had the other values, whose real face is the target, so the refiner learns from
edits with the L1 loss and the critic alone, no reader to please (measured in docs/SMILES.md,
"trained on round trips").
``refiner_coupled`` names attributes that the refiner and its critic are also given, from the
data's labels (the data is opened with them after the model's ``attrs``; the model and its
reader get only their own columns); in use each takes the model's first value
(``MouthRefiner(coupled=...)``). ``refiner_scale`` 2 opens the data at twice ``img_size``
(``training.open_datasets``): the model is given the faces resized to its size, the refiner
draws its box at the data's size and learns from the real faces' boxes there, and the critic
sees the decoded box upsampled beside them (``MouthRefiner(scale=...)``).

**CPU budget.** Fader's lambda schedule (1e-4, reached after 500k steps) is the default, but it
leaves the attribute in the latent on any CPU-sized run (``docs/DESIGN.md``, "Training on a CPU
budget"). There use e.g. ``--steps 4000 --lambda-lat 1e-2 --lambda-ramp-steps 1000``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoints import TRAIN_FORMAT, TRAIN_VERSION, ModelFile
from ..checks import one_line
from ..data import FaceDataset, crop_region
from ..models import (AttributeReader, MouthCritic, MouthReader, MouthRefiner,
                      PatchDiscriminator, build, classifier_loss, critic_loss, hinge_critic_loss,
                      hinge_generator_loss, least_squares_loss, refine_box, resize,
                      upsample)
from .config import TrainConfig, check_resumable
from .optim import FlatAdam
from .stream import BatchStream, seed_rngs

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Optional parts: (attribute, optimizer attribute) saved in checkpoints when present.
_EXTRAS = (("reader", "reader_optimizer"), ("patch", "patch_optimizer"),
           ("refiner", "refiner_optimizer"), ("refiner_critic", "refiner_critic_optimizer"),
           ("mouth_reader", "mouth_reader_optimizer"))
# How far (fractions of the side) the refiner's training box moves from refine_box, down and
# across: about where mouths sit in the aligned faces.
_REFINE_JITTER = (4 / 128, 8 / 128)


def lambda_at(step: int, lambda_lat: float, ramp_steps: int) -> float:
    """Weight of a ramped loss at ``step`` (0-based): linear from 0 to ``lambda_lat`` over
    ``ramp_steps`` (constant when 0), as Fader's ``get_lambda``."""
    return lambda_lat if ramp_steps == 0 else lambda_lat * min(step, ramp_steps) / ramp_steps


def attribute_targets(attrs: torch.Tensor) -> torch.Tensor:
    """(N, A) attribute values -> 0/1 classes (thresholded at 0.5)."""
    return (attrs > 0.5).long()


def reconstruction_loss(x_hat: torch.Tensor, images: torch.Tensor, kind: str = "mse"):
    """The autoencoder's reconstruction loss on faces in [-1, 1]: "mse" (Fader's), "l1", or
    "msssim-l1", Zhao et al.'s (2017) 0.84 (1 - MS-SSIM) + 0.16 L1, which keeps edges that the
    mean squared error blurs. MS-SSIM's five scales need a window of at most (side - 1) / 16 + 1
    pixels: 3 at 64 px, 7 at 128, its usual 11 from 161. Computed in float32 under autocast."""
    if kind == "mse":
        return F.mse_loss(x_hat, images)
    l1 = F.l1_loss(x_hat, images)
    if kind == "l1":
        return l1
    window = min(11, (images.shape[-1] - 1) // 16 + 1)
    window -= 1 - window % 2  # odd
    with torch.autocast(images.device.type, enabled=False):
        similarity = ms_ssim((x_hat.float() + 1) / 2, (images.float() + 1) / 2, data_range=1.0,
                             win_size=window)
    return 0.84 * (1 - similarity) + 0.16 * l1


def discriminator_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``classifier_loss`` of the latent discriminator's ``(N, 2A)`` logits."""
    return classifier_loss(logits.view(len(logits), -1, 2), targets)


def discriminator_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of (image, attribute) pairs classified right."""
    predicted = logits.view(len(logits), -1, 2).argmax(-1)
    return (predicted == targets).float().mean()


class AutoEncoder(nn.Module):
    """A FaderModel's encoder and decoder as one module, ``forward(x, attrs, flipped=None) ->
    (z, x_hat, x_flip)``, so DDP syncs exactly the parameters of the autoencoder update."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder
        self._model = [model]  # in a list: not a submodule (its discriminator is not ours)

    def forward(self, x: torch.Tensor, attrs: torch.Tensor, flipped: torch.Tensor | None = None):
        model = self._model[0]
        z = model.encode(x)
        if flipped is None:
            return z, model.decode(z, attrs), None
        # one first-layer conv for both; flipped first, as its BatchNorm statistics always were
        x_flip, x_hat = model.decode_many(z, [flipped, attrs])
        return z, x_hat, x_flip


class Trainer:
    """The model, its optimizers and one training step (the loop is ``training.run``)."""

    def __init__(self, config: TrainConfig, train_set: FaceDataset, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> None:
        self.config, self.device = config, device
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        # the data's labels: the model's attributes, then the refiner's coupled ones
        attr_names = train_set.attr_names[:len(train_set.attr_names)
                                          - len(config.refiner_coupled)]
        self.model = build(config.preset, config.img_size, attr_names,
                           **config.model_overrides).to(device)
        self.reader = self.patch = self.refiner = self.refiner_critic = None
        self.mouth_reader = None
        if config.mouth_refiner:
            n_attrs = len(attr_names)
            self.refiner = MouthRefiner(config.img_size, config.mouth_refiner, n_attrs,
                                        highpass=config.refiner_highpass,
                                        coupled=config.refiner_coupled,
                                        scale=config.refiner_scale).to(device)
            self.refiner_critic = MouthCritic(n_attrs=self.refiner.n_values).to(device)
            if config.lambda_refiner_clf > 0:
                self.mouth_reader = MouthReader(config.img_size, n_attrs=n_attrs).to(device)
        if config.lambda_clf > 0 or config.mouth_refiner:  # the refiner stage carries it
            self.reader = AttributeReader(config.img_size, attr_names,
                                          luminance=config.reader_luminance,
                                          critic=config.patch_on_reader).to(device)
        if config.lambda_patch > 0 and not config.patch_on_reader:
            self.patch = PatchDiscriminator(config.img_size).to(device)
        seed_rngs(config.seed, rank)  # dropout masks differ between ranks
        self.memory_format = (torch.channels_last if config.channels_last
                              else torch.contiguous_format)
        extras = [getattr(self, part) for part, _ in _EXTRAS if getattr(self, part) is not None]
        parts = [self.model.encoder, self.model.decoder, self.model.latent_discriminator, *extras]
        for part in parts:
            part.to(memory_format=self.memory_format)
            if config.compile:
                part.compile()
        self.autoencoder = self._distributed(AutoEncoder(self.model))
        self.discriminator = self._distributed(self.model.latent_discriminator)
        self.ae_params = [*self.model.encoder.parameters(), *self.model.decoder.parameters()]
        # Fused Adam (one kernel for all parameters; on the CPU the default is a Python loop
        # over them), given each channels_last weight's memory as it lies (training/optim.py):
        # the same Adam, bit for bit, so checkpoints load either way.
        adam = dict(lr=config.lr, betas=config.betas)
        self.ae_optimizer = FlatAdam(self.ae_params, **adam)
        self.dis_optimizer = FlatAdam(self.model.latent_discriminator.parameters(), **adam)
        for part, optimizer in _EXTRAS:
            module = getattr(self, part)
            setattr(self, optimizer, None if module is None
                    else FlatAdam(module.parameters(), **adam))
            if module is not None:  # DDP syncs what forward uses: the refiner trains on boxes
                trained = _Redraw(module) if part == "refiner" else module
                setattr(self, f"{part}_ddp", self._distributed(trained))
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
        """The updates of one step (module docstring); metrics as 0-d tensors or floats."""
        config = self.config
        if self.refiner is not None:
            metrics = self._refiner_update()
            self.step += 1
            return metrics
        lam = lambda_at(self.step, config.lambda_lat, config.lambda_ramp_steps)
        ramp = lambda_at(self.step, 1.0, config.lambda_ramp_steps)
        metrics = {"lambda": lam}
        first = self._batches_per_step * self.step  # the step's first batch number
        every = config.lat_dis_reset_every
        if every is not None and self.step > 0 and self.step % every == 0:
            self._reset_discriminator()
        if not config.reuse_latent:
            for k in range(config.lat_dis_steps):
                self._discriminator_update(*self._fresh_latent(first + k), metrics)
        images, attrs = self.batch(first + config.lat_dis_steps)
        if self.reader is not None:
            # A frozen reader stops changing altogether (eval mode: BatchNorm statistics too);
            # a training one normalises every batch it sees, real or decoded, by its own.
            learning = config.clf_train_steps is None or self.step < config.clf_train_steps
            self.reader.train(learning)
            if learning and not config.patch_on_reader:
                self._reader_update(images, attrs, metrics)
        z, x_flip = self._autoencoder_update(images, attrs, lam, ramp, metrics)
        if config.reuse_latent:
            self._discriminator_update(z, attrs, metrics)
        if config.patch_on_reader:  # its critic head needs this step's flips
            self._reader_update(images, attrs, metrics, x_flip)
        if self.patch is not None:
            metrics["patch_dis_loss"] = self._patch_update(images, x_flip)
        self.scaler.update()
        self.step += 1
        return metrics

    @property
    def _batches_per_step(self) -> int:
        """Batch numbers a step takes: one per discriminator update, one for the autoencoder
        (``reuse_latent`` keeps the numbering of ``lat_dis_steps`` = 1)."""
        return self.config.lat_dis_steps + 1

    def batch(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``number`` of the stream (this rank's share), on the device."""
        return self._to_device(*self.stream.batch(number))

    def _model_attrs(self, labels: torch.Tensor) -> torch.Tensor:
        """The model's columns of the data's ``labels`` (a refiner's coupled ones follow)."""
        return labels[:, :len(self.model.attrs)]

    def _to_device(self, images: torch.Tensor, attrs: torch.Tensor):
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return images, attrs.to(self.device, non_blocking=True)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype,
                              enabled=self.amp_dtype is not None)

    def _fresh_latent(self, number: int):
        """Batch ``number`` encoded for the discriminator update, as Fader: eval mode, no grad."""
        images, attrs = self.batch(number)
        self.model.encoder.eval()
        with self._autocast(), torch.no_grad():
            return self.model.encode(images), attrs

    def _reset_discriminator(self) -> None:
        """New weights (seeded by the step, so resume repeats them) and new Adam moments."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.config.seed + 1 + self.step)
            for module in self.model.latent_discriminator.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        self.dis_optimizer.state.clear()

    def _discriminator_update(self, z, attrs, metrics: dict) -> None:
        self.discriminator.train()
        targets = attribute_targets(attrs)
        with self._autocast():
            logits = self.discriminator(z)
        loss = discriminator_loss(logits, targets)
        self._update(loss, self.dis_optimizer)
        metrics["dis_loss"] = loss.detach()
        metrics["dis_acc"] = discriminator_accuracy(logits.detach(), targets)

    def _reader_update(self, images, attrs, metrics: dict, x_flip=None):
        """The reader's update on the real faces; with ``x_flip`` (``patch_on_reader``) its
        critic head learns real faces against those detached flips as well."""
        targets = attribute_targets(attrs)
        with self._autocast():
            if x_flip is None:
                logits = self.reader_ddp(images)
                realness_loss = 0
            else:
                logits, real = self.reader_ddp(images, with_realness=True)
                fake = self.reader_ddp(x_flip, with_realness=True)[1]
                realness_loss = critic_loss(real, fake)
                metrics["patch_dis_loss"] = realness_loss.detach()
            clf_loss = classifier_loss(logits, targets)
        self._update(clf_loss + realness_loss, self.reader_optimizer)
        metrics["reader_loss"] = clf_loss.detach()
        metrics["reader_acc"] = (logits.detach().argmax(-1) == targets).float().mean()

    def _autoencoder_update(self, images, attrs, lam: float, ramp: float, metrics: dict):
        """The autoencoder update; fills ``metrics``, returns the detached latent and
        ``x_flip`` (None when no edit loss needs it)."""
        self.autoencoder.train()
        self.model.latent_discriminator.eval()
        targets = attribute_targets(attrs)
        flipped = 1 - targets
        wants_flip = self.reader is not None or self.patch is not None
        critics = [p for p in (self.model.latent_discriminator, self.reader, self.patch)
                   if p is not None]
        with _frozen(*critics), self._autocast():
            z, x_hat, x_flip = self.autoencoder(images, attrs, flipped if wants_flip else None)
            logits = self.model.discriminate(z)
            recon_loss = reconstruction_loss(x_hat.float(), images, self.config.rec_loss)
            adv_loss = discriminator_loss(logits, flipped)
            loss = recon_loss + lam * adv_loss
            realness = None  # the patch critic's logits on x_flip, from either critic
            if self.reader is not None:
                if self.config.patch_on_reader:
                    flip_logits, realness = self.reader(x_flip, with_realness=True)
                else:
                    flip_logits = self.reader(x_flip)
                clf_loss = classifier_loss(flip_logits, flipped)
                loss = loss + self.config.lambda_clf * ramp * clf_loss
                metrics["clf_loss"] = clf_loss.detach()
                metrics["flip_acc"] = (flip_logits.detach().argmax(-1) == flipped).float().mean()
            if self.patch is not None:
                realness = self.patch(self._critic_view(x_flip))
            if realness is not None:
                patch_loss = least_squares_loss(realness, real=True)
                loss = loss + self.config.lambda_patch * ramp * patch_loss
                metrics["patch_loss"] = patch_loss.detach()
        self._update(loss, self.ae_optimizer)
        metrics["recon_loss"], metrics["adv_loss"] = recon_loss.detach(), adv_loss.detach()
        return z.detach(), None if x_flip is None else x_flip.detach()

    def _critic_view(self, images: torch.Tensor) -> torch.Tensor:
        """What the separate patch critic sees of faces: all, or ``patch_region``'s crop."""
        region = self.config.patch_region
        return images if region is None else crop_region(images, region)

    def _patch_update(self, images, x_flip):
        real, gamma = self._critic_view(images), self.config.r1_gamma
        if gamma > 0:
            real = real.detach().requires_grad_(True)
        with self._autocast():
            real_logits = self.patch_ddp(real)
            loss = critic_loss(real_logits, self.patch_ddp(self._critic_view(x_flip)))
        if gamma > 0:  # R1: the critic's squared gradient at the real faces
            grad, = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
            loss = loss + gamma / 2 * grad.float().pow(2).flatten(1).sum(1).mean()
        self._update(loss, self.patch_optimizer)
        return loss.detach()

    def _model_size(self, images: torch.Tensor) -> torch.Tensor:
        """Faces of the data (``refiner_scale`` times the model's size) as the model takes
        them."""
        return resize(images, self.config.img_size).contiguous(memory_format=self.memory_format)

    def _refiner_update(self) -> dict[str, torch.Tensor]:
        """The mouth refiner's step (module docstring)."""
        fine, labels = self.batch(self._batches_per_step * self.step)  # at the refiner's size
        images = self._model_size(fine)
        attrs = self._model_attrs(labels)
        edits = self.config.lambda_refiner_clf > 0  # (never with coupled attributes)
        flipped = 1 - attribute_targets(attrs)
        values = torch.cat([attrs, flipped.to(attrs.dtype)]) if edits else labels
        self.model.eval()
        cycled = round(self.config.refiner_cycle * len(images))  # the batch's first ones
        with torch.no_grad(), self._autocast():
            z = self.model.encode(images)
            decoded = (torch.cat(self.model.decode_many(z, [attrs, flipped])) if edits
                       else self.model.decode(z, attrs)).float()
            if cycled:  # edits of faces that had the other values, back to the real ones
                other = self.model.decode(z[:cycled], flipped[:cycled].to(attrs.dtype))
                decoded[:cycled] = self.model.decode(self.model.encode(other), attrs[:cycled])
        size, scale = self.config.img_size, self.config.refiner_scale
        top, bottom, left, right = refine_box(size)
        reach = [round(f * size) for f in _REFINE_JITTER]
        dy, dx = (int(torch.randint(-r, r + 1, ())) for r in reach)
        rows, cols = slice(top + dy, bottom + dy), slice(left + dx, right + dx)
        fine_rows, fine_cols = (slice(scale * r.start, scale * r.stop) for r in (rows, cols))
        n, condition = len(images), decoded[:, :, rows, cols]
        real = fine[:, :, fine_rows, fine_cols]
        shown = upsample(condition, scale)  # the decoded box as the critic sees it
        self.refiner.train()
        with self._autocast():  # real boxes against every redrawn one, edits included
            redrawn = self.refiner_ddp(condition, values)
            logits = self.refiner_critic_ddp(torch.cat([shown[:n], shown]),
                                             torch.cat([real, redrawn.detach()]),
                                             torch.cat([labels, values]))
            critic_loss = hinge_critic_loss(logits[:n], logits[n:])
        self._update(critic_loss, self.refiner_critic_optimizer)
        metrics = {"refiner_critic_loss": critic_loss.detach(),
                   "decoded_l1": F.l1_loss(shown[:n], real).detach()}
        if edits:  # the mouth reader learns the attributes from the real boxes
            with self._autocast():
                real_logits = self.mouth_reader_ddp(real)
                reader_loss = classifier_loss(real_logits, attribute_targets(attrs))
            self._update(reader_loss, self.mouth_reader_optimizer)
            metrics["mouth_reader_loss"] = reader_loss.detach()
        with _frozen(self.refiner_critic, *([self.mouth_reader] if edits else [])), \
                self._autocast():
            l1 = F.l1_loss(redrawn[:n].float(), real)
            adversarial = hinge_generator_loss(self.refiner_critic(shown, redrawn, values))
            loss = self.config.lambda_refiner_l1 * l1 + adversarial
            if edits:  # every redrawn box, reconstruction or edit, must read as its values
                logits = self.mouth_reader(redrawn)
                targets = attribute_targets(values)
                clf_loss = classifier_loss(logits, targets)
                loss = loss + self.config.lambda_refiner_clf * clf_loss
                metrics["refiner_clf_loss"] = clf_loss.detach()
                metrics["refiner_flip_acc"] = \
                    (logits[n:].detach().argmax(-1) == targets[n:]).float().mean()
        self._update(loss, self.refiner_optimizer)
        self.scaler.update()
        return {**metrics, "refiner_l1": l1.detach(), "refiner_adv": adversarial.detach()}

    def _update(self, loss, optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        optimizer.sync_grads()  # the gradients that unscaling and clipping see
        self.scaler.unscale_(optimizer)  # clip the true gradients (a no-op without fp16)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, self.config.clip_grad_norm)
        self.scaler.step(optimizer)

    @torch.no_grad()
    def validate(self, dataset: FaceDataset, n_images: int) -> dict[str, float]:
        """Reconstruction MSE and latent-discriminator accuracy on the first ``n_images`` of
        ``dataset`` (and, with a reader, its accuracy on their flipped decodes, refined when a
        refiner is training), eval mode (``train_step`` sets the modes it needs again)."""
        self.model.eval()
        if self.reader is not None:
            self.reader.eval()
        if self.refiner is not None:
            self.refiner.eval()
        n = min(n_images, len(dataset))
        squared_error = hits = flip_hits = box_error = refined_error = 0.0
        scale = self.config.refiner_scale
        top, bottom, left, right = refine_box(self.config.img_size * scale)
        for start in range(0, n, self.config.batch_size):
            stop = min(start + self.config.batch_size, n)
            fine, labels = self._to_device(*dataset.batch(range(start, stop)))
            images = self._model_size(fine)
            attrs = self._model_attrs(labels)  # a refiner's coupled ones follow, as in use
            targets = attribute_targets(attrs)
            with self._autocast():
                z, x_hat = self.model(images, attrs)
                logits = self.model.discriminate(z)
                if self.reader is not None:
                    x_flip = self.model.decode(z, 1 - targets)
                    if self.refiner is not None:
                        x_flip = self._model_size(self.refiner(x_flip.float(),
                                                               (1 - targets).to(attrs.dtype)))
                    flip_logits = self.reader(x_flip)
                    flip_hits += (flip_logits.argmax(-1) == 1 - targets).float().mean().item() \
                        * len(images)
            squared_error += F.mse_loss(x_hat.float(), images, reduction="sum").item()
            hits += discriminator_accuracy(logits, targets).item() * len(images)
            if self.refiner is not None:
                box = (slice(None), slice(None), slice(top, bottom), slice(left, right))
                refined = self.refiner(x_hat.float(), attrs)
                decoded = upsample(x_hat.float(), scale)
                box_error += F.l1_loss(decoded[box], fine[box]).item() * len(images)
                refined_error += F.l1_loss(refined[box], fine[box]).item() * len(images)
        result = {"val_recon_mse": squared_error / images[0].numel() / n, "val_dis_acc": hits / n}
        if self.reader is not None:
            result["val_flip_acc"] = flip_hits / n
        if self.refiner is not None:  # in the refiner's box: the decoder's L1, the refiner's
            result["val_mouth_l1"] = box_error / n
            result["val_mouth_l1_refined"] = refined_error / n
        return result

    @torch.no_grad()
    def sample_grid(self, dataset: FaceDataset, n_images: int) -> torch.Tensor:
        """``(rows, columns, 3, S, S)``: the first ``n_images`` of ``dataset``, their
        reconstructions, and their decodings with each attribute flipped (mouths redrawn by the
        refiner, when one is training)."""
        self.model.eval()
        refiner = self.refiner.eval() if self.refiner is not None else None
        fine, labels = self._to_device(*dataset.batch(range(min(n_images, len(dataset)))))
        attrs = self._model_attrs(labels)
        z = self.model.encode(self._model_size(fine))

        def decode(values):
            decoded = self.model.decode(z, values)
            return decoded if refiner is None else refiner(decoded, values)

        columns = [fine, decode(attrs)]  # at the refiner's size (the model's without one)
        for j in range(attrs.shape[1]):
            flipped = attrs.clone()
            flipped[:, j] = 1 - attribute_targets(attrs[:, j])
            columns.append(decode(flipped))
        return torch.stack(columns, dim=1).float().cpu()

    def state_dict(self) -> dict:
        """Everything but the RNG states, as tensors and plain data."""
        state = {
            "format": TRAIN_FORMAT, "version": TRAIN_VERSION,
            "model_config": dict(self.model.config),
            "model": self.model.state_dict(),
            "ae_optimizer": self.ae_optimizer.state_dict(),
            "dis_optimizer": self.dis_optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "data": self.stream.state(self._batches_per_step * self.step),
            "train_config": dataclasses.asdict(self.config),
        }
        for part, optimizer in _EXTRAS:
            if getattr(self, part) is not None:
                state[part] = getattr(self, part).state_dict()
                state[optimizer] = getattr(self, optimizer).state_dict()
        for part in ("reader", "refiner"):
            if getattr(self, part) is not None:
                state[f"{part}_config"] = dict(getattr(self, part).config)
        return state

    def start_from(self, start: ModelFile, discriminator: bool, where: str) -> list[str]:
        """Take the weights of a model file (``--init-from``; ``where`` names it in errors):
        the encoder and decoder, the latent discriminator if ``discriminator`` (the file holds
        it), the reader and the mouth refiner where both have one. Returns the parts taken."""
        state = {k: v for k, v in start.model.state_dict().items()
                 if discriminator or not k.startswith("latent_discriminator.")}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("latent_discriminator.") for k in missing):
            raise ValueError(f"{where} does not fit the model these flags build")
        parts = ["encoder", "decoder", *(["latent discriminator"] if discriminator else [])]
        if self.refiner is not None and start.reader is None:
            raise ValueError(f"{where} has no attribute reader; --mouth-refiner refines a model "
                             "trained with --lambda-clf, whose reader the result keeps")
        for part, name in (("reader", "reader"), ("refiner", "mouth refiner")):
            mine, theirs = getattr(self, part), getattr(start, part)
            if mine is None or theirs is None:
                continue
            # A refiner's high-pass shapes its change, not its weights: it may be trained into one.
            theirs_config, mine_config = ({k: v for k, v in module.config.items()
                                           if k != "highpass"} for module in (theirs, mine))
            if theirs_config != mine_config:
                raise ValueError(f"{where}: its {name} ({theirs_config}) is not the one these "
                                 f"flags build ({mine_config})")
            mine.load_state_dict(theirs.state_dict())
            parts.append(name)
        return parts

    def load_state_dict(self, checkpoint: dict) -> None:
        check_resumable(self.config, checkpoint, "--resume", attrs=self.model.attrs)
        self.model.load_state_dict(checkpoint["model"])
        self.ae_optimizer.load_state_dict(checkpoint["ae_optimizer"])
        self.dis_optimizer.load_state_dict(checkpoint["dis_optimizer"])
        for part, optimizer in _EXTRAS:
            if getattr(self, part) is not None:
                try:
                    getattr(self, part).load_state_dict(checkpoint[part])
                except RuntimeError as error:  # another shape, e.g. from another version
                    raise ValueError(f"--resume: the checkpoint's {part} does not fit the one this "
                                     f"version builds ({one_line(error)}); start this stage "
                                     "again (--init-from the model it started from)") from None
                getattr(self, optimizer).load_state_dict(checkpoint[optimizer])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = checkpoint["step"]
        expected = self.stream.state(self._batches_per_step * self.step)
        if checkpoint["data"] != expected:
            warnings.warn(f"--resume: the data order differs from the checkpoint's run "
                          f"({checkpoint['data']} vs now {expected}); training goes on with the "
                          "new order", stacklevel=2)


class _Redraw(nn.Module):
    """``refiner.redraw`` as a module's forward, for DDP."""

    def __init__(self, refiner: MouthRefiner) -> None:
        super().__init__()
        self.refiner = refiner

    def forward(self, box: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        return self.refiner.redraw(box, attrs)


@contextlib.contextmanager
def _frozen(*modules: nn.Module):
    """No weight gradients for ``modules`` inside the block (their inputs still get theirs)."""
    for module in modules:
        module.requires_grad_(False)
    try:
        yield
    finally:
        for module in modules:
            module.requires_grad_(True)
