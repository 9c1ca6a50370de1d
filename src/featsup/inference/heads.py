"""Choose each cascade stage's UNet++ head on validation cases (paper section 4.2.5).

A shallower head computes fewer nodes, so it is faster; :func:`choose_heads` keeps, for
each stage, the smallest head whose validation Dice per case is within ``tolerance`` of
the best head's, and measures the model seconds per volume of every head.
:func:`tune_on_validation` chooses the heads, then the CRF stages, the tumour threshold and
the smallest tumour component, in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from numbers import Real
from typing import Any, Literal, NamedTuple

import numpy as np

from featsup._checks import check_choice, check_in_range
from featsup.inference.cascade import Cascade
from featsup.inference.predict import TTA, StageHead, check_head, check_tta, heads_of
from featsup.metrics import LITS_STAGES, dice_score
from featsup.postprocess.components import (
    TUMOUR_MIN_VOXELS,
    TUMOUR_THRESHOLDS,
    drop_small_tumours,
    label_tumours,
    tumour_counts_by_min_voxels,
)
from featsup.postprocess.lesion_filter import (
    TUMOUR_FILTER_KEEPS,
    drop_unlikely_tumours,
    score_tumours,
)

__all__ = [
    "TUMOUR_CRITERIA",
    "TUMOUR_TTAS",
    "HeadChoice",
    "HeadScore",
    "StageOutput",
    "Tuning",
    "ValidationPass",
    "choose_crf_stages",
    "choose_heads",
    "score_heads",
    "smallest_head_within",
    "tumour_criterion",
    "tune_on_validation",
]

TUMOUR_TTAS: tuple[TTA, ...] = (False, True, "flips")
"""The tumour stage's test-time augmentations ``tune_on_validation(tumour_tta="auto")``
tries, cheapest first: none, left-right mirror (2 passes), every in-plane flip (4)."""

Criterion = Literal["per_case", "global", "mean"]
"""How validation cases' tumour Dice is pooled into one score: see :func:`tumour_criterion`."""
TUMOUR_CRITERIA: tuple[str, ...] = ("per_case", "global", "mean")


@dataclass(frozen=True)
class HeadScore:
    """One row of the head table."""

    stage: str
    head: int
    dice: float
    """Validation Dice per case (liver: label >= 1; tumour: label 2)."""
    seconds_per_volume: float
    """Seconds of this stage's model per validation volume (CRF and I/O excluded)."""
    speedup: float
    """Seconds of the deepest head divided by this head's."""
    chosen: bool


