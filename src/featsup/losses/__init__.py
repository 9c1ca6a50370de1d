"""Losses of the paper (eq. 8-17): each a function doing the maths plus a thin module."""

from __future__ import annotations

from featsup.losses._utils import one_hot
from featsup.losses.blob import BlobDiceLoss, blob_dice_loss, label_components
from featsup.losses.compose import (
    DeepSupervisionLoss,
    SegLoss,
    TotalLoss,
    deep_supervision_loss,
    seg_loss,
)
from featsup.losses.dice import (
    DiceLoss,
    TverskyLoss,
    WeightedDiceLoss,
    dice_loss,
    tversky_loss,
    weighted_dice_loss,
)
from featsup.losses.feature import FeatureLoss, feature_loss
from featsup.losses.focal import FocalLoss, focal_loss
from featsup.losses.weight_map import boundary_weight_map

__all__ = [
    "BlobDiceLoss",
    "DeepSupervisionLoss",
    "DiceLoss",
    "FeatureLoss",
    "FocalLoss",
    "SegLoss",
    "TotalLoss",
    "TverskyLoss",
    "WeightedDiceLoss",
    "blob_dice_loss",
    "boundary_weight_map",
    "deep_supervision_loss",
    "dice_loss",
    "feature_loss",
    "focal_loss",
    "label_components",
    "one_hot",
    "seg_loss",
    "tversky_loss",
    "weighted_dice_loss",
]
