"""LiTS evaluation metrics: Dice (per case and global), VOE, RVD, ASSD and MSD.

:mod:`~featsup.metrics.scores` scores one case (two binary masks),
:mod:`~featsup.metrics.accumulator` streams them over many cases,
:mod:`~featsup.metrics.lits` scores LiTS label volumes (liver and tumour) and
:mod:`~featsup.metrics.report` prints and saves the summaries. ``boundary`` and
``bounding_box`` are the mask helpers the losses, data and post-processing share.
"""

from __future__ import annotations

from featsup.metrics.accumulator import MetricAccumulator
from featsup.metrics.lits import LITS_STAGES, LitsMetrics
from featsup.metrics.report import UNDEFINED_CONVENTION, head_table, json_safe, summary_table
from featsup.metrics.scores import (
    average_symmetric_surface_distance,
    boundary,
    bounding_box,
    case_metrics,
    dice_from_counts,
    dice_score,
    maximum_symmetric_surface_distance,
    relative_volume_difference,
    surface_distances,
    volume_overlap_error,
)

__all__ = [
    "LITS_STAGES",
    "UNDEFINED_CONVENTION",
    "LitsMetrics",
    "MetricAccumulator",
    "average_symmetric_surface_distance",
    "boundary",
    "bounding_box",
    "case_metrics",
    "dice_from_counts",
    "dice_score",
    "head_table",
    "json_safe",
    "maximum_symmetric_surface_distance",
    "relative_volume_difference",
    "summary_table",
    "surface_distances",
    "volume_overlap_error",
]
