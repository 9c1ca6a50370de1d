"""Training a cascade's tumour filter on its own components (false-positive reduction).

:func:`lesion_candidates` runs a cascade on labelled (training) cases and collects what a
:class:`~featsup.postprocess.LesionFilter` sees of each tumour component it leaves, with
whether the component touches a reference tumour; :func:`train_lesion_filter` then fits
the filter (:func:`~featsup.postprocess.fit_lesion_filter`). Put it in a cascade with
``Cascade(tumour_filter=)`` and choose its keep threshold with
:func:`~featsup.inference.tune_on_validation` on validation cases.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal, get_args

import numpy as np
import torch
from tqdm.auto import tqdm

from featsup._checks import check_choice, check_positive
from featsup.inference.cascade import Cascade
from featsup.inference.heads import Tuning, _case_arrays
from featsup.postprocess.lesion_filter import (
    TUMOUR_FILTER_KEEP,
    LesionFilter,
    component_inputs,
    fit_lesion_filter,
    tumour_components,
)

__all__ = [
    "LIVER_MASKS",
    "TUMOUR_FILTER_LIVER",
    "TUMOUR_FILTER_STEPS",
    "TUMOUR_FILTER_THRESHOLD",
    "TUMOUR_FILTER_TUMOUR_CRF",
    "add_lesion_filter",
    "lesion_candidates",
    "train_lesion_filter",
]

#: Where the training cases' tumour components come from: the cascade's liver stage as at
#: inference, the same without its liver CRF, or the reference liver (:func:`lesion_candidates`).
LiverMask = Literal["model", "model-no-crf", "reference"]
LIVER_MASKS: tuple[str, ...] = get_args(LiverMask)

#: The filter's recipe that rules AN and AO adopted on held-out phantom cases
#: (docs/cascade.md): 800 steps, its training components through the liver stage without
#: its liver CRF and the tumour stage without its tumour CRF (the cascade keeps both at
#: inference), at tumour threshold 0.2 (rule AO; with keep 0.9,
#: :data:`~featsup.postprocess.TUMOUR_FILTER_KEEP`).
TUMOUR_FILTER_STEPS = 800
TUMOUR_FILTER_LIVER: LiverMask = "model-no-crf"
TUMOUR_FILTER_TUMOUR_CRF = False
TUMOUR_FILTER_THRESHOLD = 0.2


def lesion_candidates(
    cascade: Cascade,
    cases: Sequence[Any],
    *,
    liver: LiverMask = TUMOUR_FILTER_LIVER,
    tumour_crf: bool = TUMOUR_FILTER_TUMOUR_CRF,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tumour components ``cascade`` leaves on labelled cases, as a filter sees them.

    The cascade's tumour stage runs as it is (head, threshold, scope, and its tumour CRF
    only with ``tumour_crf=True``), without its tumour filter and smallest tumour, since a
    filter replaces that rule.

    Args:
        cascade: a trained cascade.
        cases: labelled cases (``LoadedCase`` or ``(volume, labels)`` pairs); training
            cases, never test cases.
        liver: the liver mask the tumour stage works in: ``"model"`` (the cascade's
            liver stage, as at inference), ``"model-no-crf"`` (the default: the same
            without its liver CRF, a third to a fifth of the time on the phantom of a
            2-core AMD EPYC) or ``"reference"`` (``labels > 0``: the liver model
            and its CRF do not run, a tenth to a third of the time; on validation-type
            phantom cases its filter held lower Dice per case than the others').
        tumour_crf: run the cascade's tumour CRF (if it has one) as at inference; False
            (the default) leaves it out, about 1.2 s a case faster on the phantom of a
            2-core AMD EPYC.
        progress: show a progress bar.

    Returns:
        ``(patches, features, targets)``: float32 (N, 6, PATCH, PATCH), float32 (N, 6)
        (:func:`~featsup.postprocess.component_inputs`) and bool (N,): whether each
        component touches a reference tumour voxel (label 2).

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> net = UNetPlusPlus(1, 2, widths=(4, 8))
        >>> cascade = Cascade(net, net, liver_size=16, tumour_size=16, device="cpu")
        >>> case = (np.zeros((2, 16, 16), np.int16), np.zeros((2, 16, 16), np.uint8))
        >>> patches, features, targets = lesion_candidates(cascade, [case])
        >>> patches.shape[1:], features.shape[1], targets.dtype
        ((6, 32, 32), 6, dtype('bool'))
    """
    from featsup.inference.bundle import cascade_arguments

    check_choice("liver", liver, LIVER_MASKS)
    options = {**cascade_arguments(cascade), "tumour_filter": None, "tumour_min_voxels": 0}
    if liver == "model-no-crf":
        options["liver_crf"] = None
    if not tumour_crf:
        options["tumour_crf"] = None
    plain = Cascade(cascade.liver_model, cascade.tumour_model, **options)
    patches, features, targets = [], [], []
    for i, case in enumerate(tqdm(cases, desc="tumour components", disable=not progress)):
        volume, truth = _case_arrays(case, i)
        known = np.asarray(truth) > 0 if liver == "reference" else None
        stage = plain.liver_stage(np.asarray(volume), mask=known)
        result = plain.tumour_stage(stage)
        components, count = tumour_components(result.labels)
        p, f = component_inputs(
            stage.image, result.tumour_probability, components, count, result.liver_mask
        )
        touched = np.bincount(components[np.asarray(truth) == 2], minlength=count + 1)[1:] > 0
        patches.append(p)
        features.append(f)
        targets.append(touched)
    if not patches:
        raise ValueError("cases: expected at least one labelled case, got none")
    return np.concatenate(patches), np.concatenate(features), np.concatenate(targets)


