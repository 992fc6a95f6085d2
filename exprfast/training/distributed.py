"""torchrun process groups (gloo on CPU, nccl on CUDA) and the few collectives training needs."""
from __future__ import annotations

import contextlib
import gc
import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn

from .config import TrainConfig


def env_rank() -> int:
    return int(os.environ.get("RANK", 0))


def resolve_device(config: TrainConfig) -> torch.device:
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
def process_group(device: torch.device):
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


def any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    if world_size == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def parameter_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().numpy().tobytes())
    return digest.hexdigest()
