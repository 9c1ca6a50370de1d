"""Inference: volume prediction with any (pruned) head, and the liver -> tumour cascade."""

from __future__ import annotations

from featsup.inference.bundle import (
    CASCADE_FORMAT,
    LABELS,
    load_cascade,
    read_cascade_info,
    save_cascade,
)
from featsup.inference.cascade import Cascade, CascadeResult
from featsup.inference.heads import HeadChoice, HeadScore, choose_heads, smallest_head_within
from featsup.inference.predict import predict_volume, resolve_device, select_head, stack_context

__all__ = [
    "CASCADE_FORMAT",
    "LABELS",
    "Cascade",
    "CascadeResult",
    "HeadChoice",
    "HeadScore",
    "choose_heads",
    "load_cascade",
    "predict_volume",
    "read_cascade_info",
    "resolve_device",
    "save_cascade",
    "select_head",
    "smallest_head_within",
    "stack_context",
]