def train_lesion_filter(
    cascade: Cascade,
    cases: Sequence[Any],
    *,
    steps: int = TUMOUR_FILTER_STEPS,
    seed: int = 0,
    width: int = 16,
    device: str | torch.device = "cpu",
    liver: LiverMask = TUMOUR_FILTER_LIVER,
    tumour_crf: bool = TUMOUR_FILTER_TUMOUR_CRF,
    progress: bool = False,
) -> tuple[LesionFilter, dict[str, Any]]:
    """A :class:`~featsup.postprocess.LesionFilter` trained on ``cascade``'s own components.

    :func:`lesion_candidates` on ``cases``, then
    :func:`~featsup.postprocess.fit_lesion_filter`.

    Args:
        cascade: a trained cascade (its heads, CRFs and threshold as it will run; tune it
            on validation first).
        cases: labelled training cases.
        steps: the filter's optimizer steps.
        seed: its weights and sampling seed.
        width: its width.
        device: where it trains.
        liver: the liver mask of the cases' tumour stage (:func:`lesion_candidates`).
        tumour_crf: run the cascade's tumour CRF on the cases (:func:`lesion_candidates`).
        progress: show a progress bar over the cases.

    Returns:
        ``(lesion_filter, info)``; ``info`` as ``fit_lesion_filter``'s, plus
        ``"cases"``, ``"liver"``, ``"tumour_crf"`` and ``"collect_seconds"``.

    Raises:
        ValueError: if the components are all true or all false (nothing to learn).
    """
    check_positive("steps", steps)
    start = time.perf_counter()
    patches, features, targets = lesion_candidates(
        cascade, cases, liver=liver, tumour_crf=tumour_crf, progress=progress
    )
    collected = time.perf_counter() - start
    lesion_filter, info = fit_lesion_filter(
        patches, features, targets, steps=steps, seed=seed, width=width, device=device
    )
    summary = {"cases": len(cases), "liver": liver, "tumour_crf": tumour_crf,
               "collect_seconds": collected}  # fmt: skip
    return lesion_filter, {**info, **summary}


