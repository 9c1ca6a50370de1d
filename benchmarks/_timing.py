"""Timing helper shared by the CPU training-step benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import torch


def timed_step(
    loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer
) -> Callable[[bool], float]:
    """A function ``step(amp) -> seconds``: one optimizer step on ``loss_fn()``'s loss.

    ``amp=True`` runs the forward pass under CPU bfloat16 autocast.
    """

    def step(amp: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if amp else nullcontext():
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step
