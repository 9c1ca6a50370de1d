"""Post-processing: the dense CRF, the tumour threshold and clean-up, a tumour filter.

The dense CRF is the paper's (section 4.1.4); the learned filter of tumour components
(:mod:`~featsup.postprocess.lesion_filter`) is featsup's, and can also score the liver's
dark spots beside the model's components (:mod:`~featsup.postprocess.spots`); the dark
tumours it keeps can be grown by HU (:mod:`~featsup.postprocess.growth`).
"""

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
from featsup.postprocess.growth import (
    GROW_CONTRAST_HU,
    GROW_ITERATIONS,
    GROW_MIN_VOXELS,
    grow_dark_tumours,
)
from featsup.postprocess.lesion_filter import (
    TUMOUR_FILTER_KEEP,
    TUMOUR_FILTER_KEEPS,
    LesionFilter,
    component_inputs,
    drop_unlikely_tumours,
    fit_lesion_filter,
    score_tumours,
    tumour_components,
)
from featsup.postprocess.spots import add_dark_spots, dark_spots

__all__ = [
    "CRF_PRESETS",
    "GROW_CONTRAST_HU",
    "GROW_ITERATIONS",
    "GROW_MIN_VOXELS",
    "TUMOUR_FILTER_KEEP",
    "TUMOUR_FILTER_KEEPS",
    "TUMOUR_MIN_VOXELS",
    "TUMOUR_THRESHOLDS",
    "DenseCRF",
    "LesionFilter",
    "add_dark_spots",
    "component_inputs",
    "crf_labels",
    "dark_spots",
    "dense_crf",
    "drop_small_tumours",
    "drop_surface_tumours",
    "drop_unlikely_tumours",
    "fit_lesion_filter",
    "grow_dark_tumours",
    "label_tumours",
    "score_tumours",
    "tumour_components",
    "tumour_counts_by_min_voxels",
    "tumour_dice_by_min_voxels",
]
