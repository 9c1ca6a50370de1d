"""Would dropping tumour components on the liver's surface help? Never the test cases.

The example's false positives are confident (peak probability near 1) and hug the
liver's surface, many in its first or last slice, where partial volume with fat or lung
darkens the liver (``tumour_errors.py``, docs/cascade.md). A post-processing rule a user
might try, F(k, f) (:func:`featsup.postprocess.drop_surface_tumours`, or
``Cascade(tumour_surface=(k, f))``): drop every predicted tumour component (26-connected)
of which at least a share ``f`` lies in the outer shell of the *predicted* liver mask
(``k`` 6-connected erosions deep: ``k`` slices in z, ``k`` pixels in-plane); its voxels
become liver. For each finished run's saved cascade (every choice made on validation) this
scores, on the cases of ``--split``, the tumour Dice per case and global with no rule
and with each cell of the grid (``k`` in DEPTHS, ``f`` in FRACTIONS), the mean paired
difference d of each cell against no rule (the mean of the per-case and global
differences, over the runs), and the cell with the highest d (ties: no rule, then the
smaller ``k``, then the larger ``f``). ``--rule K F`` reports one cell against no rule
run by run and per split (runs of one phantom seed: several trainings of one split).
The components' confidence (peak and mean probability) is summarised too.

- ``--split val``: the run's validation cases (what the example makes its choices on);
- ``--split extra``: the first ``--extra`` of ``validation_size.py``'s fresh cases (those
  it adds to the validation cases; validation-type, never held out);
- ``--split val+extra``: both;
- ``--split fresh``: its held-out fresh cases (``--fresh``, ``--extra``, ``--work`` as
  for ``validation_size.py`` and ``tumour_gap.py``).

    python benchmarks/tumour_surface_filter.py outputs/run11_seed5 outputs/run12_seed6 \\
        --json surface.json
    python benchmarks/tumour_surface_filter.py outputs/s38/t_s40 outputs/s38/tr_s40 \\
        --split fresh --fresh 50 --extra 30 --work outputs/s39/vs --rule 1 0.95
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from _example_run import example_split, write_json
from scipy import ndimage
from tumour_gap import counts
from validation_size import (
    check_held_out_arguments,
    extra_cases,
    held_out_arguments,
    held_out_cases,
)

from featsup.data import load_case
from featsup.inference import Cascade
from featsup.inference.heads import tumour_criterion
from featsup.postprocess import drop_surface_tumours

FRACTIONS = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
DEPTHS = (1, 2, 3)
GRID = tuple((k, f) for k in DEPTHS for f in FRACTIONS)
WHICH = {
    "val": "validation",
    "extra": "validation-type fresh",
    "val+extra": "validation and validation-type fresh",
    "fresh": "held-out fresh",
}


def case_scores(cascade: Cascade, case, cells: tuple[tuple[int, float], ...] = GRID) -> dict:
    """One case's tumour counts with no rule and with each cell, and its components'
    confidence."""
    loaded = load_case(case)
    result = cascade(loaded.volume)
    truth = np.asarray(loaded.labels) == 2
    components, n = ndimage.label(result.labels == 2, np.ones((3, 3, 3)))
    p = result.tumour_probability
    found = [
        {"voxels": int(m.sum()), "peak": float(p[m].max()), "mean": float(p[m].mean()),
         "true": bool((m & truth).any())}
        for m in (components == i for i in range(1, n + 1))
    ]  # fmt: skip
    return {
        "case": case.case_id,
        "none": counts(result.labels == 2, truth),
        "cells": [counts(drop_surface_tumours(result.labels, k, f) == 2, truth) for k, f in cells],
        "components": found,
    }


def scores(rows: list[dict], cell: int | None) -> tuple[float, float]:
    """Tumour Dice per case and global of one run's case records, with no rule (None) or
    with the ``cell``-th cell."""
    c = np.array([r["none"] if cell is None else r["cells"][cell] for r in rows])
    return float(tumour_criterion(c, "per_case")), float(tumour_criterion(c, "global"))


def paired_d(rows: list[dict], cell: int) -> float:
    """The mean of the per-case and global Dice differences, the cell against no rule."""
    return float(np.mean(np.subtract(scores(rows, cell), scores(rows, None))))


def best_cell(runs: dict[str, dict], cells: tuple[tuple[int, float], ...] = GRID) -> dict:
    """The cell with the highest mean d over the runs; no rule unless one is above 0 (ties:
    the earlier cell, which is the smaller depth, then the larger fraction)."""
    best: dict[str, Any] = {"cell": None, "d": 0.0}
    for i, cell in enumerate(cells):
        d = float(np.mean([paired_d(r["cases"], i) for r in runs.values()]))
        if d > best["d"] + 1e-12:
            best = {"cell": list(cell), "d": d}
    return best


def split_cases(run: Path, args: argparse.Namespace) -> list:
    """The cases of ``args.split`` for one run (fresh ones written on first use)."""
    if args.split == "fresh":
        return held_out_cases(run, args)
    val = example_split(run, ("val",))["val"] if args.split != "extra" else []
    if args.split in ("extra", "val+extra"):
        return val + extra_cases(run, args)
    return val


def rule_report(runs: dict[str, dict], cell: int) -> dict:
    """One cell against no rule, run by run and per split (the mean over its runs)."""
    per_run = {
        name: {"none": scores(r["cases"], None), "rule": scores(r["cases"], cell),
               "d": paired_d(r["cases"], cell), "phantom_seed": r["phantom_seed"]}
        for name, r in runs.items()
    }  # fmt: skip
    groups: dict[Any, list[float]] = defaultdict(list)
    for row in per_run.values():
        groups[row["phantom_seed"]].append(row["d"])
    per_split = {str(seed): float(np.mean(ds)) for seed, ds in groups.items()}
    d = list(per_split.values())
    return {"runs": per_run, "splits": per_split, "mean_d": float(np.mean(d)),
            "sd_d": float(np.std(d, ddof=1)) if len(d) > 1 else None,
            "splits_above_0": int(sum(x > 0 for x in d))}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="examples/lits_cascade.py --out folders")
    p.add_argument("--split", choices=tuple(WHICH), default="val", help="the run's validation "
                   "cases, validation_size.py's validation-type fresh cases, both, or its "
                   "held-out ones; never the test cases")  # fmt: skip
    p.add_argument(
        "--rule",
        nargs=2,
        type=float,
        metavar=("K", "F"),
        help="report the cell F(K, F) against no rule, run by run and per split",
    )
    held_out_arguments(p, note="--split extra, val+extra, fresh: ")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.split != "val":
        check_held_out_arguments(p, args)
        if args.split != "fresh" and args.extra < 1:
            p.error(f"--extra: expected at least 1 with --split {args.split}")
    cells = GRID
    if args.rule is not None:
        k, f = int(args.rule[0]), args.rule[1]
        if k != args.rule[0] or k < 1 or not 0 < f <= 1:
            p.error(f"--rule: expected an integer K >= 1 and F in (0, 1], got {args.rule}")
        if (k, f) not in cells:
            cells = (*cells, (k, f))
    for run in args.runs:  # every run checked before the first is scored
        missing = [n for n in ("metrics.json", "cascade.pt") if not (run / n).is_file()]
        if missing:
            p.error(f"{run}: expected a finished examples/lits_cascade.py run, found no "
                    f"{' or '.join(missing)}")  # fmt: skip
    runs: dict[str, dict] = {}
    for run in args.runs:
        cascade = Cascade.load(run / "cascade.pt", device="cpu")
        seed = json.loads((run / "metrics.json").read_text()).get("phantom_seed")
        rows = [case_scores(cascade, c, cells) for c in split_cases(run, args)]
        runs[run.name] = {"phantom_seed": seed, "cases": rows}
        print(f"{run.name}: {WHICH[args.split]} cases {[r['case'] for r in rows]}", flush=True)
    print(f"\nTumour Dice per case / global, components with >= f of their voxels in the "
          f"liver's outer shell (k voxels deep) dropped; d: mean of the two differences "
          f"against no rule, mean over {len(runs)} run(s)")  # fmt: skip
    print("| k | f | " + " | ".join(runs) + " | mean d |")
    print("|---" * (len(runs) + 3) + "|")
    print(
        "| - | no rule | "
        + " | ".join("{:.3f} / {:.3f}".format(*scores(r["cases"], None)) for r in runs.values())
        + " | |"
    )
    for i, (depth, fraction) in enumerate(cells):  # not k, f: those name --rule's cell
        row = " | ".join("{:.3f} / {:.3f}".format(*scores(r["cases"], i)) for r in runs.values())
        d = np.mean([paired_d(r["cases"], i) for r in runs.values()])
        print(f"| {depth} | {fraction:g} | {row} | {d:+.3f} |")
    best = best_cell(runs, cells[: len(GRID)])
    print(f"best cell of the grid: {best['cell'] or 'no rule'} (mean d {best['d']:+.3f})")
    found = [c for r in runs.values() for case in r["cases"] for c in case["components"]]
    for true in (True, False):
        group = [c for c in found if c["true"] == true and c["voxels"] >= 200]
        if group:
            print(
                f"{'true' if true else 'false'} components of >= 200 voxels: {len(group)}, "
                f"peak probability median {np.median([c['peak'] for c in group]):.3f}, "
                f"mean probability median {np.median([c['mean'] for c in group]):.3f}"
            )
    report: dict[str, Any] = {"split": args.split, "cells": [list(c) for c in cells],
                              "runs": runs, "best": best}  # fmt: skip
    if args.split != "val":
        report["fresh"], report["extra"] = args.fresh, args.extra
    if args.rule is not None:
        report["rule"] = {"cell": [k, f], **rule_report(runs, cells.index((k, f)))}
        rule = report["rule"]
        print(f"\nF({k}, {f:g}) against no rule; d per split (the mean over its runs):")
        for name, row in rule["runs"].items():
            print(f"  {name} (phantom seed {row['phantom_seed']}): "
                  "{:.3f} / {:.3f} -> {:.3f} / {:.3f}, d {:+.3f}".format(
                      *row["none"], *row["rule"], row["d"]))  # fmt: skip
        sd = "" if rule["sd_d"] is None else f" +- {rule['sd_d']:.3f}"
        print(f"  per split {rule['splits']}; mean d {rule['mean_d']:+.3f}{sd}, above 0 in "
              f"{rule['splits_above_0']} of {len(rule['splits'])}")  # fmt: skip
    write_json(args.json, report, indent=1)
    return report


if __name__ == "__main__":
    main()
