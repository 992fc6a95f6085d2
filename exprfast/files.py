"""Saving files that other processes may read, or that a kill may interrupt."""
import os
from pathlib import Path

import torch


def atomic_torch_save(payload, path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then renamed into place: readers never
    see a partial file, and an interrupted save leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
