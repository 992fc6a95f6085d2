"""Writing files that other processes may read, or that a kill may interrupt: into a temporary
file beside the target, then renamed into place. Readers never see a partial file, and an
interrupted write leaves the previous file intact."""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

import torch

TEMP_SUFFIX = ".tmp"


def temp_path(path: str | os.PathLike) -> Path:
    """A temporary name beside ``path``, unique per process and call (so concurrent writers of
    one file never share one), hidden and ending in ``TEMP_SUFFIX``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(temporary_path)``, then rename it to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_torch_save(payload, path: str | os.PathLike) -> Path:
    """``torch.save(payload)`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))
