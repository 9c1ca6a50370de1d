"""featsup: supervision-augmented UNet++ components for medical image segmentation.

The public API is re-exported here; sub-packages hold the details:
:mod:`featsup.models`, :mod:`featsup.supervision`, :mod:`featsup.losses`,
:mod:`featsup.metrics`, :mod:`featsup.data`, :mod:`featsup.postprocess`,
:mod:`featsup.training`, :mod:`featsup.inference` and :mod:`featsup.viz`. Optional
dependencies (nibabel, OpenCV, pydensecrf, matplotlib, segmentation-models-pytorch) are
imported only by the functions that need them.
"""

from __future__ import annotations

from featsup.data import Preprocessing
from featsup.inference import Cascade, CascadeResult, choose_heads, predict_volume, prepare_model
from featsup.losses import (
    DeepSupervisionLoss,
    DiceLoss,
    FeatureLoss,
    FocalLoss,
    SegLoss,
    TotalLoss,
    WeightedDiceLoss,
    boundary_weight_map,
    deep_supervision_loss,
    dice_loss,
    feature_loss,
    focal_loss,
    seg_loss,
    weighted_dice_loss,
)
from featsup.metrics import MetricAccumulator, case_metrics, dice_score
from featsup.models import FeatureInfo, UNetPlusPlus
from featsup.postprocess import CRF_PRESETS, DenseCRF, crf_labels, dense_crf
from featsup.supervision import (
    VARIANTS,
    EncoderLevel,
    FeatureSupervisor,
    SupervisedOutput,
    TeacherFeatureCache,
    build_variant,
    encoder_levels,
    matching_teacher,
    parse_variant,
    segmentation_step,
    supervised_student,
    train_encoding_teacher,
)
from featsup.training import Trainer, dice_per_head, load_model

__version__ = "0.1.0"

__all__ = [
    "CRF_PRESETS",
    "VARIANTS",
    "Cascade",
    "CascadeResult",
    "DeepSupervisionLoss",
    "DenseCRF",
    "DiceLoss",
    "EncoderLevel",
    "FeatureInfo",
    "FeatureLoss",
    "FeatureSupervisor",
    "FocalLoss",
    "MetricAccumulator",
    "Preprocessing",
    "SegLoss",
    "SupervisedOutput",
    "TeacherFeatureCache",
    "TotalLoss",
    "Trainer",
    "UNetPlusPlus",
    "WeightedDiceLoss",
    "__version__",
    "boundary_weight_map",
    "build_variant",
    "case_metrics",
    "choose_heads",
    "crf_labels",
    "deep_supervision_loss",
    "dense_crf",
    "dice_loss",
    "dice_per_head",
    "dice_score",
    "encoder_levels",
    "feature_loss",
    "focal_loss",
    "load_model",
    "matching_teacher",
    "parse_variant",
    "predict_volume",
    "prepare_model",
    "seg_loss",
    "segmentation_step",
    "supervised_student",
    "train_encoding_teacher",
    "weighted_dice_loss",
]
