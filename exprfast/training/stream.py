"""What makes a run reproducible: the batch stream and the RNG states.

**Data order** is a pure function of (seed, batch number): batch ``b`` is a slice of the seeded
permutation of epoch ``b // E`` (``E = len(train) // batch_size``; each epoch drops its remainder)
and its horizontal flips come from a generator seeded by (seed, b, rank). Resuming at step ``s``
therefore replays exactly the batches a run that never stopped would have seen, and a 2k-step run
and a 1k + 1k resumed run end with identical weights on the CPU.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from ..data import FaceDataset

_ORDER, _FLIP = 0, 1  # stream tags of the seeded generators


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


def seed_rngs(seed: int, rank: int) -> None:
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
