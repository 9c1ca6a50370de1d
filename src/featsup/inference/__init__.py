"""Inference: volume prediction with any (pruned) head, and the liver -> tumour cascade.

3D models predict a volume window by window with :func:`predict_patches`
(:mod:`~featsup.inference.patches`).

Also the cascade's saved form (:mod:`~featsup.inference.bundle`) and the choice of heads
on validation cases (:mod:`~featsup.inference.heads`); :func:`evaluate_cases` runs a
cascade once on test cases and scores it (:mod:`~featsup.inference.evaluate`);
:func:`train_lesion_filter` trains a cascade's tumour filter on its own components
(:mod:`~featsup.inference.lesion_training`).
"""

from __future__ import annotations

from featsup.inference.bundle import (
    CASCADE_FORMAT,
    LABELS,
    load_cascade,
    read_cascade_info,
    save_cascade,
)
from featsup.inference.cascade import Cascade, CascadeResult, LiverStage, liver_crf, tumour_crf
from featsup.inference.evaluate import CaseEvaluation, evaluate_cases
from featsup.inference.heads import (
    TUMOUR_CRITERIA,
    TUMOUR_TTAS,
    HeadChoice,
    HeadScore,
    StageOutput,
    Tuning,
    ValidationPass,
    choose_crf_stages,
    choose_heads,
    score_heads,
    smallest_head_within,
    tumour_criterion,
    tune_on_validation,
)
from featsup.inference.lesion_training import (
    LIVER_MASKS,
    TUMOUR_FILTER_LIVER,
    TUMOUR_FILTER_STEPS,
    TUMOUR_FILTER_THRESHOLD,
    TUMOUR_FILTER_TUMOUR_CRF,
    add_lesion_filter,
    lesion_candidates,
    train_lesion_filter,
)
from featsup.inference.patches import predict_patches
from featsup.inference.predict import (
    TTA,
    PreparedModel,
    StageHead,
    heads_of,
    parse_head,
    predict_volume,
    prepare_model,
    resolve_device,
    select_head,
    stack_context,
)

__all__ = [
    "CASCADE_FORMAT",
    "LABELS",
    "LIVER_MASKS",
    "TTA",
    "TUMOUR_CRITERIA",
    "TUMOUR_FILTER_LIVER",
    "TUMOUR_FILTER_STEPS",
    "TUMOUR_FILTER_THRESHOLD",
    "TUMOUR_FILTER_TUMOUR_CRF",
    "TUMOUR_TTAS",
    "Cascade",
    "CascadeResult",
    "CaseEvaluation",
    "HeadChoice",
    "HeadScore",
    "LiverStage",
    "PreparedModel",
    "StageHead",
    "StageOutput",
    "Tuning",
    "ValidationPass",
    "add_lesion_filter",
    "choose_crf_stages",
    "choose_heads",
    "evaluate_cases",
    "heads_of",
    "lesion_candidates",
    "liver_crf",
    "load_cascade",
    "parse_head",
    "predict_patches",
    "predict_volume",
    "prepare_model",
    "read_cascade_info",
    "resolve_device",
    "save_cascade",
    "score_heads",
    "select_head",
    "smallest_head_within",
    "stack_context",
    "train_lesion_filter",
    "tumour_crf",
    "tumour_criterion",
    "tune_on_validation",
]
