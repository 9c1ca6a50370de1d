"""Post-processing: the dense CRF (paper section 4.1.4) and the tumour threshold and clean-up."""

from __future__ import annotations

from featsup.postprocess.components import (
    TUMOUR_MIN_VOXELS,
    TUMOUR_THRESHOLDS,
    drop_small_tumours,
    drop_surface_tumours,
    label_tumours,
    tumour_counts_by_min_voxels,
    tumour_dice_by_min_voxels,
)
from featsup.postprocess.crf import CRF_PRESETS, DenseCRF, crf_labels, dense_crf

__all__ = [
    "CRF_PRESETS",
    "TUMOUR_MIN_VOXELS",
    "TUMOUR_THRESHOLDS",
    "DenseCRF",
    "crf_labels",
    "dense_crf",
    "drop_small_tumours",
    "drop_surface_tumours",
    "label_tumours",
    "tumour_counts_by_min_voxels",
    "tumour_dice_by_min_voxels",
]
