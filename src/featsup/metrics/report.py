"""Reporting LiTS metrics: the summary table people read, and JSON that stays valid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["UNDEFINED_CONVENTION", "head_table", "json_safe", "summary_table"]

UNDEFINED_CONVENTION = (
    "Tumour-free cases (no label 2 in the truth) count in Dice per case (1 when no tumour "
    "is predicted, 0 otherwise) and in Dice global; RVD, ASSD and MSD are undefined when "
    "the truth or the prediction is empty, and their means leave such cases out (the "
    "counts are given). The LiTS challenge's script scores ASSD and MSD of such cases as 0 "
    "instead, which would reward a missed or an invented tumour."
)
"""How tumour-free cases and undefined values are scored (printed with every summary)."""


def _fmt(value: float, digits: int = 3, *, sign: bool = False) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def summary_table(summaries: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table of :meth:`MetricAccumulator.compute` summaries, one row per name.

    Args:
        summaries: name (for example ``"liver"``, ``"tumour"``) -> summary, computed
            with ``ignore_undefined=True`` for the notes on left-out cases.

    Returns:
        The table, then one line per name whose RVD / ASSD / MSD left cases out.

    Example:
        >>> print(summary_table({"liver": {"dice_per_case": 0.95, "dice_global": 0.96,
        ...     "voe": 0.09, "rvd": -0.01, "cases": 3.0}}))
        | | Dice per case | Dice global | VOE | RVD | ASSD mm | MSD mm |
        |---|---|---|---|---|---|---|
        | liver | 0.950 | 0.960 | 0.090 | -0.010 | - | - |
    """
    lines = [
        "| | Dice per case | Dice global | VOE | RVD | ASSD mm | MSD mm |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, m in summaries.items():
        surface = [_fmt(m[k], 2) if k in m else "-" for k in ("assd", "msd")]
        lines.append(
            f"| {name} | {_fmt(m['dice_per_case'])} | {_fmt(m['dice_global'])} | "
            f"{_fmt(m['voe'])} | {_fmt(m['rvd'], sign=True)} | " + " | ".join(surface) + " |"
        )
        rvd, dist = m.get("rvd_undefined_cases", 0), m.get("assd_undefined_cases", 0)
        if rvd or dist:
            notes.append(
                f"{name}: RVD undefined in {int(rvd)} case(s), ASSD/MSD in {int(dist)} (an "
                "empty truth or prediction); means over the rest"
            )
    return "\n".join(lines + notes)


def head_table(dice: Mapping[str, Sequence[float]], name: str) -> str:
    """The paper's Table 2 row: Dice per case of every head of every stage, in percent.

    Args:
        dice: stage (for example ``"liver"``, ``"tumour"``) -> Dice of heads X0,1..X0,d.
        name: the row's name (the variant, for example ``"ES-DS"``).

    Returns:
        A Markdown table with one header row and one row.

    Example:
        >>> print(head_table({"liver": [0.9, 0.95]}, "ES-DS"))
        | | Liver X0,1 | X0,2 |
        |---|---|---|
        | ES-DS | 90.0% | 95.0% |
    """
    header, cells = [""], []
    for stage, values in dice.items():
        header += [f"{stage.capitalize()} X0,1"] + [f"X0,{k}" for k in range(2, len(values) + 1)]
        cells += [f"{100 * v:.1f}%" for v in values]
    return "\n".join(
        ["| " + " | ".join(header).strip() + " |", "|" + "---|" * len(header),
         f"| {name} | " + " | ".join(cells) + " |"]
    )  # fmt: skip


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None and NumPy scalars as Python numbers.

    JSON has no infinity or NaN; Python's ``json`` would write invalid files.

    Example:
        >>> json_safe({"assd": float("inf"), "dice": np.float32(0.5), "cases": [1, float("nan")]})
        {'assd': None, 'dice': 0.5, 'cases': [1, None]}
    """
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
