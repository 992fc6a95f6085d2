"""Rank 0's outputs of a run: ``metrics.jsonl``, TensorBoard events (when installed), the
progress bar and the sample grids."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .config import TrainConfig

_BAR_NAMES = {"recon_loss": "recon", "adv_loss": "adv", "dis_loss": "dis", "lambda": "lambda",
              "flip_acc": "flip", "samples_per_s": "img/s", "val_recon_mse": "val_mse",
              "val_dis_acc": "val_dis_acc", "val_flip_acc": "val_flip"}


class RunLog:
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
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
