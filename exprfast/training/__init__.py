"""Training: options (``config``), the step and its losses (``trainer``), reproducible batches
and RNG states (``stream``), the loop with logs, checkpoints, signals and DDP (``run``)."""
from .config import PRECISIONS, TrainConfig, add_arguments, config_from_args
from .run import open_datasets, train
from .trainer import Trainer

__all__ = ["PRECISIONS", "TrainConfig", "Trainer", "add_arguments", "config_from_args",
           "open_datasets", "train"]
