"""Training: losses, optimizers, data files, checkpoints and the fit/evaluate/predict loop.

Data layout in files: sequences are stored batch-first, ``(N, T, F)``, vectors ``(N, F)``, with
optional integer ``lengths`` ``(N,)`` (or ``lengths:<input>`` per sequence input); batches are
transposed to the model's time-major ``(T, B, F)``. Targets are arrays named after the model's
outputs (or mapped with ``targets={"y": "labels"}``).
"""

from __future__ import annotations

from rnnlang.train.checkpoint import load_checkpoint, save_checkpoint
from rnnlang.train.data import Dataset, load_data
from rnnlang.train.loop import (
                                FitResult,
                                TrainConfig,
                                config_from_section,
                                evaluate,
                                fit,
                                predict,
                                spec_section,
)
from rnnlang.train.losses import LossSpec, parse_loss
from rnnlang.train.optim import make_optimizer, make_schedule

__all__ = ["Dataset", "FitResult", "config_from_section", "spec_section", "LossSpec", "TrainConfig", "evaluate", "fit",
           "load_checkpoint", "load_data", "make_optimizer", "make_schedule", "parse_loss",
           "predict", "save_checkpoint"]
