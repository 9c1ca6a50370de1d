"""Inference: volume prediction with any (pruned) head, and the liver -> tumour cascade."""

from __future__ import annotations

from featsup.inference.cascade import Cascade, CascadeResult, LiverStage
from featsup.inference.predict import (
    PreparedModel,
    predict_volume,
    prepare_model,
    resolve_device,
    select_head,
    stack_context,
)

__all__ = [
    "Cascade",
    "CascadeResult",
    "LiverStage",
    "PreparedModel",
    "predict_volume",
    "prepare_model",
    "resolve_device",
    "select_head",
    "stack_context",
]
