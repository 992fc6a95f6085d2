"""Training options: ``TrainConfig`` (every option, checked) and the ``exprfast train`` flags."""
from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields

import torch

from ..checks import check_img_size, flag, is_int, is_number
from ..data import ATTR_FILE, FACE_REGIONS
from ..models import DEFAULTS as MODEL_DEFAULTS
from ..models import PRESETS, build

PRECISIONS = ("fp32", "bf16", "fp16")
REC_LOSSES = ("mse", "l1", "msssim-l1")  # trainer.reconstruction_loss
# Options of the invocation itself, never taken from the checkpoint of a resumed run.
NOT_RESUMED = ("resume", "run_dir")
# The RGB data fixes img_channels; the other model options are training flags.
MODEL_OPTIONS = tuple(k for k in MODEL_DEFAULTS if k != "img_channels")


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
    reuse_latent: bool = False
    lat_dis_steps: int = 1
    lat_dis_reset_every: int | None = None
    rec_loss: str = "mse"
    # edit losses (0 = off: the paper's recipe); ramped like lambda_lat
    lambda_clf: float = 0.0
    clf_train_steps: int | None = None
    reader_luminance: bool = False
    lambda_patch: float = 0.0
    patch_on_reader: bool = False
    patch_region: str | None = None
    r1_gamma: float = 0.0
    # second stage: train only a mouth refiner on the frozen --init-from model (0 = off)
    mouth_refiner: int = 0
    lambda_refiner_l1: float = 100.0
    lambda_refiner_clf: float = 0.0
    refiner_highpass: float = 0.0
    refiner_coupled: tuple[str, ...] = ()
    refiner_cycle: float = 0.0
    refiner_scale: int = 1
    # run
    run_dir: str = "runs/train"
    resume: str | None = None
    init_from: str | None = None
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
    # glibc keeps the memory a step frees for the next (training/allocator.py)
    keep_freed_memory: bool = True

    def __post_init__(self) -> None:
        for name in ("data_root", "cache_dir", "run_dir", "resume", "init_from"):
            if getattr(self, name) is not None:
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.attrs, str):
            self.attrs = (self.attrs,)
        elif self.attrs is not None:
            self.attrs = tuple(self.attrs)
        self.betas = tuple(self.betas)
        if not isinstance(self.refiner_coupled, str):
            self.refiner_coupled = tuple(self.refiner_coupled)
        self._validate()

    def _validate(self) -> None:
        def require(condition: bool, name: str, what: str) -> None:
            if not condition:
                raise ValueError(f"{flag(name)} {what}, got {getattr(self, name)!r}")

        for name in ("img_size", "steps", "batch_size", "log_every", "val_every", "val_images",
                     "sample_every", "sample_images", "checkpoint_every", "keep_checkpoints"):
            require(is_int(getattr(self, name), 1), name, "must be a positive integer")
        require(self.limit is None or is_int(self.limit, 1), "limit", "must be a positive integer")
        require(is_int(self.lambda_ramp_steps, 0), "lambda_ramp_steps", "must be an integer >= 0")
        require(is_int(self.seed, 0), "seed", "must be an integer >= 0")
        require(is_int(self.lat_dis_steps, 1), "lat_dis_steps", "must be a positive integer")
        require(self.lat_dis_steps == 1 or not self.reuse_latent, "lat_dis_steps",
                "must be 1 with --reuse-latent (the discriminator learns from the autoencoder's "
                "own latent, once a step)")
        require(self.lat_dis_reset_every is None or is_int(self.lat_dis_reset_every, 1),
                "lat_dis_reset_every", "must be a positive integer")
        check_img_size(self.img_size, flag("img_size"), minimum=32)
        require(self.rec_loss in REC_LOSSES, "rec_loss", f"must be one of {', '.join(REC_LOSSES)}")
        require(self.rec_loss != "msssim-l1" or self.img_size >= 64, "rec_loss",
                "msssim-l1 needs --img-size 64 or more (five scales of MS-SSIM)")
        require(is_number(self.lr) and self.lr > 0, "lr", "must be a positive number")
        require(is_number(self.clip_grad_norm) and self.clip_grad_norm > 0, "clip_grad_norm",
                "must be a positive number")
        for name in ("lambda_lat", "lambda_clf", "lambda_patch"):
            require(is_number(getattr(self, name)) and getattr(self, name) >= 0, name,
                    "must be a number >= 0")
        require(self.clf_train_steps is None or is_int(self.clf_train_steps, 1),
                "clf_train_steps", "must be a positive integer")
        require(not self.patch_on_reader or (self.lambda_clf > 0 and self.lambda_patch > 0
                                             and self.clf_train_steps is None),
                "patch_on_reader", "needs --lambda-clf > 0, --lambda-patch > 0 and a reader "
                "that keeps training (no --clf-train-steps)")
        separate_critic = self.lambda_patch > 0 and not self.patch_on_reader
        require(self.patch_region is None or (self.patch_region in FACE_REGIONS
                                              and separate_critic),
                "patch_region", f"must be one of {', '.join(FACE_REGIONS)}, with --lambda-patch "
                "> 0 and the separate critic (no --patch-on-reader)")
        require(is_number(self.r1_gamma) and self.r1_gamma >= 0, "r1_gamma",
                "must be a number >= 0")
        require(self.r1_gamma == 0 or separate_critic, "r1_gamma",
                "needs --lambda-patch > 0 and the separate critic (no --patch-on-reader)")
        require(is_int(self.mouth_refiner, 0), "mouth_refiner",
                "must be an integer >= 0 (the refiner's width; 0: no refiner)")
        require(is_number(self.lambda_refiner_l1) and self.lambda_refiner_l1 >= 0,
                "lambda_refiner_l1", "must be a number >= 0")
        require(is_number(self.lambda_refiner_clf) and self.lambda_refiner_clf >= 0,
                "lambda_refiner_clf", "must be a number >= 0")
        require(self.lambda_refiner_clf == 0 or self.mouth_refiner > 0, "lambda_refiner_clf",
                "needs --mouth-refiner (it weighs a loss of the refiner stage)")
        require(is_number(self.refiner_highpass) and 0 <= self.refiner_highpass
                <= self.img_size / 8, "refiner_highpass",
                f"must be a number of pixels in [0, {self.img_size / 8:g}] (0: off)")
        require(self.refiner_highpass == 0 or self.mouth_refiner > 0, "refiner_highpass",
                "needs --mouth-refiner (it shapes the refiner's change)")
        require(isinstance(self.refiner_coupled, tuple)
                and all(isinstance(a, str) and a for a in self.refiner_coupled),
                "refiner_coupled", "must be attribute names")
        require(is_number(self.refiner_cycle) and 0 <= self.refiner_cycle <= 1, "refiner_cycle",
                "must be a fraction of the batch in [0, 1]")
        require(self.refiner_cycle == 0 or self.mouth_refiner > 0, "refiner_cycle",
                "needs --mouth-refiner (it chooses what the refiner is given)")
        require(is_int(self.refiner_scale, 1) and self.refiner_scale <= 2,
                "refiner_scale", "must be 1 or 2")
        require(self.refiner_scale == 1 or self.mouth_refiner > 0, "refiner_scale",
                "needs --mouth-refiner (it sets the size the refiner draws at)")
        require(self.refiner_scale == 1 or self.lambda_refiner_clf == 0, "refiner_scale",
                "must be 1 with --lambda-refiner-clf (its mouth reader reads the model's size)")
        if self.refiner_coupled:
            require(self.mouth_refiner > 0 and self.attrs is not None
                    and not set(self.refiner_coupled) & set(self.attrs)
                    and len(set(self.refiner_coupled)) == len(self.refiner_coupled),
                    "refiner_coupled", "needs --mouth-refiner and --attrs, and names other "
                    "attributes than --attrs, each once")
            require(self.lambda_refiner_clf == 0, "lambda_refiner_clf",
                    "must be 0 with --refiner-coupled (edits have no labels to give them)")
        if self.mouth_refiner:
            require(self.init_from is not None, "init_from",
                    "must name the trained model whose mouths --mouth-refiner learns to redraw")
            require(self.img_size >= 64, "img_size", "must be 64 or more with --mouth-refiner")
            for name in ("lambda_clf", "lambda_patch"):
                require(getattr(self, name) == 0, name, "must be 0 with --mouth-refiner (that "
                        "stage trains the refiner alone; the model stays as it is)")
        require(len(self.betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in self.betas),
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
        model.add_argument(flag(name), type=type(MODEL_DEFAULTS[name]), default=None,
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
    optim.add_argument("--rec-loss", choices=REC_LOSSES, default=d.rec_loss,
                       help="the reconstruction loss: mse (Fader's; default), l1, or msssim-l1 "
                            "(0.84 (1 - MS-SSIM) + 0.16 L1, Zhao et al. 2017: keeps edges that "
                            "mse blurs; measured in docs/SMILES.md)")
    optim.add_argument("--reuse-latent", action=argparse.BooleanOptionalAction,
                       default=d.reuse_latent,
                       help="train the latent discriminator on the autoencoder update's own "
                            "latent instead of encoding a fresh batch: one encoder forward less "
                            "per step (a change of Fader's recipe; benchmarks/reuse_latent.md)")
    optim.add_argument("--lat-dis-steps", type=int, default=d.lat_dis_steps,
                       help="latent-discriminator updates per step, each on a fresh batch "
                            "(Fader's n_lat_dis; default %(default)s), at one encoder forward "
                            "each. More take a little more of the attribute out of the latent "
                            "(scripts/latent_probe.py; docs/SMILES.md, 'What the latent still "
                            "carries')")
    optim.add_argument("--lat-dis-reset-every", type=int, default=d.lat_dis_reset_every,
                       metavar="K",
                       help="a fresh latent discriminator (new weights, new Adam) every K steps, "
                            "so the encoder must hide the attributes from one it has not learned "
                            "to fool (default: never; measured in docs/SMILES.md, 'What the "
                            "latent still carries')")

    edits = parser.add_argument_group(
        "edit losses (default off: the paper's recipe; both ramp like --lambda-lat)")
    for name, kind, text in (
            ("lambda_clf", float, "weight of the attribute-classification loss on "
                                  "decode(z, flipped) (AttGAN); its classifier, an "
                                  "AttributeReader, trains on the real faces and goes into "
                                  "exported model files (e.g. 0.05)"),
            ("clf_train_steps", int, "train the reader only during the first N steps, then "
                                     "freeze it (Fader's pretrained classifier); default: all "
                                     "along (AttGAN)"),
            ("lambda_patch", float, "weight of a PatchGAN critic's least-squares loss on "
                                    "decode(z, flipped), for sharper edits (e.g. 0.01)")):
        edits.add_argument(flag(name), type=kind, default=getattr(d, name), help=text)
    edits.add_argument("--reader-luminance", action=argparse.BooleanOptionalAction,
                       default=d.reader_luminance,
                       help="the reader sees only the faces' luminance, so the decoder cannot "
                            "please it by painting colour (docs/SMILES.md, 'The edit losses')")
    edits.add_argument("--patch-on-reader", action=argparse.BooleanOptionalAction,
                       default=d.patch_on_reader,
                       help="the patch critic is a second head on the reader's trunk, trained on "
                            "decoded faces as fakes (AttGAN's shared discriminator), instead of "
                            "a separate network")
    edits.add_argument("--patch-region", choices=tuple(FACE_REGIONS), default=d.patch_region,
                       help="the separate patch critic sees only this region of the aligned "
                            "faces, real and edited (data.FACE_REGIONS), so its loss works on "
                            "that region and leaves the rest of the face alone (default: the "
                            "whole face)")
    edits.add_argument("--r1-gamma", type=float, default=d.r1_gamma, metavar="G",
                       help="R1 penalty on the separate patch critic: G/2 times its squared "
                            "gradient at the real faces, added to its loss (Mescheder et al. "
                            "2018), which smooths what it rewards (default 0: off; measured "
                            "in docs/SMILES.md)")

    refine = parser.add_argument_group(
        "mouth refiner (a second stage, after the model is trained)")
    refine.add_argument("--mouth-refiner", type=int, default=d.mouth_refiner, metavar="WIDTH",
                        help="train only a mouth refiner of this width (e.g. 24) on the frozen "
                             "--init-from model: a U-Net that redraws the decoded mouth sharper, "
                             "with L1 to the real face and a conditional patch critic "
                             "(pix2pix); exported model files carry it and edits use it "
                             "(default 0: off; measured in docs/SMILES.md)")
    refine.add_argument("--lambda-refiner-l1", type=float, default=d.lambda_refiner_l1,
                        help="weight of the refiner's L1 loss against the critic's hinge loss "
                             "(default %(default)s, pix2pix's)")
    refine.add_argument("--lambda-refiner-clf", type=float, default=d.lambda_refiner_clf,
                        help="also refine, every step, the batch's decodings with each "
                             "attribute flipped, judged by the critic and, with this weight, "
                             "by a mouth reader trained alongside on the real boxes: edits "
                             "the refiner must not undo (default 0: reconstructions only; "
                             "measured in docs/SMILES.md: coloured grids over smiles taken off)")
    refine.add_argument("--refiner-highpass", type=float, default=d.refiner_highpass,
                        metavar="SIGMA",
                        help="keep only the fine part of the refiner's change: its Gaussian "
                             "blur of SIGMA pixels is taken away, so the decoded mouth's coarse "
                             "shape, which carries the edit, stays the decoder's (default 0: "
                             "off; measured in docs/SMILES.md: trained with it, the refiner "
                             "weakened the edits; set at export on one trained without it, it "
                             "kept them)")
    refine.add_argument("--refiner-coupled", nargs="+", default=d.refiner_coupled,
                        metavar="ATTR",
                        help="more attributes the refiner alone is conditioned on: the data's "
                             "labels in training; in use each takes the value of the model's "
                             "first attribute (e.g. Mouth_Slightly_Open with --attrs Smiling: "
                             "a smile put on opens the mouth, one taken off closes it; "
                             "default: none; measured in docs/SMILES.md)")
    refine.add_argument("--refiner-cycle", type=float, default=d.refiner_cycle,
                        metavar="FRACTION",
                        help="give this fraction of each batch, instead of its reconstruction, "
                             "its round trip through the other values: the face decoded with "
                             "each attribute flipped, encoded again and decoded with its own "
                             "values, an edit whose real face is known (default 0: "
                             "reconstructions only; measured in docs/SMILES.md)")
    refine.add_argument("--refiner-scale", type=int, choices=(1, 2), default=d.refiner_scale,
                        help="draw the mouth at this many times --img-size, learning from the "
                             "real faces at that size (the data must hold them: 2 at 128 px "
                             "takes the 256 px faces, the others are skipped; the model is "
                             "given them resized to its size); edits come out at that size "
                             "(default 1; measured in docs/SMILES.md)")

    run = parser.add_argument_group("run")
    run.add_argument("-o", "--run-dir", default=d.run_dir,
                     help="folder of the logs, samples and checkpoints (default %(default)s)")
    run.add_argument("--resume", default=d.resume,
                     help="checkpoint to resume from, or 'auto' for the latest in --run-dir "
                          "(a fresh start if there is none); the options not given are the "
                          "interrupted run's")
    run.add_argument("--init-from", default=d.init_from, metavar="MODEL",
                     help="start a new run (step 0, fresh optimizers) from the weights of a "
                          "model file or training checkpoint with the same model flags: its "
                          "encoder, decoder, and its latent discriminator and reader where it "
                          "has them (a fine-tune, e.g. of exprfast/pretrained/smiling.pt); "
                          "ignored when --resume finds a checkpoint")
    for name, what in (("log_every", "log training metrics"),
                       ("val_every", "measure validation metrics"),
                       ("sample_every", "write a sample grid"),
                       ("checkpoint_every", "write a checkpoint")):
        run.add_argument(flag(name), type=int, default=getattr(d, name),
                         help=f"{what} every N steps (default %(default)s)")
    run.add_argument("--val-images", type=int, default=d.val_images,
                     help="validation images measured (default %(default)s)")
    run.add_argument("--sample-images", type=int, default=d.sample_images,
                     help="faces (rows) in a sample grid (default %(default)s)")
    run.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                     help="newest checkpoints kept (default %(default)s)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=d.progress,
                     help="show a progress bar (when stderr is not a terminal, e.g. a log "
                          "file: a plain line every --log-every steps instead)")

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
    speed.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction,
                       default=d.keep_freed_memory,
                       help="let glibc's malloc keep the memory each step frees for the next "
                            "instead of mapping and faulting it in again (default on; the "
                            "training process's allocator only; benchmarks/allocator.md)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of parsed ``add_arguments`` flags; ValueError names a bad flag."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
              if f.name != "model_overrides"}
    overrides = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
    return TrainConfig(**values, model_overrides=overrides)


