"""The training loop: resume, steps, logs, checkpoints, signals and DDP (``train``).

**Checkpoints** (``run_dir/checkpoint-<step>.pt``, every ``checkpoint_every`` steps, at the end and
on SIGINT/SIGTERM, the last ``keep_checkpoints`` kept) hold only tensors and plain data: the model
config (``build(**model_config)`` rebuilds it), the state_dicts of the model, the optimizers and
the fp16 grad scaler, the step, every rank's RNG states (torch, CUDA, numpy, python ``random``) and
the data order state (``exprfast.checkpoints`` reads them). A signal lets the step in flight
finish, saves, and makes ``train`` return with ``interrupted: True``; a second signal interrupts
at once.

**Distributed.** Under ``torchrun --nproc-per-node N`` each rank trains on its share (every N-th
sample) of every batch, with DDP over gloo (CPU) or nccl (CUDA); ``batch_size`` is the global
batch. BatchNorm stays plain per rank: each rank normalises with the statistics of its own
``batch_size / N`` samples (SyncBatchNorm would add a collective per layer), and DDP broadcasts
rank 0's running statistics at every forward, so rank 0's are the ones saved. Only rank 0 writes
logs, samples and checkpoints.

**Outputs** in ``run_dir``: ``metrics.jsonl`` (one JSON object per logged step: training means over
the last ``log_every`` steps, or validation metrics), TensorBoard events when ``tensorboard`` is
installed, ``samples/step-<step>.png`` (rows: validation faces; columns: original |
reconstruction | each attribute flipped), the checkpoints and ``result.json`` (what ``train``
returns). ``samples_per_s`` counts the images of the autoencoder update (``batch_size`` per step).
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoints import checkpoint_path, list_checkpoints, load_checkpoint
from ..data import FaceDataset, open_split
from ..files import atomic_torch_save
from .config import TrainConfig
from .logs import RunLog, Window
from .stream import rng_state, seed_rngs, set_rng_state
from .trainer import Trainer


def open_datasets(config: TrainConfig) -> tuple[FaceDataset, FaceDataset]:
    """The train (flipped if ``config.flip``) and val splits."""
    common = dict(attrs=config.attrs, limit=config.limit, cache_dir=config.cache_dir,
                  name="--data-root")
    return (open_split(config.data_root, config.img_size, "train", flip=config.flip, **common),
            open_split(config.data_root, config.img_size, "val", **common))


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
    log = RunLog(Path(config.run_dir), config, trainer.step, active=rank == 0)
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
        seed_rngs(trainer.config.seed + trainer.step, rank)


def _loop(trainer: Trainer, log: RunLog, val_set: FaceDataset, world_size: int) -> dict:
    config, start = trainer.config, time.perf_counter()
    window, train_means, val, val_step, saved = Window(), {}, {}, None, None
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


def env_rank() -> int:
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