@dataclass
class HeadChoice:
    """What :func:`choose_heads` returns."""

    liver_head: int
    tumour_head: int
    tolerance: float
    rows: list[HeadScore]
    cascade: Cascade | None = field(default=None, repr=False)
    """A copy of the cascade with the chosen heads."""

    def table(self) -> str:
        """The rows as a Markdown table (head, validation Dice, seconds per volume, speed-up)."""
        lines = [
            "| stage | head | validation Dice | s / volume | speed-up | chosen |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.stage} | X0,{r.head} | {r.dice:.4f} | {r.seconds_per_volume:.3f} | "
                f"{r.speedup:.2f}x | {'yes' if r.chosen else ''} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for a cascade file's training summary)."""
        return {
            "liver_head": self.liver_head,
            "tumour_head": self.tumour_head,
            "tolerance": self.tolerance,
            "rows": [asdict(r) for r in self.rows],
        }


def smallest_head_within(dice: Sequence[float], tolerance: float = 0.005) -> int:
    """The smallest head (1-based) whose Dice is within ``tolerance`` of the best.

    Args:
        dice: Dice of heads 1, 2, ... in order.
        tolerance: allowed Dice below the best (0.005 = 0.5 points).

    Returns:
        The head number.

    Raises:
        ValueError: if ``dice`` is empty or ``tolerance`` is outside [0, 1].

    Example:
        >>> smallest_head_within([0.90, 0.952, 0.955, 0.956])
        2
    """
    check_in_range("tolerance", tolerance, 0.0, 1.0)
    if len(dice) == 0:
        raise ValueError("dice: expected one score per head, got none")
    best = max(dice)
    return next(k + 1 for k, d in enumerate(dice) if d >= best - tolerance)


def _case_arrays(case: Any, index: int) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(case, "volume") and hasattr(case, "labels"):
        volume, labels = case.volume, case.labels
    elif isinstance(case, (tuple, list)) and len(case) >= 2:
        volume, labels = case[0], case[1]
    else:
        raise TypeError(
            f"cases[{index}]: expected a LoadedCase or a (volume, labels) pair, "
            f"got {type(case).__name__}"
        )
    if labels is None:
        raise ValueError(f"cases[{index}]: expected labels, got None; fix: load with a truth")
    return np.asarray(volume), np.asarray(labels)


def score_heads(
    cascade: Cascade,
    cases: Sequence[Any],
    *,
    stage: Literal["liver", "tumour"],
    liver_head: int | None = None,
    timed: bool = True,
) -> tuple[list[float], list[float]]:
    """Dice per case and model seconds per volume of every head of one stage (Table 2).

    Every head of a case comes from one pass of the whole network
    (:meth:`Cascade.liver_stages`, :meth:`Cascade.tumour_stages`); the tumour heads run
    on one liver stage per case (with ``liver_head``, None: the cascade's). A head's
    time is its pruned model's (:meth:`Cascade.prepared`), the faster of two runs on
    the first case, so that the speed-ups show what pruning saves.

    Args:
        cascade: the trained cascade; it is not changed.
        cases: :class:`featsup.data.LoadedCase` or ``(volume_hu, labels)`` pairs, read
            once each in order (a :class:`featsup.data.LazyCases` loads one at a time).
        stage: which stage's heads to score.
        liver_head: the liver head under the tumour heads.
        timed: time each head; False gives NaN seconds.

    Returns:
        (Dice per case of heads 1..d, seconds per volume of heads 1..d).

    Raises:
        ValueError: if ``cases`` is empty or a case has no labels.
        TypeError: if a case is neither a LoadedCase nor a pair.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> net = UNetPlusPlus(1, 2, widths=(4, 8, 16))
        >>> cascade = Cascade(net, net, liver_size=32, tumour_size=32, device="cpu")
        >>> case = (np.zeros((2, 32, 32), np.int16), np.zeros((2, 32, 32), np.uint8))
        >>> len(score_heads(cascade, [case], stage="liver")[0])
        2
    """
    check_choice("stage", stage, ("liver", "tumour"))
    if len(cases) == 0:
        raise ValueError("cases: expected at least one case, got none")
    model = cascade.liver_model if stage == "liver" else cascade.tumour_model
    heads = list(range(1, heads_of(model) + 1))
    scores: list[list[float]] = [[] for _ in heads]
    first = None
    for i, case in enumerate(cases):  # one case at a time: a lazy sequence stays lazy
        volume, labels = _case_arrays(case, i)
        first = volume if first is None and timed else first
        if stage == "liver":
            for k, liver in zip(heads, cascade.liver_stages(volume, heads), strict=True):
                scores[k - 1].append(dice_score(liver.mask, labels >= 1))
            continue
        liver = cascade.liver_stage(volume, head=liver_head)
        for k, result in zip(heads, cascade.tumour_stages(liver, heads), strict=True):
            scores[k - 1].append(dice_score(result.labels == 2, labels == 2))
    seconds = [float("nan")] * len(heads)
    if timed and first is not None:
        seconds = _head_seconds(cascade, first, stage, heads, liver_head)
    return [float(np.mean(v)) for v in scores], seconds


def _head_seconds(
    cascade: Cascade,
    volume: np.ndarray,
    stage: Literal["liver", "tumour"],
    heads: list[int],
    liver_head: int | None,
) -> list[float]:
    """Each head's pruned model seconds on ``volume``: the faster of two runs."""
    key = "liver_model" if stage == "liver" else "tumour_model"
    liver = None if stage == "liver" else cascade.liver_stage(volume, head=liver_head)
    seconds = []
    for k in heads:
        runs = []
        for _ in range(2):
            if liver is None:
                runs.append(cascade.liver_stage(volume, head=k).timings[key])
            else:
                runs.append(cascade.tumour_stage(liver, head=k).timings.get(key, 0.0))
        seconds.append(min(runs))
    return seconds


def choose_heads(cascade: Cascade, cases: Sequence[Any], *, tolerance: float = 0.005) -> HeadChoice:
    """Choose each stage's head: the smallest within ``tolerance`` of the best on validation.

    The liver heads are compared first (liver Dice through the whole cascade, with its
    CRF and largest component, the tumour head as set), then the tumour heads with the
    chosen liver head. Time is the stage model's seconds per volume
    (``CascadeResult.timings``), so speed-ups show what pruning saves.

    Args:
        cascade: the trained cascade; it is not changed.
        cases: validation cases, :class:`featsup.data.LoadedCase` or ``(volume_hu,
            labels)`` pairs of (D, H, W) arrays in processing order. Never test cases.
        tolerance: allowed validation Dice below the best head (0.005 = 0.5 points).

    Returns:
        A :class:`HeadChoice`: the heads, the table and a copy of the cascade using them.

    Raises:
        ValueError: if ``cases`` is empty, a case has no labels or ``tolerance`` is
            outside [0, 1].
        TypeError: if a case is neither a LoadedCase nor a pair.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> net = UNetPlusPlus(1, 2, widths=(4, 8, 16))
        >>> cascade = Cascade(net, net, liver_size=32, tumour_size=32, device="cpu")
        >>> case = (np.zeros((2, 32, 32), np.int16), np.zeros((2, 32, 32), np.uint8))
        >>> [r.head for r in choose_heads(cascade, [case]).rows]
        [1, 2, 1, 2]
    """
    from featsup.inference.bundle import cascade_arguments

    check_in_range("tolerance", tolerance, 0.0, 1.0)
    rows: list[HeadScore] = []
    chosen: dict[str, int] = {}
    for stage in ("liver", "tumour"):
        dice, seconds = score_heads(cascade, cases, stage=stage, liver_head=chosen.get("liver"))
        chosen[f"{stage}"] = smallest_head_within(dice, tolerance)
        for k, (d, s) in enumerate(zip(dice, seconds, strict=True)):
            speedup = seconds[-1] / s if s > 0 else float("nan")
            rows.append(HeadScore(stage, k + 1, d, s, speedup, k + 1 == chosen[stage]))
    options = {**cascade_arguments(cascade), "liver_head": chosen["liver"]}
    options["tumour_head"] = chosen["tumour"]
    best = Cascade(cascade.liver_model, cascade.tumour_model, **options)
    choice = HeadChoice(chosen["liver"], chosen["tumour"], tolerance, rows, best)
    best.training_summary = {**(cascade.training_summary or {}), "heads": choice.to_dict()}
    return choice


def choose_crf_stages(
    cascade: Cascade,
    cases: Sequence[Any],
    *,
    liver_crf: dict[str, Any],
    tumour_crf: dict[str, Any],
) -> tuple[Literal["none", "liver", "both"], dict[str, dict[str, float]]]:
    """Choose the stages the dense CRF refines, on validation cases.

    The liver CRF is kept only when it raises the validation liver Dice per case, and
    the tumour CRF (after the liver one) only when it raises the tumour Dice per case.

    Args:
        cascade: the trained cascade with its heads set; it is not changed.
        cases: validation cases, as for :func:`choose_heads`. Never test cases.
        liver_crf: :func:`featsup.postprocess.dense_crf` options for the liver stage.
        tumour_crf: the same for the tumour stage.

    Returns:
        (``"none"``, ``"liver"`` or ``"both"``; the liver and tumour Dice per case of each).

    Raises:
        ValueError: if there are no cases.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> net = UNetPlusPlus(1, 2, widths=(4, 8))
        >>> cascade = Cascade(net, net, liver_size=16, tumour_size=16, device="cpu")
        >>> case = (np.zeros((2, 16, 16), np.int16), np.zeros((2, 16, 16), np.uint8))
        >>> choose_crf_stages(cascade, [case], liver_crf={}, tumour_crf={})[0]
        'none'
    """
    arrays = [_case_arrays(case, i) for i, case in enumerate(cases)]
    trials = _crf_trials(cascade, arrays, liver_crf, tumour_crf, thresholds=(0.5,), sizes=(0,))
    return _crf_choice(trials), {stages: trial["dice"] for stages, trial in trials.items()}


def tumour_criterion(counts: np.ndarray, criterion: Criterion = "per_case") -> np.ndarray:
    """Pool tumour overlap counts of several cases into one validation score.

    Args:
        counts: (..., cases, 3) tumour voxels of both, of the prediction and of the truth
            per case (as :func:`~featsup.postprocess.tumour_counts_by_min_voxels` gives).
        criterion: ``"per_case"`` (the mean of each case's Dice; a tumour-free case scores
            1 or 0), ``"global"`` (the Dice of all voxels pooled) or ``"mean"`` (the mean
            of the two).

    Returns:
        The scores, shape ``counts.shape[:-2]``.

    Raises:
        ValueError: for an unknown ``criterion`` or a last axis other than 3.

    Example:
        >>> counts = np.array([[90, 100, 100], [0, 5, 0], [0, 0, 20]])
        >>> [round(float(tumour_criterion(counts, c)), 3) for c in TUMOUR_CRITERIA]
        [0.3, 0.8, 0.55]
    """
    check_choice("criterion", criterion, TUMOUR_CRITERIA)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim < 2 or counts.shape[-1] != 3:
        raise ValueError(f"counts: expected shape (..., cases, 3), got {counts.shape}")

    def dice_of(c: np.ndarray) -> np.ndarray:
        total = c[..., 1] + c[..., 2]
        return np.where(total > 0, 2 * c[..., 0] / np.maximum(total, 1), 1.0)

    per_case, pooled = dice_of(counts).mean(axis=-1), dice_of(counts.sum(axis=-2))
    return {"per_case": per_case, "global": pooled, "mean": (per_case + pooled) / 2}[criterion]


class StageOutput(NamedTuple):
    """What scoring a tumour threshold needs of one case's cascade run, (D, H, W) each."""

    labels: np.ndarray
    """uint8 labels as the cascade ran (its threshold, every tumour kept)."""
    liver_mask: np.ndarray
    """bool liver mask of the liver stage."""
    tumour_probability: np.ndarray
    """float32 tumour probability."""
    image: np.ndarray
    """float32 tumour-model input (what a tumour filter reads)."""


@dataclass(frozen=True)
class ValidationPass:
    """The tuned cascade's run over the validation cases, kept by :func:`tune_on_validation`.

    :func:`~featsup.inference.add_lesion_filter` scores its filter on these outputs
    instead of running the models on the same cases again. They equal what the tuned
    cascade's stages give on ``arrays`` (its heads, CRF stages and TTA), before the
    threshold, the smallest tumour and any filter.
    """

    arrays: list[tuple[np.ndarray, np.ndarray]]
    """The validation cases' (volume, labels), as tuned on."""
    crf: str
    """The CRF stages the outputs ran with."""
    outputs: list[StageOutput]
    """One per case of ``arrays``."""

    @staticmethod
    def estimate_bytes(cases: Sequence[Any]) -> int:
        """Bytes that keeping the outputs of ``cases`` costs: 10 a voxel.

        The labels and liver mask take 1 byte a voxel each, the tumour probability and the
        tumour model's input 4 each.

        Example:
            >>> case = (np.zeros((48, 256, 256), np.int16), np.zeros((48, 256, 256), np.uint8))
            >>> ValidationPass.estimate_bytes([case]) / 2**20
            30.0
        """
        return 10 * sum(_case_arrays(case, i)[0].size for i, case in enumerate(cases))

    def matches(self, arrays: Sequence[tuple[np.ndarray, np.ndarray]]) -> bool:
        """Whether ``arrays`` are the same cases, in the same order (equal arrays)."""
        return len(arrays) == len(self.arrays) and all(
            np.array_equal(v, v0) and np.array_equal(t, t0)
            for (v, t), (v0, t0) in zip(arrays, self.arrays, strict=True)
        )


def _crf_trials(
    cascade: Cascade,
    arrays: Sequence[tuple[np.ndarray, np.ndarray]],
    liver_crf: dict[str, Any] | None,
    tumour_crf: dict[str, Any] | None,
    *,
    thresholds: Sequence[float],
    sizes: Sequence[int],
    stages: Sequence[str] = ("none", "liver", "both"),
    criterion: Criterion = "global",
    keeps: Sequence[float] | None = None,
    cached: Sequence[StageOutput] | None = None,
    keep_outputs: dict[str, list[StageOutput]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the cascade over ``arrays`` once per CRF choice in ``stages``.

    Returns, per choice: ``"dice"`` (liver and tumour Dice per case, the cascade's
    threshold, every tumour kept), ``"counts"`` (an int64 array (thresholds, sizes,
    cases, 3): the tumour overlap counts of each case for each of ``thresholds``, then
    each of ``sizes`` as the smallest component kept) and ``"by_threshold"`` (those
    pooled by ``criterion``), so that the threshold and the smallest tumour are chosen
    without running the models again.

    With ``keeps`` (a cascade with a ``tumour_filter``), ``sizes`` holds one smallest
    tumour, applied first, and the counts' second axis is each of ``keeps`` as the
    filter's keep threshold instead; the filter scores each case's components once per
    threshold.

    ``cached`` (one stage's outputs per case, that stage the one of ``stages``) skips
    the models; ``keep_outputs`` (an empty dict) receives each choice's outputs per case.
    """
    from featsup.inference.bundle import cascade_arguments

    if not arrays:
        raise ValueError("cases: expected at least one case, got none")
    lesion_filter = cascade.tumour_filter if keeps is not None else None
    if keeps is not None and (lesion_filter is None or len(sizes) != 1):
        raise ValueError("keeps: expected a cascade with a tumour_filter and one smallest tumour")
    columns = list(keeps) if keeps is not None else list(sizes)
    crfs = {"none": (None, None), "liver": (liver_crf, None), "both": (liver_crf, tumour_crf)}
    trial = {}
    for choice in stages:
        options = {**cascade_arguments(cascade), "tumour_min_voxels": 0, "tumour_filter_keep": 0.0}
        options.update(liver_crf=crfs[choice][0], tumour_crf=crfs[choice][1])
        trial[choice] = Cascade(cascade.liver_model, cascade.tumour_model, **options)
    plain = trial.get("none") or Cascade(
        cascade.liver_model, cascade.tumour_model,
        **{**cascade_arguments(cascade), "liver_crf": None, "tumour_crf": None,
           "tumour_min_voxels": 0, "tumour_filter_keep": 0.0},
    )  # fmt: skip
    if cached is not None and (len(stages) != 1 or len(cached) != len(arrays)):
        raise ValueError("cached: expected one CRF choice and one output per case")
    labels: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {choice: [] for choice in stages}
    counts = {c: np.zeros((len(thresholds), len(columns), len(arrays), 3), np.int64)
              for c in stages}  # fmt: skip
    for c, (volume, truth) in enumerate(arrays):  # each model and CRF runs once per case
        if cached is not None:
            results = {stages[0]: cached[c]}
        else:
            ran, image = _case_trials(trial, plain, volume)
            results = {k: StageOutput(r.labels, r.liver_mask, r.tumour_probability, image)
                       for k, r in ran.items()}  # fmt: skip
        for choice, result in results.items():
            if keep_outputs is not None:
                keep_outputs.setdefault(choice, []).append(result)
            labels[choice].append((result.labels, truth))
            spots = plain._spots(result.image, result.liver_mask)  # None without spots
            for i, threshold in enumerate(thresholds):
                pred = label_tumours(result.liver_mask, result.tumour_probability,
                                     threshold=threshold, scope=plain.tumour_scope,
                                     min_inside=plain.tumour_min_inside)  # fmt: skip
                if lesion_filter is None:
                    if plain._candidates_are_thresholded:  # every size from one labelling
                        counts[choice][i, :, c] = tumour_counts_by_min_voxels(pred, truth, sizes)
                    else:  # the surface rule and spots act after the smallest tumour
                        counts[choice][i, :, c] = [
                            tumour_counts_by_min_voxels(
                                plain._candidates(drop_small_tumours(pred.copy(), m), spots),
                                truth, (0,),
                            )[0]
                            for m in sizes
                        ]  # fmt: skip
                    continue
                pred = plain._candidates(drop_small_tumours(pred, sizes[0]), spots)
                components, scores = score_tumours(pred, result.image, result.tumour_probability,
                                                   lesion_filter, result.liver_mask)  # fmt: skip
                for j, keep in enumerate(columns):
                    kept = drop_unlikely_tumours(pred, components, scores, keep, result.liver_mask)
                    counts[choice][i, j, c] = tumour_counts_by_min_voxels(kept, truth, (0,))[0]
    trials: dict[str, dict[str, Any]] = {}
    for choice in stages:
        grid = tumour_criterion(counts[choice], criterion)
        trials[choice] = {
            "dice": {
                stage: float(np.mean([dice_score(p >= k, t >= k) for p, t in labels[choice]]))
                for stage, k in LITS_STAGES.items()
            },
            "counts": counts[choice],
            "by_threshold": {
                float(t): {
                    (float(m) if keeps is not None else int(m)): float(d)
                    for m, d in zip(columns, row, strict=True)
                }
                for t, row in zip(thresholds, grid, strict=True)
            },
        }
    return trials


def _case_trials(
    trial: dict[str, Cascade], plain: Cascade, volume: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    """One case through the cascade of each CRF choice, sharing what they have in common.

    The liver stage runs once without a CRF ("none"); "liver" and "both" refine it with
    the one liver CRF, and share the tumour model's run on that liver; "both" adds the
    tumour CRF. Each result equals ``trial[choice](volume)``. Also returns the tumour
    model's (D, H, W) input image, which every choice shares.
    """
    base = plain.liver_stage(volume)
    results: dict[str, Any] = {}
    if "none" in trial:
        results["none"] = trial["none"].tumour_stage(base)
    crf = trial.get("liver") or trial.get("both")
    if crf is not None:
        refined = crf._refine_liver(base)
        without = trial.get("liver") or plain
        with_liver = without.tumour_stage(refined)
        if "liver" in trial:
            results["liver"] = with_liver
        if "both" in trial:
            results["both"] = trial["both"]._refine_tumour(with_liver, refined)
    return results, base.image


def _crf_choice(trials: dict[str, dict[str, Any]]) -> Literal["none", "liver", "both"]:
    """The liver CRF if it raises the liver Dice; the tumour one if it then raises the tumour's."""
    dice = {stages: trial["dice"] for stages, trial in trials.items()}
    use_liver = dice["liver"]["liver"] > dice["none"]["liver"]
    use_tumour = use_liver and dice["both"]["tumour"] > dice["liver"]["tumour"]
    return "both" if use_tumour else "liver" if use_liver else "none"


@dataclass
class Tuning:
    """What :func:`tune_on_validation` returns: the choices, their evidence, the cascade."""

    heads: HeadChoice
    """The head table (measured even when the heads were fixed)."""
    crf: Literal["none", "liver", "both"]
    crf_scores: dict[str, dict[str, float]]
    """Validation Dice per case of each CRF choice (empty when ``crf`` was given)."""
    tumour_threshold: float
    tumour_min_voxels: int
    threshold_scores: dict[float, dict[Any, float]]
    """Validation tumour Dice (pooled by ``criterion``) for each threshold, then smallest
    component, tried (empty when both were given)."""
    cascade: Cascade = field(repr=False)
    """A copy of the cascade with the chosen heads, CRF stages, threshold and smallest tumour."""
    criterion: Criterion = "global"
    """How the validation cases' tumour Dice was pooled for the threshold and smallest
    tumour (:func:`tumour_criterion`)."""
    tta_scores: dict[str, float] = field(default_factory=dict)
    """With ``tumour_tta="auto"``: the best validation tumour Dice (pooled by
    ``criterion``, over the threshold and smallest-tumour grid) of each tumour-stage
    TTA tried, keyed by its ``repr``; empty otherwise."""
    tumour_filter_keep: float | None = None
    """With a cascade's ``tumour_filter``: the keep threshold chosen (then
    :attr:`threshold_scores` holds, per threshold, the Dice of each keep threshold, not
    of each smallest tumour); None without a filter."""
    validation_pass: ValidationPass | None = field(default=None, repr=False, compare=False)
    """The tuned cascade's outputs on the validation cases, for
    :func:`~featsup.inference.add_lesion_filter` (not in :meth:`to_dict`), with
    ``tune_on_validation(keep_outputs=True)``; None without it, when the tuning ran no
    cascade (every choice given) or when it chose a tumour TTA other than the first."""

    @property
    def min_voxels_scores(self) -> dict[int, float]:
        """Validation tumour Dice per smallest component, at the chosen threshold.

        Empty with a tumour filter (see :attr:`filter_keep_scores`).
        """
        if self.tumour_filter_keep is not None:
            return {}
        return self.threshold_scores.get(self.tumour_threshold, {})

    @property
    def filter_keep_scores(self) -> dict[float, float]:
        """Validation tumour Dice per keep threshold of the filter, at the chosen threshold.

        Empty without a tumour filter.
        """
        if self.tumour_filter_keep is None:
            return {}
        return dict(self.threshold_scores.get(self.tumour_threshold, {}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the heads, the CRF stages and the validation Dice they were chosen by."""
        rows = [asdict(r) for r in self.heads.rows]
        dice = {s: [r["dice"] for r in rows if r["stage"] == s] for s in LITS_STAGES}
        return {
            "liver_head": self.cascade.liver_head,
            "tumour_head": self.cascade.tumour_head,
            "crf": self.crf,
            "tolerance": self.heads.tolerance,
            "val_dice_per_head": dice,
            "val_dice_by_crf": self.crf_scores,
            "tumour_threshold": self.tumour_threshold,
            "tumour_min_voxels": self.tumour_min_voxels,
            "tumour_criterion": self.criterion,
            "tumour_tta": self.cascade.tumour_tta,
            "val_tumour_dice_by_tta": self.tta_scores,
            "val_tumour_dice_by_min_voxels": self.min_voxels_scores,
            "tumour_filter_keep": self.tumour_filter_keep,
            "val_tumour_dice_by_filter_keep": self.filter_keep_scores,
            "val_tumour_dice_by_threshold": {
                str(t): row for t, row in self.threshold_scores.items()
            },
            "head_table": rows,
        }


def _fixed_heads(heads: object) -> tuple[StageHead, StageHead]:
    """``tune_on_validation``'s ``heads`` as a (liver, tumour) pair, None where chosen."""
    if heads is None:
        return None, None
    if not isinstance(heads, (tuple, list)) or len(heads) != 2:
        raise ValueError(f"heads: expected None or (liver_head, tumour_head), got {heads!r}")
    return check_head("heads[0]", heads[0]), check_head("heads[1]", heads[1])


def _candidates(name: str, value: Any, kind: type, low: float, high: float) -> list[Any]:
    """One value or a sequence of them, as a non-empty list within [low, high]."""
    values = [float(value)] if isinstance(value, Real) else [float(v) for v in value]
    if not values or any(not low <= v <= high for v in values):
        raise ValueError(f"{name}: expected one or more numbers in [{low}, {high}], got {value!r}")
    return [kind(v) for v in values]


def _best_postprocessing(
    grid: dict[float, dict[Any, float]], tolerance: float
) -> tuple[float, Any]:
    """The threshold and smallest tumour chosen from a grid of validation Dice.

    The threshold nearest 0.5 whose best Dice is within ``tolerance`` of the grid's best,
    then its smallest tumour of best Dice (the smallest on a tie). With a tumour filter
    the grid's columns are keep thresholds, and :func:`_best_keep` then chooses the keep.
    """
    best = max(d for row in grid.values() for d in row.values())
    near = [t for t, row in grid.items() if max(row.values()) >= best - tolerance]
    threshold = min(near, key=lambda t: (abs(t - 0.5), t))
    row = grid[threshold]
    return threshold, min(m for m, d in row.items() if d == max(row.values()))


def _best_keep(row: dict[Any, float], tolerance: float) -> float:
    """The tumour filter's keep chosen from one threshold's validation Dice by keep.

    The highest keep within ``tolerance`` of the best: the filter drops what it doubts
    unless validation says otherwise. On five validation cases the keeps often tie; on
    validation-type phantom cases of three splits the higher keeps held the better Dice
    per case (docs/cascade.md).

    >>> _best_keep({0.0: 0.70, 0.5: 0.752, 0.8: 0.750, 0.9: 0.74}, 0.005)
    0.8
    """
    best = max(row.values())
    return float(max(k for k, d in row.items() if d >= best - tolerance))


def _tta_choice(
    trial: Cascade,
    arrays: Sequence[tuple[np.ndarray, np.ndarray]],
    crf: str,
    grid: dict[float, dict[Any, float]],
    crfs: dict[str, dict[str, Any]],
    *,
    thresholds: Sequence[float],
    sizes: Sequence[int],
    criterion: Criterion,
    tolerance: float,
    keeps: Sequence[float] | None = None,
) -> tuple[TTA, dict[float, dict[Any, float]], dict[str, float]]:
    """The tumour TTA (of :data:`TUMOUR_TTAS`), its threshold grid and each one's best Dice.

    ``grid`` is the first TTA's (``trial`` runs with it); each other runs the cascade
    again with the ``crf`` stages. The cheapest within ``tolerance`` of the best wins.
    """
    from featsup.inference.bundle import cascade_arguments

    grids = {TUMOUR_TTAS[0]: grid}
    for tta in TUMOUR_TTAS[1:]:
        other = Cascade(trial.liver_model, trial.tumour_model,
                        **{**cascade_arguments(trial), "tumour_tta": tta})  # fmt: skip
        trials = _crf_trials(other, arrays, crfs["liver"], crfs["tumour"], thresholds=thresholds,
                             sizes=sizes, stages=(crf,), criterion=criterion,
                             keeps=keeps)  # fmt: skip
        grids[tta] = trials[crf]["by_threshold"]
    best = {tta: max(d for row in g.values() for d in row.values()) for tta, g in grids.items()}
    top = max(best.values())
    chosen = next(tta for tta in TUMOUR_TTAS if best[tta] >= top - tolerance)
    return chosen, grids[chosen], {repr(tta): d for tta, d in best.items()}


def tune_on_validation(
    cascade: Cascade,
    cases: Sequence[Any],
    *,
    tolerance: float = 0.005,
    heads: tuple[StageHead, StageHead] | None = None,
    crf: Literal["auto", "none", "liver", "both"] = "auto",
    liver_crf: dict[str, Any] | None = None,
    tumour_crf: dict[str, Any] | None = None,
    tumour_threshold: float | Sequence[float] = TUMOUR_THRESHOLDS,
    tumour_min_voxels: int | Sequence[int] = TUMOUR_MIN_VOXELS,
    criterion: Criterion = "global",
    tumour_tta: TTA | Literal["auto"] | None = None,
    tumour_filter_keep: float | Sequence[float] = TUMOUR_FILTER_KEEPS,
    keep_outputs: bool = False,
) -> Tuning:
    """Choose a cascade's heads, CRF stages, tumour threshold and smallest tumour, on validation.

    The heads as :func:`choose_heads` (the table is always measured; ``heads`` fixes the
    choice), then, with those heads, the CRF stages as :func:`choose_crf_stages` unless
    ``crf`` names them, then, with those, the cascade's ``tumour_threshold`` and
    ``tumour_min_voxels``: the threshold nearest 0.5 (the argmax) whose validation tumour
    Dice (pooled over the cases by ``criterion``) is within ``tolerance`` of the best
    pair's, so that a gain of noise size does not move it, then that threshold's smallest
    tumour of best Dice (the smallest on a tie); both measured on the same runs as the CRF
    stages. Each case is loaded once and each model runs once per CRF choice. With
    ``tumour_tta="auto"``, the tumour stage's test-time augmentation too
    (:data:`TUMOUR_TTAS`, cheapest first): the cascade runs again with the chosen CRF
    stages for each, and the cheapest whose best validation tumour Dice over the
    threshold and smallest-tumour grid is within ``tolerance`` of the best is kept,
    with its own threshold and smallest tumour. With a cascade's ``tumour_filter``, the
    smallest tumour is the least of ``tumour_min_voxels`` (0 by default) and the keep
    threshold of the filter is chosen in its place: the highest within ``tolerance`` of
    the chosen threshold's best.

    Args:
        cascade: the trained cascade; it is not changed.
        cases: validation cases, as for :func:`choose_heads`. Never test cases.
        tolerance: allowed validation Dice below the best head, and below the best
            threshold for one nearer 0.5.
        heads: ``(liver_head, tumour_head)`` to use whatever the table says; a None
            in it leaves that stage's head to the table. A head is 1..d or ``"mean"``
            (every head's probabilities averaged, from one pass: UNet++'s "accurate
            mode"), e.g. ``(None, "mean")``: the tumour heads averaged, the liver head
            chosen.
        crf: ``"auto"`` (choose on validation) or the stages to refine.
        liver_crf: the liver stage's CRF options (default ``CRF_PRESETS["liver"]``).
        tumour_crf: the tumour stage's (default ``CRF_PRESETS["tumour"]``).
        tumour_threshold: candidate tumour probability thresholds, or one to use.
        tumour_min_voxels: candidate smallest tumour components (voxels), or one to use.
        criterion: how the cases' tumour Dice is pooled for those two choices:
            ``"global"`` (the default), ``"per_case"`` or ``"mean"``
            (:func:`tumour_criterion`). Per case, a tumour-free case scores 1 or 0, and
            on the example's five validation cases that choice did worse on held-out
            validation cases than the global Dice (``benchmarks/tuning_criterion.py``),
            though better on two fresh test splits (docs/cascade.md).
        tumour_tta: the tumour stage's test-time augmentation (:class:`Cascade`'s
            ``tumour_tta``): None keeps the cascade's, ``"auto"`` chooses it on
            validation, else the one to use.
        tumour_filter_keep: with a cascade's ``tumour_filter``, candidate keep
            thresholds (:data:`~featsup.postprocess.TUMOUR_FILTER_KEEPS`), or one to use;
            unused without a filter.
        keep_outputs: keep the tuned cascade's outputs on ``cases``
            (:attr:`Tuning.validation_pass`), so that
            :func:`~featsup.inference.add_lesion_filter` scores its filter without
            running the models on them again. They cost 10 bytes a voxel of each case
            (:meth:`ValidationPass.estimate_bytes`: 30 MiB at 48 x 256 x 256, 0.5 GB at
            200 x 512 x 512), held as long as the returned tuning is.

    Returns:
        A :class:`Tuning`; its ``cascade`` is the copy to evaluate on test cases.

    Raises:
        ValueError: for a bad ``crf``, ``tolerance``, ``tumour_threshold``,
            ``tumour_min_voxels``, ``criterion`` or ``tumour_tta``, or cases as
            :func:`choose_heads` refuses them.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> net = UNetPlusPlus(1, 2, widths=(4, 8))
        >>> cascade = Cascade(net, net, liver_size=16, tumour_size=16, device="cpu")
        >>> case = (np.zeros((2, 16, 16), np.int16), np.zeros((2, 16, 16), np.uint8))
        >>> tuning = tune_on_validation(cascade, [case], crf="none", tumour_threshold=0.7)
        >>> tuning.to_dict()["liver_head"], tuning.cascade.tumour_threshold
        (1, 0.7)
    """
    from featsup.inference.bundle import cascade_arguments
    from featsup.postprocess import CRF_PRESETS

    check_choice("crf", crf, ("auto", "none", "liver", "both"))
    check_choice("criterion", criterion, TUMOUR_CRITERIA)
    auto_tta = tumour_tta == "auto"
    if tumour_tta is not None and not auto_tta:
        check_tta("tumour_tta", tumour_tta)
        cascade = Cascade(cascade.liver_model, cascade.tumour_model,
                          **{**cascade_arguments(cascade), "tumour_tta": tumour_tta})  # fmt: skip
    thresholds = _candidates("tumour_threshold", tumour_threshold, float, 0.0, 1.0)
    sizes = _candidates("tumour_min_voxels", tumour_min_voxels, int, 0, float("inf"))
    keeps: list[float] | None = None
    if cascade.tumour_filter is not None:
        keeps = _candidates("tumour_filter_keep", tumour_filter_keep, float, 0.0, 1.0)
        sizes = [min(sizes)]
    columns = keeps if keeps is not None else sizes
    arrays = [_case_arrays(case, i) for i, case in enumerate(cases)]
    fixed = _fixed_heads(heads)
    choice = choose_heads(cascade, arrays, tolerance=tolerance)
    liver_head = choice.liver_head if fixed[0] is None else fixed[0]
    tumour_head = choice.tumour_head if fixed[1] is None else fixed[1]
    options = {**cascade_arguments(cascade), "liver_head": liver_head, "tumour_head": tumour_head}
    if auto_tta:
        options["tumour_tta"] = TUMOUR_TTAS[0]
    crfs = {"liver": liver_crf or dict(CRF_PRESETS["liver"]),
            "tumour": tumour_crf or dict(CRF_PRESETS["tumour"])}  # fmt: skip
    trial = choice.cascade  # prepared with the chosen heads: reused, not rebuilt
    if fixed != (None, None) or trial is None or auto_tta:
        trial = Cascade(cascade.liver_model, cascade.tumour_model, **options)
    scores: dict[str, dict[str, float]] = {}
    grid: dict[float, dict[Any, float]] = {}
    tta_scores: dict[str, float] = {}
    threshold, column = thresholds[0], columns[0]
    kept: dict[str, list[StageOutput]] | None = {} if keep_outputs else None
    ran: ValidationPass | None = None
    if crf == "auto" or auto_tta or len(thresholds) * len(columns) > 1:  # else nothing to choose
        stages = ("none", "liver", "both") if crf == "auto" else (crf,)
        trials = _crf_trials(trial, arrays, crfs["liver"], crfs["tumour"],
                             thresholds=thresholds, sizes=sizes, stages=stages,
                             criterion=criterion, keeps=keeps, keep_outputs=kept)  # fmt: skip
        if crf == "auto":
            scores = {s: t["dice"] for s, t in trials.items()}
            crf = _crf_choice(trials)
        if kept is not None:  # the chosen stages' outputs; the other choices' go
            ran, kept = ValidationPass(arrays, crf, kept[crf]), None
        grid = trials[crf]["by_threshold"]
        if auto_tta:
            options["tumour_tta"], grid, tta_scores = _tta_choice(
                trial, arrays, crf, grid, crfs, thresholds=thresholds, sizes=sizes,
                criterion=criterion, tolerance=tolerance, keeps=keeps,
            )  # fmt: skip
            if options["tumour_tta"] != TUMOUR_TTAS[0]:  # the kept outputs ran without it
                ran = None
        threshold, column = _best_postprocessing(grid, tolerance)
        if keeps is not None:
            column = _best_keep(grid[threshold], tolerance)
    min_voxels = int(sizes[0] if keeps is not None else column)
    keep = float(column) if keeps is not None else None
    options["liver_crf"] = crfs["liver"] if crf != "none" else None
    options["tumour_crf"] = crfs["tumour"] if crf == "both" else None
    options["tumour_threshold"], options["tumour_min_voxels"] = threshold, min_voxels
    if keep is not None:
        options["tumour_filter_keep"] = keep
    tuned = Cascade(cascade.liver_model, cascade.tumour_model, **options)
    tuning = Tuning(choice, crf, scores, threshold, min_voxels, grid, tuned, criterion, tta_scores,
                    keep, ran)  # fmt: skip
    tuned.training_summary = {**(cascade.training_summary or {}), "tuning": tuning.to_dict()}
    return tuning
