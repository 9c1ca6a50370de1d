"""Streaming LiTS metrics over many cases: :class:`MetricAccumulator`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from featsup.metrics._ops import dice
from featsup.metrics.scores import case_metrics

__all__ = ["MetricAccumulator"]


class MetricAccumulator:
    """Streaming Dice per case, Dice global, VOE, RVD, ASSD and MSD over many cases.

    ``update`` takes one case (a whole volume), computes its metrics and keeps only
    numbers: per-case values and the voxel counts that Dice global pools. No volume is
    held, so thousands of cases fit in memory. ``merge`` combines accumulators filled in
    other processes.

    Args:
        surface: compute ASSD and MSD (needs distance transforms, about a second per
            liver-sized case); ``False`` keeps only the overlap metrics.

    Example:
        >>> acc = MetricAccumulator(surface=False)
        >>> _ = acc.update(np.array([1, 1, 0, 0]), np.array([1, 1, 0, 0]))
        >>> _ = acc.update(np.array([1, 0, 0, 0]), np.array([0, 0, 1, 1]))
        >>> summary = acc.compute()
        >>> summary["dice_per_case"], round(summary["dice_global"], 4)
        (0.5, 0.5714)
    """

    def __init__(self, *, surface: bool = True) -> None:
        self.surface = surface
        self.reset()

    def reset(self) -> None:
        """Forget all cases."""
        self.cases: list[dict[str, Any]] = []
        self._inter = self._pred = self._target = 0

    def __len__(self) -> int:
        return len(self.cases)

    def update(
        self,
        pred: Any,
        target: Any,
        *,
        spacing: Sequence[float] | None = None,
        case_id: str | int | None = None,
    ) -> dict[str, Any]:
        """Add one case and return its metrics (see :func:`case_metrics`).

        Args:
            pred: binary prediction of the whole case (array or tensor).
            target: binary ground truth of the same shape.
            spacing: voxel size along each axis (mm).
            case_id: optional name stored with the case's record.

        Returns:
            The case's record: :func:`case_metrics` plus ``"case"``.
        """
        record: dict[str, Any] = {"case": case_id if case_id is not None else len(self.cases)}
        record.update(case_metrics(pred, target, spacing=spacing, surface=self.surface))
        self._add(record)
        return record

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """Add the cases of ``other`` (for example from another process) to this one."""
        if not isinstance(other, MetricAccumulator):
            raise TypeError(f"other: expected a MetricAccumulator, got {type(other).__name__}")
        if other.surface != self.surface:
            raise ValueError(
                f"other: expected surface={self.surface} like this accumulator, got {other.surface}"
            )
        for record in other.cases:
            self._add(dict(record))
        return self

    def compute(self, *, ignore_undefined: bool = False) -> dict[str, float]:
        """Summary over the cases so far.

        RVD, ASSD and MSD are undefined (infinite) for a case whose prediction or truth is
        empty, as a tumour-free case with a false positive. By default such a case makes
        the mean infinite, which keeps it visible; ``ignore_undefined=True`` averages over
        the other cases instead (as MONAI's ``ignore_empty``) and counts the left-out
        ones as ``{key}_undefined_cases``. Dice and VOE are always defined.

        Args:
            ignore_undefined: leave undefined RVD / ASSD / MSD values out of the means
                (NaN if no case defines them) and report their counts.

        Returns:
            ``dice_per_case`` (mean of the case Dice scores, DPC), ``dice_global`` (Dice of
            all voxels pooled, DG; 1.0 if all masks are empty), the case means of ``voe``,
            ``rvd`` and, with ``surface``, ``assd`` and ``msd``, and ``cases``.

        Raises:
            ValueError: if no case was added.

        Example:
            >>> acc = MetricAccumulator(surface=False)
            >>> _ = acc.update(np.array([1, 1, 0]), np.array([1, 0, 0]))
            >>> _ = acc.update(np.array([1, 0, 0]), np.array([0, 0, 0]))  # no truth
            >>> acc.compute()["rvd"], acc.compute(ignore_undefined=True)["rvd"]
            (inf, 1.0)
        """
        if not self.cases:
            raise ValueError("MetricAccumulator: expected at least one case, got none; call update")
        summary = {"dice_per_case": float(np.mean([case["dice"] for case in self.cases]))}
        summary["dice_global"] = dice(self._inter, self._pred, self._target)
        summary["voe"] = float(np.mean([case["voe"] for case in self.cases]))
        for key in ("rvd", "assd", "msd") if self.surface else ("rvd",):
            values = [case[key] for case in self.cases]
            if ignore_undefined:
                values = [v for v in values if np.isfinite(v)]
                summary[f"{key}_undefined_cases"] = float(len(self.cases) - len(values))
            summary[key] = float(np.mean(values)) if values else float("nan")
        summary["cases"] = float(len(self.cases))
        return summary

    def _add(self, record: dict[str, Any]) -> None:
        self.cases.append(record)
        self._inter += int(record["intersection"])
        self._pred += int(record["pred_voxels"])
        self._target += int(record["target_voxels"])
