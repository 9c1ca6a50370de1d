"""The :class:`featsup.training.Trainer`'s argument checks and step-function contract.

:func:`check_step_output` checks what a ``step_fn`` returns; :func:`mean_step_values`
is the default ``val_fn`` built from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from featsup._checks import check_choice, check_in_open_range, check_positive, check_type
from featsup.training.device import move_to_device


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


def mean_step_values(
    step_fn: Callable[[nn.Module, Any], Any], device: torch.device
) -> Callable[[nn.Module, Iterable[Any]], dict[str, float]]:
    """The default ``val_fn``: batch-mean of ``step_fn``'s loss and logs over the loader."""

    def val_fn(model: nn.Module, loader: Iterable[Any]) -> dict[str, float]:
        sums: dict[str, float] = {}
        count = 0
        for batch in loader:
            loss, logs = check_step_output(
                step_fn(model, move_to_device(batch, device)), training=False
            )
            for key, value in {**logs, "loss": loss}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
        return {key: value / max(count, 1) for key, value in sums.items()}

    return val_fn


def check_options(o: dict[str, Any]) -> None:
    """Validate the Trainer's arguments (``o`` is its ``locals()``)."""
    check_type("model", o["model"], nn.Module)
    for name in ("step_fn", "val_fn", "stop_when"):
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
    check_type("progress", o["progress"], (bool, type(None)))
    check_type("name", o["name"], (str, type(None)))
    check_positive("lr", o["lr"])
    check_positive("weight_decay", o["weight_decay"], strict=False)
    check_positive("min_delta", o["min_delta"], strict=False)
    if o["grad_clip"] is not None:
        check_positive("grad_clip", o["grad_clip"])
    if o["ema_decay"] is not None:
        check_in_open_range("ema_decay", o["ema_decay"], 0, 1)
    if o["max_steps"] is None and o["epochs"] is None:
        raise ValueError(
            "max_steps/epochs: expected at least one, got neither; pass max_steps=N or epochs=N"
        )
    if isinstance(o["scheduler"], str) or not callable(o["scheduler"]):
        check_choice("scheduler", o["scheduler"], ("cosine", "constant"))
    check_choice("mode", o["mode"], ("max", "min"))
    watchers = (o["val_fn"], o["keep_best_by"], o["stop_when"])
    if o["val_data"] is None and any(w is not None for w in watchers):
        raise ValueError(
            "val_data: expected a data set with val_fn/keep_best_by/stop_when, got None"
        )
    if o["early_stopping_patience"] is not None and o["keep_best_by"] is None:
        raise ValueError(
            "keep_best_by: expected the metric early stopping watches, got None; "
            "pass keep_best_by='val/<name>'"
        )
