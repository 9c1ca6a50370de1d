"""Learning-rate schedules stepped once per optimizer step: warm-up, then cosine or constant.

:func:`warmup_cosine` is the one definition of the warm-up + cosine factor; the
:class:`~featsup.training.Trainer`'s ``"cosine"`` (to zero) and the encoding teacher's
recipe (to 5 % of the peak) both use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["make_scheduler", "warmup_cosine"]

SchedulerFactory = Callable[[torch.optim.Optimizer, int], Any]


def warmup_cosine(
    *, warmup: int, total: int, floor: float = 0.0, cosine: bool = True
) -> Callable[[int], float]:
    """Factor of the peak learning rate at each step: linear warm-up, then cosine decay.

    The factor is ``(step + 1) / warmup`` for ``step < warmup``, then falls along half a
    cosine from 1 to ``floor`` at ``total`` (and stays there); with ``cosine=False`` it
    stays at 1 after the warm-up.

    Args:
        warmup: warm-up steps (0 for none).
        total: the step at which the decay reaches ``floor``.
        floor: the final factor, in [0, 1].
        cosine: decay after the warm-up; False keeps the factor constant.

    Returns:
        ``factor(step) -> float``, for :class:`torch.optim.lr_scheduler.LambdaLR`.

    Example:
        >>> f = warmup_cosine(warmup=2, total=10, floor=0.05)
        >>> [round(f(k), 3) for k in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.525, 0.05]
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_scheduler(
    scheduler: str | SchedulerFactory,
    optimizer: torch.optim.Optimizer,
    *,
    warmup: int,
    total: int,
) -> Any:
    """The per-step scheduler of a run: ``"cosine"`` (to zero), ``"constant"``, or a factory.

    Args:
        scheduler: ``"cosine"``, ``"constant"`` or ``f(optimizer, total) -> LRScheduler``.
        optimizer: the optimizer to schedule.
        warmup: linear warm-up steps of the built-in schedules.
        total: steps of the whole run.

    Returns:
        An object with ``step``, ``state_dict`` and ``load_state_dict``.

    Raises:
        TypeError: if a factory returns something else.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> make_scheduler("constant", opt, warmup=4, total=10).get_last_lr()
        [0.25]
    """
    if isinstance(scheduler, str):
        factor = warmup_cosine(warmup=warmup, total=total, cosine=scheduler == "cosine")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    made = scheduler(optimizer, total)
    if not all(hasattr(made, a) for a in ("step", "state_dict", "load_state_dict")):
        raise TypeError(
            f"scheduler: expected the factory to return an LRScheduler, got {type(made).__name__}"
        )
    return made