def explicit_options(argv: Sequence[str]) -> frozenset[str]:
    """The options given on the command line ``argv`` (``add_arguments`` flags): their dest
    names, i.e. ``TrainConfig`` field names and model option names (``init_fm``, ...). Parsed a
    second time with every default suppressed, so an option given with its default value
    counts as given."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    known, _ = parser.parse_known_args(list(argv))
    return frozenset(vars(known))


def resumed_config(config: TrainConfig, stored: dict,
                   explicit: Collection[str]) -> tuple[TrainConfig, list[str]]:
    """``config`` for resuming a run whose checkpoint holds the ``train_config`` ``stored``:
    every option not named in ``explicit`` (see ``explicit_options``) takes the run's value,
    except ``NOT_RESUMED``. Returns that config and the explicit options that differ from the
    run's, as flags (``"--steps 200 (the run had 100)"``)."""
    values = {f.name: getattr(config, f.name) for f in fields(TrainConfig)}
    overridden = []
    for name in values:
        if name in NOT_RESUMED or name not in stored:
            continue
        old = stored[name]
        if name == "model_overrides":
            merged = dict(old or {})
            for option in MODEL_OPTIONS:
                if option in explicit and option in config.model_overrides:
                    new = config.model_overrides[option]
                    if merged.get(option, MODEL_DEFAULTS[option]) != new:
                        overridden.append(_override(option, new,
                                                    merged.get(option, MODEL_DEFAULTS[option])))
                    merged[option] = new
            values[name] = merged
        elif name in explicit:
            if _plain(old) != _plain(values[name]):
                overridden.append(_override(name, values[name], old))
        else:
            values[name] = old
    return TrainConfig(**values), overridden


