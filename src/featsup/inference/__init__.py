"""Inference: volume prediction with any (pruned) head, and the liver -> tumour cascade."""

from __future__ import annotations

from featsup.inference.cascade import Cascade, CascadeResult
from featsup.inference.predict import predict_volume, resolve_device, select_head, stack_context

__all__ = [
    "Cascade",
    "CascadeResult",
    "predict_volume",
    "resolve_device",
    "select_head",
    "stack_context",
]
