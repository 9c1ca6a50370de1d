"""Paired held-out differences, split by split: the d that the cascade's rules decide on.

Reads the JSON that ``benchmarks/validation_size.py --json`` writes (its ``runs``: one
entry per finished example run, with the held-out tumour Dice per case and global of the
choice ``--choice``, ``base/grid`` by default), or a docs/results file of rules L-N, whose
``held_out_stage1`` holds those scores under ``arm`` and ``baseline`` (the example's
choice). A run belongs to the split of the
``--seed`` it was trained on, read from its name's ``_sN`` suffix (``win_s40``,
``rep_s40``: the example's ``--out`` folders are named so in docs/cascade.md). Runs are
picked by their name's prefix before ``_s``.

For each split, the baseline is the mean of its baseline runs (one training, or several
trained with ``--train-seed``) and the arm the mean of its arm runs; d is the mean of the
paired differences per case and global, arm minus baseline. It prints one row per split,
then the mean and sd of d and how many splits are above 0, and the root mean square of
the differences between baseline trainings of one split, where a split has two or more:
the spread that training alone gives.

Usage:
    python benchmarks/paired_d.py --baseline B.json [B2.json ...] --baseline-prefix win rep \\
        --arm A.json --arm-prefix j [--choice base/grid] [--arm-choice base/wide] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path

import numpy as np

METRICS = ("tumour_per_case", "tumour_global")
_SPLIT = re.compile(r"^(?P<prefix>.+)_s(?P<seed>\d+)$")


def runs_by_split(
    reports: list[dict], prefixes: list[str], choice: str = "base/grid"
) -> dict[int, list[tuple[float, float]]]:
    """{split seed: [(tumour Dice per case, global) of each run]} of the named runs.

    Args:
        reports: ``validation_size.py`` JSON objects.
        prefixes: run-name prefixes to keep (``"win"`` keeps ``win_s40``, ``win_s41``...).
        choice: which choice's scores (``"base/grid"``: the example's own).

    Raises:
        ValueError: if a kept run lacks ``choice``.

    Example:
        >>> report = {"runs": {"out/win_s40": {"base/grid": {"tumour_per_case": 0.5,
        ...           "tumour_global": 0.6}}, "out/other": {}}}
        >>> runs_by_split([report], ["win"])
        {40: [(0.5, 0.6)]}
    """
    found: dict[int, list[tuple[float, float]]] = {}
    for report in reports:
        if "runs" in report:
            entries = report["runs"].items()
        else:  # a rule's results file: {"held_out_stage1": {"arm": {run: scores}, ...}}
            held = report["held_out_stage1"]
            entries = ((k, {choice: v}) for part in held.values() for k, v in part.items())
        for key, value in entries:
            match = _SPLIT.match(Path(key).name)
            if match is None or match["prefix"] not in prefixes:
                continue
            if choice not in value:
                raise ValueError(f"run {key}: no {choice!r} scores; fix: --choice one of "
                                 f"{sorted(value)}")  # fmt: skip
            scores = value[choice]
            found.setdefault(int(match["seed"]), []).append(
                (float(scores[METRICS[0]]), float(scores[METRICS[1]]))
            )
    return found


def paired_d(
    baseline: dict[int, list[tuple[float, float]]], arm: dict[int, list[tuple[float, float]]]
) -> list[dict]:
    """One row per split that both hold: the means, the differences and d.

    Example:
        >>> rows = paired_d({1: [(0.4, 0.6), (0.5, 0.7)]}, {1: [(0.5, 0.7)]})
        >>> [round(rows[0][k], 3) for k in ("d_per_case", "d_global", "d")]
        [0.05, 0.05, 0.05]
    """
    rows = []
    for seed in sorted(set(baseline) & set(arm)):
        b, a = np.mean(baseline[seed], axis=0), np.mean(arm[seed], axis=0)
        diff = a - b
        rows.append({
            "seed": seed, "baseline_trainings": len(baseline[seed]),
            "arm_trainings": len(arm[seed]), "baseline": b.tolist(), "arm": a.tolist(),
            "d_per_case": float(diff[0]), "d_global": float(diff[1]), "d": float(diff.mean()),
        })  # fmt: skip
    return rows


def training_spread(baseline: dict[int, list[tuple[float, float]]]) -> float | None:
    """Root mean square of d between two trainings of one split, over every pair, or None.

    Example:
        >>> round(training_spread({1: [(0.5, 0.6), (0.4, 0.5)], 2: [(0.3, 0.3)]}), 3)
        0.1
    """
    ds = [np.mean(np.subtract(x, y)) for runs in baseline.values()
          for x, y in itertools.combinations(runs, 2)]  # fmt: skip
    return float(np.sqrt(np.mean(np.square(ds)))) if ds else None


def _load(files: list[Path]) -> list[dict]:
    return [json.loads(f.read_text()) for f in files]


def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments, pair the runs, print and optionally save the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, nargs="+", required=True, help="JSON files")
    p.add_argument("--baseline-prefix", nargs="+", default=["win"], help="run-name prefixes")
    p.add_argument("--arm", type=Path, nargs="+", required=True, help="JSON files")
    p.add_argument("--arm-prefix", nargs="+", required=True, help="run-name prefixes")
    p.add_argument("--choice", default="base/grid", help="validation_size.py's choice key")
    p.add_argument("--arm-choice", help="the arm's choice key, when it is not the "
                   "baseline's (base/wide against base/grid of the same runs)")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the rows and the summary here")
    args = p.parse_args(argv)
    baseline = runs_by_split(_load(args.baseline), args.baseline_prefix, args.choice)
    arm = runs_by_split(_load(args.arm), args.arm_prefix, args.arm_choice or args.choice)
    rows = paired_d(baseline, arm)
    if not rows:
        p.error(f"no split holds both baseline runs {args.baseline_prefix} (splits "
                f"{sorted(baseline)}) and arm runs {args.arm_prefix} "
                f"(splits {sorted(arm)})")  # fmt: skip
    print("| split | baseline (trainings) | arm (trainings) | d per case / global | d |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['seed']} | {r['baseline'][0]:.3f} / {r['baseline'][1]:.3f} "
              f"({r['baseline_trainings']}) | {r['arm'][0]:.3f} / {r['arm'][1]:.3f} "
              f"({r['arm_trainings']}) | {r['d_per_case']:+.3f} / {r['d_global']:+.3f} | "
              f"{r['d']:+.3f} |")  # fmt: skip
    ds = [r["d"] for r in rows]
    summary = {
        "mean_d": float(np.mean(ds)),
        "sd_d": float(np.std(ds, ddof=1)) if len(ds) > 1 else None,
        "above_0": sum(d > 0 for d in ds), "splits": len(ds),
        "baseline_training_spread": training_spread(baseline),
    }  # fmt: skip
    sd = "-" if summary["sd_d"] is None else f"{summary['sd_d']:.3f}"
    print(f"\nmean d {summary['mean_d']:+.3f} +- {sd}, above 0 in {summary['above_0']} of "
          f"{summary['splits']} splits")  # fmt: skip
    if summary["baseline_training_spread"] is not None:
        print(f"two baseline trainings of one split differ by d of root mean square "
              f"{summary['baseline_training_spread']:.3f}")  # fmt: skip
    result = {"choice": args.choice, "arm_choice": args.arm_choice or args.choice, "rows": rows,
              "summary": summary}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
