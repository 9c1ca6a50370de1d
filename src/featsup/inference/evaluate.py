"""Run a cascade on LiTS cases once: predictions, figures and the LiTS metrics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featsup.data.lits import LitsCase, LoadedCase, load_case, save_prediction
from featsup.inference.cascade import Cascade
from featsup.metrics.lits import LitsMetrics

__all__ = ["CaseEvaluation", "evaluate_cases"]


@dataclass
class CaseEvaluation:
    """What :func:`evaluate_cases` returns."""

    records: list[dict[str, Any]]
    """Per case: ``{"case", "liver", "tumour", "timings"}`` (LiTS metrics per stage)."""
    summary: dict[str, dict[str, float]]
    """Per stage: :meth:`featsup.metrics.LitsMetrics.compute` over the cases."""
    loaded: list[LoadedCase] = field(repr=False)
    """With ``keep_loaded``, the cases as loaded (to score other heads on without reading
    them again); else empty."""

    @property
    def seconds_per_case(self) -> float:
        """Mean wall time of the cascade per case."""
        return sum(r["timings"]["total"] for r in self.records) / len(self.records)


def evaluate_cases(
    cascade: Cascade,
    cases: Sequence[LitsCase],
    *,
    out: str | os.PathLike[str] | None = None,
    figures: bool = True,
    surface: bool = True,
    keep_loaded: bool = False,
    verbose: bool = True,
) -> CaseEvaluation:
    """Run ``cascade`` on every case once and score it against the case's labels.

    With ``out``, each prediction is written as ``out/predictions/segmentation-N.nii.gz``
    on its source volume's grid (:func:`featsup.data.save_prediction`) and, with
    ``figures``, ``out/figures/case-N.png`` shows its most telling slice
    (:func:`featsup.viz.plot_cascade_case`, needs matplotlib).

    Args:
        cascade: the cascade, its heads and CRF stages set (on validation cases).
        cases: the cases to score: test cases, scored once.
        out: output folder, or None to write nothing.
        figures: with ``out``, draw one figure per case.
        surface: compute ASSD and MSD as well.
        keep_loaded: keep every loaded case in the result (memory: all the volumes).
        verbose: print one line per case.

    Returns:
        A :class:`CaseEvaluation`.

    Raises:
        ValueError: if ``cases`` is empty.
    """
    if not cases:
        raise ValueError("cases: expected at least one case, got none")
    scores, records, loaded = LitsMetrics(surface=surface), [], []
    for case in cases:
        this = load_case(case)
        loaded += [this] if keep_loaded else []
        volume, truth = this.volume, this.labels
        result = cascade(volume)
        record = scores.update(result.labels, truth, spacing=this.spacing, case_id=case.case_id)
        records.append({**record, "timings": result.timings})
        if out is not None:
            folder = Path(out)
            save_prediction(
                result.labels, case, folder / "predictions" / f"segmentation-{case.case_id}.nii.gz"
            )
            if figures:
                from featsup.viz import plot_cascade_case

                plot_cascade_case(
                    folder / "figures" / f"case-{case.case_id}.png", volume, result, truth=truth,
                    tumour_size=cascade.tumour_size, hu_window=cascade.preprocessing.hu_window,
                    title=f"case {case.case_id}",
                )  # fmt: skip
        if verbose:
            print(f"case {case.case_id}: liver Dice {record['liver']['dice']:.3f}, tumour Dice "
                  f"{record['tumour']['dice']:.3f}, {result.timings['total']:.1f} s")  # fmt: skip
    return CaseEvaluation(records, scores.compute(), loaded)
