"""When a run keeps a best model and when it stops before its last step.

:class:`Stopping` watches every validation of the :class:`~featsup.training.Trainer`: it
tracks the best value of one metric (``best.pt``), counts validations without
improvement (early stopping with a patience), and asks a user criterion ``stop_when``
(for example "the reconstruction Dice reached the threshold").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from featsup._checks import check_choice

__all__ = ["StopWhen", "Stopping"]

StopWhen = Callable[[Mapping[str, float]], bool]


class Stopping:
    """Best-metric tracking, early stopping by patience, and a stop criterion.

    Args:
        keep_best_by: the logged validation key (``"val/dice_x0_4"``) whose best value
            is tracked, or None.
        mode: ``"max"`` or ``"min"``: which direction of ``keep_best_by`` is better.
        min_delta: improvement smaller than this does not count.
        patience: stop after this many validations without improvement, or None.
        stop_when: ``stop_when(metrics) -> bool`` on the logged validation values
            (``{"val/<name>": float}``); True stops the run, or None.

    Attributes:
        best_value: the best value so far (None before the first validation).
        best_step: the step of ``best_value``.
        bad_validations: validations since the last improvement.
        stopped_early: True once patience or ``stop_when`` ended the run.

    Example:
        >>> stopping = Stopping(keep_best_by="val/dice", mode="max", min_delta=0.0,
        ...                     patience=None, stop_when=lambda m: m["val/dice"] >= 0.9)
        >>> stopping.update({"val/dice": 0.5}, step=10), stopping.stopped_early
        (True, False)
        >>> stopping.update({"val/dice": 0.95}, step=20), stopping.stopped_early
        (True, True)
    """

    def __init__(
        self,
        *,
        keep_best_by: str | None,
        mode: str,
        min_delta: float,
        patience: int | None,
        stop_when: StopWhen | None,
    ) -> None:
        self.keep_best_by, self.mode, self.min_delta = keep_best_by, mode, min_delta
        self.patience, self.stop_when = patience, stop_when
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.bad_validations = 0
        self.stopped_early = False

    def update(self, metrics: Mapping[str, float], *, step: int) -> bool:
        """Take one validation's values into account.

        Args:
            metrics: the logged validation values, ``{"val/<name>": float}``.
            step: the step of the validation.

        Returns:
            True when ``keep_best_by`` improved (the caller saves ``best.pt``).

        Raises:
            ValueError: if ``keep_best_by`` is not among ``metrics`` (with a did-you-mean).
        """
        improved = False
        if self.keep_best_by is not None:
            improved = self._track_best(metrics, step)
        if self.stop_when is not None and self.stop_when(metrics):
            self.stopped_early = True
        return improved

    def _track_best(self, metrics: Mapping[str, float], step: int) -> bool:
        name = check_choice("keep_best_by", self.keep_best_by, sorted(metrics))
        value, best = metrics[name], self.best_value
        if self.mode == "max":
            better = best is None or value > best + self.min_delta
        else:
            better = best is None or value < best - self.min_delta
        if better and not math.isnan(value):
            self.best_value, self.best_step, self.bad_validations = value, step, 0
            return True
        self.bad_validations += 1
        if self.patience is not None and self.bad_validations >= self.patience:
            self.stopped_early = True
        return False

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``"best"`` entry."""
        return {
            "metric": self.keep_best_by,
            "value": self.best_value,
            "step": self.best_step,
            "bad_validations": self.bad_validations,
            "stopped_early": self.stopped_early,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from a checkpoint's ``"best"`` entry."""
        self.best_value, self.best_step = state["value"], state["step"]
        self.bad_validations, self.stopped_early = state["bad_validations"], state["stopped_early"]