def add_lesion_filter(
    tuning: Tuning,
    train_cases: Sequence[Any],
    val_cases: Sequence[Any],
    *,
    steps: int = TUMOUR_FILTER_STEPS,
    seed: int = 0,
    keeps: float | Sequence[float] = TUMOUR_FILTER_KEEP,
    liver: LiverMask = TUMOUR_FILTER_LIVER,
    tumour_crf: bool = TUMOUR_FILTER_TUMOUR_CRF,
    threshold: float | None = TUMOUR_FILTER_THRESHOLD,
    spots: float | None = None,
    progress: bool = False,
) -> tuple[Tuning, dict[str, Any]]:
    """A tuned cascade with a tumour filter (its keep threshold fixed, or chosen on validation).

    :func:`train_lesion_filter` on ``train_cases`` with ``tuning.cascade`` as it was
    tuned, but for two settings: the smallest tumour becomes 0 (the filter takes its
    place) and the tumour probability threshold ``threshold`` (0.2 by default), for the
    filter's training components and at inference (below the tuned one, the tumour stage
    offers the filter more, and larger, candidates); the heads, CRF stages and TTA stay
    as they were chosen. The filter then scores the
    tuned cascade's components on ``val_cases`` for each of ``keeps``: from the tuning's
    :attr:`~featsup.inference.Tuning.validation_pass` (``tune_on_validation(...,
    keep_outputs=True)``) when ``val_cases`` are the cases it was tuned on (the same
    outputs, without running the models again), else from one more run of the cascade
    (the head table is not measured again). With several keeps, the keep is chosen as
    :func:`~featsup.inference.tune_on_validation` chooses it (the highest within the
    tuning's tolerance of the best validation Dice, by its criterion).

    Args:
        tuning: what :func:`~featsup.inference.tune_on_validation` returned, without a
            filter.
        train_cases: labelled training cases (never validation or test cases).
        val_cases: the validation cases the tuning was made on.
        steps: the filter's optimizer steps.
        seed: its weights and sampling seed.
        keeps: one keep threshold to use (:data:`~featsup.postprocess.TUMOUR_FILTER_KEEP`
            by default), or candidates to choose from (for example
            :data:`~featsup.postprocess.TUMOUR_FILTER_KEEPS`).
        liver: the liver mask of the training cases' tumour stage (:func:`lesion_candidates`).
        tumour_crf: run the tumour CRF on the training cases (:func:`lesion_candidates`);
            the cascade keeps its own at inference either way.
        threshold: the filtered cascade's tumour probability threshold, in (0, 1)
            (:data:`TUMOUR_FILTER_THRESHOLD`, 0.2, by default: rule AO on held-out phantom
            cases, with keep 0.9); None keeps the tuning's.
        spots: a darkness threshold in HU: the liver's dark spots join the tumour
            components as candidates, for the filter's training and at inference
            (``Cascade(tumour_spots=)``); None (the default): the model's components only.
        progress: show a progress bar over the training cases.

    Returns:
        ``(tuning, info)``: the new :class:`~featsup.inference.Tuning` (its ``cascade``
        holds the filter; its ``heads`` and ``crf_scores`` are the first tuning's) and
        :func:`train_lesion_filter`'s ``info`` with ``"tune_seconds"`` and
        ``"validation_reused"`` (whether the tuning's validation outputs were reused).

    Raises:
        ValueError: if ``tuning.cascade`` already has a filter, ``threshold`` is not in
            (0, 1), or as :func:`train_lesion_filter`.
    """
    from featsup.inference.bundle import cascade_arguments
    from featsup.inference.heads import _best_keep, _candidates, _crf_trials

    tuned = tuning.cascade
    if tuned.tumour_filter is not None:
        raise ValueError("tuning: expected a cascade without a tumour filter, got one")
    candidates = _candidates("keeps", keeps, float, 0.0, 1.0)
    t = tuning.tumour_threshold if threshold is None else float(threshold)
    if not 0.0 < t < 1.0:
        raise ValueError(f"threshold: expected a number in (0, 1), got {threshold!r}")
    if t != tuned.tumour_threshold or spots != tuned.tumour_spots:
        tuned = Cascade(tuned.liver_model, tuned.tumour_model,
                        **{**cascade_arguments(tuned), "tumour_threshold": t,
                           "tumour_spots": spots})  # fmt: skip
    lesion_filter, info = train_lesion_filter(
        tuned, train_cases, steps=steps, seed=seed, liver=liver, tumour_crf=tumour_crf,
        progress=progress,
    )  # fmt: skip
    start = time.perf_counter()
    options = {**cascade_arguments(tuned), "tumour_filter": lesion_filter, "tumour_min_voxels": 0}
    arrays = [_case_arrays(case, i) for i, case in enumerate(val_cases)]
    ran = tuning.validation_pass  # the tuning's own run over these cases, if it kept it
    cached = (
        ran.outputs if ran is not None and ran.crf == tuning.crf and ran.matches(arrays) else None
    )
    trials = _crf_trials(
        Cascade(tuned.liver_model, tuned.tumour_model, **options), arrays,
        tuned.liver_crf, tuned.tumour_crf, thresholds=(t,), sizes=(0,),
        stages=(tuning.crf,), criterion=tuning.criterion, keeps=candidates,
        cached=cached,
    )  # fmt: skip
    grid = trials[tuning.crf]["by_threshold"]
    keep = _best_keep(grid[t], tuning.heads.tolerance)
    options["tumour_filter_keep"] = keep
    cascade = Cascade(tuned.liver_model, tuned.tumour_model, **options)
    again = replace(tuning, tumour_threshold=t, tumour_min_voxels=0, threshold_scores=grid,
                    cascade=cascade, tumour_filter_keep=float(keep),
                    validation_pass=None)  # fmt: skip
    cascade.training_summary = {
        **(tuning.cascade.training_summary or {}),
        "tuning": again.to_dict(),
        "tumour_filter": {k: v for k, v in info.items() if k != "seconds"},
    }
    seconds = time.perf_counter() - start
    return again, {**info, "tune_seconds": seconds, "validation_reused": cached is not None}