def _plain(value):
    return tuple(value) if isinstance(value, list) else value


def _override(name: str, new, old) -> str:
    """E.g. ``--steps 200 (the run had 100)``, ``--no-flip (the run had --flip)``."""
    if isinstance(new, bool):
        return f"{_bool_flag(name, new)} (the run had {_bool_flag(name, old)})"
    return f"{flag(name)} {_value(new)} (the run had {_value(old)})"


def _bool_flag(name: str, value) -> str:
    return flag(name) if value else "--no-" + name.replace("_", "-")


def _value(value) -> str:
    if value is None:
        return "the default"
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def model_mismatches(config: TrainConfig, stored: dict, whose: str,
                     attrs: Sequence[str] | None = None) -> list[str]:
    """The flags of ``config`` that build another model than the config ``stored``
    (``FaderModel.config``), e.g. ``--img-size 64 (the run's is 32)`` with ``whose`` "the
    run's"; ``attrs`` as in ``check_resumable``."""
    attrs = attrs or config.attrs or stored.get("attrs") or ("attr",)
    with torch.device("meta"):
        built = build(config.preset, config.img_size, attrs, **config.model_overrides).config
    return [f"{flag(k)} {_value(built[k])} ({whose} is {_value(v)})"
            for k, v in stored.items() if k in built and _value(built[k]) != _value(v)]


