"""Post-processing: the dense CRF of paper section 4.1.4, and small-tumour removal."""

from __future__ import annotations

from featsup.postprocess.components import (
    TUMOUR_MIN_VOXELS,
    drop_small_tumours,
    tumour_dice_by_min_voxels,
)
from featsup.postprocess.crf import CRF_PRESETS, DenseCRF, crf_labels, dense_crf

__all__ = [
    "CRF_PRESETS",
    "TUMOUR_MIN_VOXELS",
    "DenseCRF",
    "crf_labels",
    "dense_crf",
    "drop_small_tumours",
    "tumour_dice_by_min_voxels",
]
