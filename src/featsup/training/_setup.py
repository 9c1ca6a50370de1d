"""Argument and step-output checks of :class:`featsup.training.Trainer`, and batch moving."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from featsup._checks import check_choice, check_positive, check_type


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts, lists and tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [move_to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def check_count(name: str, value: int | None, *, low: int = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value}")


def check_step_output(out: Any, *, training: bool) -> tuple[torch.Tensor, Mapping[str, Any]]:
    if not (
        isinstance(out, tuple)
        and len(out) == 2
        and isinstance(out[0], torch.Tensor)
        and isinstance(out[1], Mapping)
    ):
        raise TypeError(
            f"step_fn: expected a tuple (loss tensor, dict of values to log), got "
            f"{type(out).__name__}; return (loss, {{}})"
        )
    loss, logs = out
    if loss.numel() != 1:
        raise ValueError(
            f"step_fn: expected a scalar loss, got shape {tuple(loss.shape)}; "
            "reduce it with .mean()"
        )
    if training and not loss.requires_grad:
        raise ValueError(
            "step_fn: expected a loss that requires grad, got one without a graph; "
            "compute it from the model output, outside torch.no_grad()"
        )
    for key, value in logs.items():
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise ValueError(
                f"step_fn: expected scalar values to log, got shape {tuple(value.shape)} "
                f"for {key!r}; log value.mean()"
            )
        if not isinstance(value, (torch.Tensor, int, float)):
            raise TypeError(
                f"step_fn: expected float or tensor values to log, got "
                f"{type(value).__name__} for {key!r}"
            )
    return loss, logs


def check_options(o: dict[str, Any]) -> None:
    """Validate the Trainer's arguments (``o`` is its ``locals()``)."""
    check_type("model", o["model"], nn.Module)
    for name in ("step_fn", "val_fn"):
        if o[name] is not None and not callable(o[name]):
            raise TypeError(f"{name}: expected a callable, got {type(o[name]).__name__}")
    data = o["train_data"]
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(
            f"train_data: expected a map-style Dataset (__len__, __getitem__), got "
            f"{type(data).__name__}; wrap an iterable in a list"
        )
    for name in ("batch_size", "log_every", "max_steps", "epochs", "val_every",
                 "checkpoint_every", "val_batch_size", "early_stopping_patience"):  # fmt: skip
        check_count(name, o[name])
    for name in ("warmup_steps", "num_workers", "seed"):
        check_count(name, o[name], low=0)
    check_positive("lr", o["lr"])
    check_positive("weight_decay", o["weight_decay"], strict=False)
    check_positive("min_delta", o["min_delta"], strict=False)
    if o["grad_clip"] is not None:
        check_positive("grad_clip", o["grad_clip"])
    if o["max_steps"] is None and o["epochs"] is None:
        raise ValueError(
            "max_steps/epochs: expected at least one, got neither; pass max_steps=N or epochs=N"
        )
    if isinstance(o["scheduler"], str) or not callable(o["scheduler"]):
        check_choice("scheduler", o["scheduler"], ("cosine", "constant"))
    check_choice("mode", o["mode"], ("max", "min"))
    if o["val_data"] is None and (o["val_fn"] is not None or o["keep_best_by"] is not None):
        raise ValueError("val_data: expected a data set with val_fn/keep_best_by, got None")
    if o["early_stopping_patience"] is not None and o["keep_best_by"] is None:
        raise ValueError(
            "keep_best_by: expected the metric early stopping watches, got None; "
            "pass keep_best_by='val/<name>'"
        )
