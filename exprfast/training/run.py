"""The training loop: resume, steps, logs, checkpoints, signals and DDP (``train``).

**Checkpoints** (``run_dir/checkpoint-<step>.pt``, every ``checkpoint_every`` steps, at the end and
on SIGINT/SIGTERM, the last ``keep_checkpoints`` kept) hold only tensors and plain data: the model
config (``build(**model_config)`` rebuilds it), the state_dicts of the model, the optimizers and
the fp16 grad scaler, the step, every rank's RNG states (torch, CUDA, numpy, python ``random``) and
the data order state (``exprfast.checkpoints`` reads them). Their temporary files, left by a
write killed mid-way, are removed when a run starts. A checkpoint that cannot be written (disk
full, read-only folder) raises ``WriteError`` naming it and the cause; the run dir is checked
for writing before training starts, and nothing saved before is ever lost.

**Resume** (``resume``: a checkpoint, or "auto": the latest in ``run_dir``) continues exactly
where the checkpoint left off. ``train(config, explicit)``: every option not in ``explicit``
(the ones given on the command line) is the interrupted run's, from the checkpoint's
``train_config``; the model options must match its model, checked before any data is read.

**Fine-tuning** (``init_from``: a model file or training checkpoint) starts a new run at step
0, with fresh optimizers and the data order of step 0, from that file's weights
(``Trainer.start_from``); the model options must build its model, checked before any data is
read. A resumed run ignores it: its checkpoint holds everything.

**Signals** (SIGINT, SIGTERM). Before training starts (checkpoint, data, model), one raises
``Interrupted`` ("interrupted before training started"). In the loop, the first one lets the
step in flight finish, saves, and makes ``train`` return with ``interrupted: True``; a second
one raises ``Interrupted`` at once, or, while a checkpoint is being saved, right after the
save completes.

**Distributed.** Under ``torchrun --nproc-per-node N`` each rank trains on its share (every N-th
sample) of every batch, with DDP over gloo (CPU) or nccl (CUDA); ``batch_size`` is the global
batch. BatchNorm stays plain per rank: each rank normalises with the statistics of its own
``batch_size / N`` samples (SyncBatchNorm would add a collective per layer), and DDP broadcasts
rank 0's running statistics at every forward, so rank 0's are the ones saved. Only rank 0 writes
logs, samples and checkpoints.

**Outputs** in ``run_dir``: ``metrics.jsonl`` (one JSON object per logged step: training means over
the last ``log_every`` steps, or validation metrics), TensorBoard events when ``tensorboard`` is
installed, ``samples/step-<step>.png`` (rows: validation faces; columns: original |
reconstruction | each attribute flipped), the checkpoints, ``result.json`` (what ``train``
returns) and ``bad_images.txt`` (the listed images that are missing or undecodable, when
any). ``samples_per_s`` counts the images of the autoencoder update (``batch_size`` per step).
"""
from __future__ import annotations

import json
import re
import sys
import time
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

import torch

from ..checkpoints import (ModelFile, checkpoint_path, holds_discriminator, list_checkpoints,
                           load_checkpoint, load_model)
from ..data import FaceDataset, open_split
from ..files import atomic_torch_save, atomic_write, check_writable, temp_files
from .allocator import keep_freed_memory
from .config import TrainConfig, check_resumable, model_mismatches, resumed_config
from .distributed import any_rank, env_rank, gather, parameter_digest, process_group, resolve_device
from .logs import RunLog, Window
from .signals import Interrupted, Signals
from .stream import rng_state, seed_rngs, set_rng_state
from .trainer import Trainer

BAD_IMAGES = "bad_images.txt"
# Files of a run dir written atomically, whose temporary files a killed write leaves behind.
_ATOMIC_FILES = re.compile(r"checkpoint-\d+\.pt|metrics\.jsonl|result\.json|bad_images\.txt")
_SHOWN_BAD_IMAGES = 3  # names in the warning; bad_images.txt lists them all


def open_datasets(config: TrainConfig, warn: bool = True) -> tuple[FaceDataset, FaceDataset]:
    """The train (flipped if ``config.flip``) and val splits; ``warn``: about missing and
    undecodable images (both splits' ``skipped`` list them either way)."""
    attrs = config.attrs and config.attrs + config.refiner_coupled  # the refiner's labels last
    common = dict(attrs=attrs, limit=config.limit, cache_dir=config.cache_dir,
                  name="--data-root", warn=warn)
    size = config.img_size * config.refiner_scale  # a finer refiner learns from finer faces
    return (open_split(config.data_root, size, "train", flip=config.flip, **common),
            open_split(config.data_root, size, "val", **common))


