"""Training: the :class:`Trainer` loop, checkpoints, distributed runs and validation.

:mod:`~featsup.training.trainer` (the loop), :mod:`~featsup.training.checkpoint` (atomic
store, :func:`load_model`), :mod:`~featsup.training.distributed` (torchrun / DDP, devices,
AMP), :mod:`~featsup.training.progress` (history, bar or log lines) and
:mod:`~featsup.training.validation` (:func:`dice_per_head`).
"""

from __future__ import annotations

from featsup.training._setup import move_to_device
from featsup.training.checkpoint import load_checkpoint, load_model, save_checkpoint, unwrap_model
from featsup.training.distributed import cpu_has_bf16_units
from featsup.training.trainer import Trainer
from featsup.training.validation import dice_per_head

__all__ = [
    "Trainer",
    "cpu_has_bf16_units",
    "dice_per_head",
    "load_checkpoint",
    "load_model",
    "move_to_device",
    "save_checkpoint",
    "unwrap_model",
]
