"""Rank 0's outputs of a run: ``metrics.jsonl``, TensorBoard events (when installed), the
progress bar (on a terminal; elsewhere, e.g. a log file, one plain line per logged record) and
the sample grids."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ..files import WriteError, atomic_write, write_failure
from .config import TrainConfig

_BAR_NAMES = {"recon_loss": "recon", "adv_loss": "adv", "dis_loss": "dis", "lambda": "lambda",
              "flip_acc": "flip", "samples_per_s": "img/s", "val_recon_mse": "val_mse",
              "val_dis_acc": "val_dis_acc", "val_flip_acc": "val_flip"}


class RunLog:
    """Rank 0's outputs: metrics.jsonl, TensorBoard events (when installed), the progress bar
    (when ``progress``: a tqdm bar if stderr is a terminal, else a plain line on stderr per
    logged record). Inactive on the other ranks. ``records``: the records kept from an earlier
    run (a resumed one), up to ``start_step``."""

    def __init__(self, run_dir: Path, config: TrainConfig, start_step: int, active: bool):
        self.active = active
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.total_steps = config.steps
        progress = active and config.progress
        terminal = _is_terminal(sys.stderr)
        self.plain = progress and not terminal  # a refreshing bar would flood a log file
        self.bar = tqdm(total=config.steps, initial=start_step, unit="step",
                        desc="exprfast: training", disable=not (progress and terminal))
        self.writer, self.latest, self.records = None, {}, []
        if not active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.records = self._drop_records_after(start_step)  # a resumed run rewrites what followed
        self.writer = _tensorboard_writer(run_dir)

    def last_record(self, step: int, key: str) -> dict | None:
        """The last kept record of ``step`` that has ``key`` (e.g. ``val_recon_mse``)."""
        found = [r for r in self.records if r["step"] == step and key in r]
        return found[-1] if found else None

    def _drop_records_after(self, step: int) -> list[dict]:
        """Keep the records up to ``step``; a torn last line (a kill during an append) is
        dropped with a warning, a malformed line elsewhere is a ValueError naming it."""
        path = self.metrics_path
        if not path.is_file():
            return []
        # A fresh run (step 0) replaces the whole log, whatever it holds.
        lines = path.read_text(errors="replace").splitlines() if step > 0 else []
        last = max((n for n, line in enumerate(lines) if line.strip()), default=-1)
        kept = []
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError('not an object with an integer "step"')
            except ValueError as error:
                if n == last:
                    warnings.warn(f"{path}: dropped its torn last line (the run was killed while "
                                  f"writing it): {line[:60]!r}", stacklevel=3)
                    continue
                raise ValueError(f"{path}, line {n + 1}: not a metrics record ({error}); delete "
                                 "or fix that line, then resume again") from None
            if record["step"] <= step:
                kept.append(record)
        atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n"
                                                              for r in kept)))
        return kept

    def write(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        try:
            with self.metrics_path.open("a") as file:
                file.write(json.dumps({"step": step, **metrics}) + "\n")
        except OSError as error:  # e.g. the disk is full: one line naming the file
            raise WriteError(self.metrics_path, write_failure(error, self.run_dir),
                             error.errno) from error
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, step)
        self.latest.update((_BAR_NAMES[k], f"{v:.3g}") for k, v in metrics.items()
                           if k in _BAR_NAMES)
        self.bar.set_postfix(self.latest, refresh=False)
        if self.plain:
            shown = ", ".join(f"{_BAR_NAMES[k]} {v:.4g}" for k, v in metrics.items()
                              if k in _BAR_NAMES)
            print(f"exprfast: step {step}/{self.total_steps}: {shown}", file=sys.stderr,
                  flush=True)

    def save_image(self, grid: torch.Tensor, step: int) -> None:
        if self.active:
            save_image_grid(grid, self.run_dir / "samples" / f"step-{step:07d}.png")

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


class Window:
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
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