def train(config: TrainConfig, explicit: Collection[str] | None = None) -> dict:
    """Train a model as ``config`` says (see the module docstring); returns the final metrics:
    ``step``, the last logged training means, ``val_recon_mse``, ``val_dis_acc``,
    ``interrupted``, ``checkpoint``, ``run_dir``, ``seconds``, ``allocator`` (what
    ``keep_freed_memory`` did) (and ``ranks_agree`` under DDP: whether every rank ended with the
    same parameters). The same dict on every rank.

    ``explicit``: when resuming, the option names (``config.explicit_options``) that override
    the interrupted run's settings; every other option is the run's. None: ``config`` as it is.
    Raises ValueError / FileNotFoundError for bad options or data, ``WriteError`` when the run
    dir or a checkpoint cannot be written, ``Interrupted`` (see the module docstring)."""
    rank = env_rank()
    with Signals() as signals:
        resume, checkpoint = _resume_path(config), None
        if resume is not None:
            checkpoint = load_checkpoint(resume)
            overridden = []
            if explicit is not None:
                config, overridden = _resumed_config(config, checkpoint, explicit)
            check_resumable(config, checkpoint, f"--resume {resume}")  # before any image cache is built
            if rank == 0:
                if overridden:
                    print(f"resume: flags given override the run's: {', '.join(overridden)}",
                          file=sys.stderr)
                print(f"resumed from {resume} at step {checkpoint['step']}", file=sys.stderr)
        start = None
        if checkpoint is None and config.init_from is not None:
            start = _start_weights(config)  # checked before any image cache is built
        _prepare_run_dir(config, rank)
        device = resolve_device(config)
        train_set, val_set = open_datasets(config, warn=False)
        if rank == 0:
            _report_bad_images(Path(config.run_dir), train_set, val_set)
        loaded = [checkpoint]  # emptied once restored, so that its tensors are freed
        del checkpoint
        with process_group(device) as (rank, world_size):
            return _train_in_group(config, train_set, val_set, device, rank, world_size,
                                   resume, loaded, start, signals)


def _resumed_config(config: TrainConfig, checkpoint: dict,
                    explicit: Collection[str]) -> tuple[TrainConfig, list[str]]:
    """``resumed_config`` with the checkpoint's ``train_config`` (if it has one)."""
    stored = checkpoint.get("train_config")
    if not isinstance(stored, dict):
        return config, []
    try:
        return resumed_config(config, stored, explicit)
    except ValueError as error:
        raise ValueError(f"--resume: the run's options with the flags given: {error}") from None


def _start_weights(config: TrainConfig) -> tuple[ModelFile, bool]:
    """``--init-from``'s model file, and whether it holds a trained latent discriminator;
    ValueError unless these flags build its model."""
    where = f"--init-from {config.init_from}"
    try:
        start = load_model(config.init_from)
        discriminator = holds_discriminator(config.init_from)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
    mismatched = model_mismatches(config, dict(start.model.config), "the file's")
    if mismatched:
        raise ValueError(f"{where}: these flags build another model than the file's: "
                         f"{', '.join(mismatched)}; drop or fix them")
    return start, discriminator


def _prepare_run_dir(config: TrainConfig, rank: int) -> None:
    """Check that the run dir can be written (every rank: each may fail alone), then (rank 0)
    remove the temporary files of writes killed mid-way."""
    run_dir = check_writable(config.run_dir, "--run-dir")
    if rank != 0:
        return
    # Every such file goes, whatever process wrote it: a run dir belongs to one run, whose
    # rank 0 alone writes these files and has not started to. Whether the writer's pid is alive
    # would prove nothing anyway: pids are reused, and differ between the machines and
    # containers that may share the folder.
    for stale in temp_files(run_dir, _ATOMIC_FILES):
        stale.unlink(missing_ok=True)


def _report_bad_images(run_dir: Path, *datasets: FaceDataset) -> None:
    """One warning for the missing and undecodable images of all ``datasets`` (the splits
    share one list), every one of them in ``run_dir/bad_images.txt``."""
    skipped = {}
    for dataset in datasets:
        skipped.update(dataset.skipped)
    path = run_dir / BAD_IMAGES
    if not skipped:
        path.unlink(missing_ok=True)  # from an earlier run
        return
    lines = "".join(f"{name}\t{why}\n" for name, why in sorted(skipped.items()))
    atomic_write(path, lambda tmp: tmp.write_text(lines))
    shown = ", ".join(sorted(skipped)[:_SHOWN_BAD_IMAGES])
    more = ", ..." if len(skipped) > _SHOWN_BAD_IMAGES else ""
    warnings.warn(f"{len(skipped)} listed images are missing or could not be decoded and were "
                  f"skipped ({shown}{more}): all of them, with the reasons, in {path}",
                  stacklevel=3)