def check_resumable(config: TrainConfig, checkpoint: dict, where: str,
                    attrs: Sequence[str] | None = None) -> None:
    """ValueError (starting with ``where``) unless ``config`` builds the training checkpoint's
    model and edit-loss parts; ``attrs``: the data's attribute names, once it is open (before,
    ``config.attrs`` or the run's)."""
    stored = checkpoint.get("model_config")
    mismatched = model_mismatches(config, stored, "the run's", attrs) \
        if isinstance(stored, dict) else []
    if mismatched:
        raise ValueError(f"{where}: these flags build another model than the "
                         f"checkpoint's: {', '.join(mismatched)}; drop or fix them, or start "
                         "a new run in another --run-dir")
    reader_config = checkpoint.get("reader_config")
    if "reader" in checkpoint and isinstance(reader_config, dict):
        for key, option in (("luminance", "reader_luminance"), ("critic", "patch_on_reader")):
            stored_value = bool(reader_config.get(key, False))
            if stored_value != getattr(config, option):
                raise ValueError(f"{where}: the run's reader was trained "
                                 f"{'with' if stored_value else 'without'} {flag(option)}; "
                                 "resume with the run's setting")
    separate_patch = config.lambda_patch > 0 and not config.patch_on_reader
    carries_reader = config.lambda_clf > 0 or config.mouth_refiner > 0
    for part, option, wanted in (("refiner", "mouth_refiner", config.mouth_refiner > 0),
                                 ("mouth_reader", "lambda_refiner_clf",
                                  config.lambda_refiner_clf > 0),
                                 ("reader", "lambda_clf", carries_reader),
                                 ("patch", "lambda_patch", separate_patch)):
        if wanted != (part in checkpoint):
            raise ValueError(f"{where}: the run was trained "
                             f"{'with' if part in checkpoint else 'without'} {flag(option)}; "
                             f"resume with the run's {flag(option)}")
    refiner_config = checkpoint.get("refiner_config")
    if "refiner" in checkpoint and isinstance(refiner_config, dict):
        for key, option, absent in (("width", "mouth_refiner", 0),
                                    ("highpass", "refiner_highpass", 0),
                                    ("coupled", "refiner_coupled", ()),
                                    ("scale", "refiner_scale", 1)):
            stored_value = refiner_config.get(key, absent)
            if isinstance(stored_value, list):
                stored_value = tuple(stored_value)
            if stored_value != getattr(config, option):
                raise ValueError(f"{where}: the run's refiner has {key} {stored_value}, not "
                                 f"{flag(option)} {getattr(config, option)}; resume with the "
                                 "run's")
