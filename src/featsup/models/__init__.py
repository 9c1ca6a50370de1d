"""UNet++ models and their building blocks."""

from __future__ import annotations

from featsup.models.blocks import ConvBlock, ConvBNReLU, UpConv, bilinear_kernel, fold_batchnorm
from featsup.models.unetpp import FeatureInfo, UNetPlusPlus

__all__ = [
    "ConvBNReLU",
    "ConvBlock",
    "FeatureInfo",
    "UNetPlusPlus",
    "UpConv",
    "bilinear_kernel",
    "fold_batchnorm",
]
