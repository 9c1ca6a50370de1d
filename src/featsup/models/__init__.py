"""UNet++ models and their building blocks."""

from __future__ import annotations

from featsup.models._geometry import pooling_for_spacing
from featsup.models.blocks import (
    ConvBlock,
    ConvBNReLU,
    FusedConvReLU,
    UpConv,
    UpConv3d,
    bilinear_kernel,
    fold_batchnorm,
    fuse_for_inference,
)
from featsup.models.ensemble import Ensemble, mean_probability_logits
from featsup.models.transfer import transfer_weights
from featsup.models.unetpp import FeatureInfo, UNetPlusPlus

__all__ = [
    "ConvBNReLU",
    "ConvBlock",
    "Ensemble",
    "FeatureInfo",
    "FusedConvReLU",
    "UNetPlusPlus",
    "UpConv",
    "UpConv3d",
    "bilinear_kernel",
    "fold_batchnorm",
    "fuse_for_inference",
    "mean_probability_logits",
    "pooling_for_spacing",
    "transfer_weights",
]
