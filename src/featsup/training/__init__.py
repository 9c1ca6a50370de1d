"""Training: the :class:`Trainer` loop and the parts it composes.

:mod:`~featsup.training.trainer` (the loop), :mod:`~featsup.training.checkpoint` (atomic
store, RNG states, :func:`load_model` for students and teachers),
:mod:`~featsup.training.distributed` (torchrun / DDP, seeds, data order),
:mod:`~featsup.training.device` (device, batch moving, AMP),
:mod:`~featsup.training.loaders` (the data loaders), :mod:`~featsup.training.schedule`
(warm-up + cosine), :mod:`~featsup.training.progress` (history, bar or log lines),
:mod:`~featsup.training.stopping` (best model, early stop, ``stop_when``),
:mod:`~featsup.training.averaging` (the weight average of ``ema_decay``) and
:mod:`~featsup.training.validation` (:func:`dice_per_head`).
"""

from __future__ import annotations

from featsup.training.averaging import WeightAverage
from featsup.training.checkpoint import load_checkpoint, load_model, save_checkpoint
from featsup.training.device import (
    channels_last_pays,
    cpu_has_bf16_units,
    keep_freed_memory,
    move_to_device,
)
from featsup.training.distributed import unwrap_model
from featsup.training.trainer import Trainer
from featsup.training.validation import dice_per_head

__all__ = [
    "Trainer",
    "WeightAverage",
    "channels_last_pays",
    "cpu_has_bf16_units",
    "dice_per_head",
    "keep_freed_memory",
    "load_checkpoint",
    "load_model",
    "move_to_device",
    "save_checkpoint",
    "unwrap_model",
]