def _train_in_group(config, train_set, val_set, device, rank, world_size, resume, loaded,
                    start, signals) -> dict:
    """The body of ``train`` inside the process group. A function of its own so that the trainer
    (whose DDP reducer holds the group) is freed before the group is destroyed."""
    allocator = (keep_freed_memory() if config.keep_freed_memory
                 else "allocator left as it is (--no-keep-freed-memory)")
    trainer = Trainer(config, train_set, device, rank, world_size)
    resumed, checkpoint = None, loaded.pop()
    if checkpoint is not None:
        _restore(trainer, checkpoint, rank, world_size, device)
        if Path(resume).resolve().parent == Path(config.run_dir).resolve():
            resumed = _Saved(trainer.step, Path(resume))  # the state saved at the start step
    elif start is not None:
        parts = trainer.start_from(*start, where=f"--init-from {config.init_from}")
        if rank == 0:
            print(f"started from {config.init_from}: {', '.join(parts)}", file=sys.stderr)
    if checkpoint is None and rank == 0 and list_checkpoints(config.run_dir):
        warnings.warn(f"--run-dir {config.run_dir} holds checkpoints of an earlier run; this "
                      "fresh run will replace them (--resume auto continues it)", stacklevel=2)
    del checkpoint
    log = RunLog(Path(config.run_dir), config, trainer.step, active=rank == 0)
    try:
        result = _loop(trainer, log, val_set, world_size, signals, resumed)
    finally:
        log.close()
    result["allocator"] = allocator
    if world_size > 1:
        result["ranks_agree"] = len(set(gather(parameter_digest(trainer.model),
                                                world_size))) == 1
        result = gather(result, world_size)[0]  # rank 0's, which has the validation
    if rank == 0:
        text = json.dumps(result, indent=2) + "\n"
        atomic_write(Path(config.run_dir) / "result.json", lambda tmp: tmp.write_text(text))
    return result


def _restore(trainer: Trainer, checkpoint: dict, rank: int, world_size: int,
             device: torch.device) -> None:
    trainer.load_state_dict(checkpoint)
    states = checkpoint["rng"]
    if len(states) == world_size:
        set_rng_state(states[rank], device)
    else:  # another process count: fresh, still deterministic, streams
        seed_rngs(trainer.config.seed + trainer.step, rank)


def _loop(trainer: Trainer, log: RunLog, val_set: FaceDataset, world_size: int,
          signals: Signals, resumed: _Saved | None) -> dict:
    config, start = trainer.config, time.perf_counter()
    window, train_means, val, val_step, saved = Window(), {}, {}, None, resumed
    if resumed is not None:  # what the log holds of the start step (all, for a finished run)
        means = [r for r in log.records if "recon_loss" in r]
        train_means = {k: v for k, v in means[-1].items() if k != "step"} if means else {}
        kept = log.last_record(trainer.step, "val_recon_mse")
        if kept is not None:
            val, val_step = {k: v for k, v in kept.items() if k != "step"}, trainer.step
    stop = False
    signals.start_training()
    while trainer.step < config.steps and not stop:
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
        stop = any_rank(signals.signal is not None, world_size, trainer.device)
        if stop or step % config.checkpoint_every == 0:
            saved = _save(trainer, world_size, log.active, signals)
    if saved is None or saved.step != trainer.step:  # the final state
        saved = _save(trainer, world_size, log.active, signals)
    signals.saved = saved  # from here a signal stops at once: nothing unsaved is lost
    if window.steps:
        train_means = window.means(config.batch_size)
    if log.active and val_step != trainer.step:
        val = trainer.validate(val_set, config.val_images)
        log.write(trainer.step, val)
    return {"step": trainer.step, **train_means, **val, "interrupted": stop,
            "checkpoint": str(saved.path), "run_dir": config.run_dir,
            "seconds": round(time.perf_counter() - start, 2)}


class _Saved(NamedTuple):
    step: int
    path: Path


def _save(trainer: Trainer, world_size: int, write: bool, signals: Signals) -> _Saved:
    """``_checkpoint`` with signals deferred until it is written; then a second signal that
    came meanwhile raises ``Interrupted``."""
    with signals.deferred():
        saved = _checkpoint(trainer, world_size, write)
    if signals.pending is not None:
        raise Interrupted(signals.pending, f"interrupted again at step {saved.step}, after "
                          f"saving {saved.path}; resume with --resume auto")
    return saved


def _checkpoint(trainer: Trainer, world_size: int, write: bool) -> _Saved:
    """Save (rank 0) a checkpoint with every rank's RNG states; drop the oldest beyond
    ``keep_checkpoints``. Collective under DDP."""
    states = gather(rng_state(trainer.device), world_size)
    path = checkpoint_path(trainer.config.run_dir, trainer.step)
    if write:
        atomic_torch_save({**trainer.state_dict(), "rng": states}, path)
        for old in list_checkpoints(trainer.config.run_dir)[:-trainer.config.keep_checkpoints]:
            old.unlink()
    return _Saved(trainer.step, path)


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
