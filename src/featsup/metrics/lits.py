"""LiTS scoring of label volumes {0: background, 1: liver, 2: tumour}: :class:`LitsMetrics`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from featsup.metrics.accumulator import MetricAccumulator

__all__ = ["LITS_STAGES", "LitsMetrics"]

# Stage -> the smallest label of its foreground: as in LiTS, the liver is label >= 1
# (tumour included) and the tumour label == 2.
LITS_STAGES = {"liver": 1, "tumour": 2}


class LitsMetrics:
    """Liver and tumour metrics of LiTS label volumes, streamed over cases.

    One :class:`MetricAccumulator` per stage of :data:`LITS_STAGES`; ``compute`` leaves
    the undefined surface distances of tumour-free cases out of the means
    (``ignore_undefined=True``, as MONAI's ``ignore_empty``) and counts them.

    Args:
        surface: compute ASSD and MSD as well as the overlap metrics.

    Example:
        >>> scores = LitsMetrics(surface=False)
        >>> truth = np.array([[0, 1, 1, 2]])
        >>> record = scores.update(np.array([[0, 1, 2, 2]]), truth, case_id="a")
        >>> record["liver"]["dice"], round(record["tumour"]["dice"], 3)
        (1.0, 0.667)
        >>> scores.compute()["tumour"]["dice_global"]
        0.6666666666666666
    """

    def __init__(self, *, surface: bool = True) -> None:
        self.stages = {stage: MetricAccumulator(surface=surface) for stage in LITS_STAGES}

    def __len__(self) -> int:
        return len(self.stages["liver"])

    def update(
        self,
        pred: Any,
        truth: Any,
        *,
        spacing: Sequence[float] | None = None,
        case_id: str | int | None = None,
    ) -> dict[str, Any]:
        """Score one case; return ``{"case", "liver", "tumour"}`` with each stage's record.

        Args:
            pred: predicted label volume (D, H, W), values in {0, 1, 2}.
            truth: the reference label volume of the same shape.
            spacing: voxel size (D, H, W) in mm, for the surface distances.
            case_id: name stored with the records.
        """
        pred, truth = np.asarray(pred), np.asarray(truth)
        if pred.shape != truth.shape:
            raise ValueError(f"pred: expected the shape of truth {truth.shape}, got {pred.shape}")
        record: dict[str, Any] = {"case": case_id if case_id is not None else len(self)}
        for stage, label in LITS_STAGES.items():
            record[stage] = self.stages[stage].update(
                pred >= label, truth >= label, spacing=spacing, case_id=record["case"]
            )
        return record

    def compute(self) -> dict[str, dict[str, float]]:
        """Per stage, :meth:`MetricAccumulator.compute` with ``ignore_undefined=True``."""
        return {stage: acc.compute(ignore_undefined=True) for stage, acc in self.stages.items()}
