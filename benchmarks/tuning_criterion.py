"""Which pooling of the validation cases chooses the tumour threshold and smallest tumour?

The cascade example chooses two post-processing numbers on its validation cases: the
tumour probability threshold and the smallest tumour component kept
(``tune_on_validation``). Until now it scored each candidate pair by the tumour Dice
**per case**, where a tumour-free validation case scores 1 or 0: one false-positive
voxel anywhere in such a case moves a five-case mean by 0.2, so the smallest component
kept tends to be large (200-800 voxels in runs 21-26), and a 2 cm lesion is dropped.
The other pools are the **global** Dice (every case's voxels summed) and the **mean** of
the two.

This script compares the criteria without touching a test case: **leave one validation
case out**. For each finished example run, the cascade it saved (its heads and CRF
stages) runs once over the run's validation cases, and the tumour overlap counts of every
(threshold, smallest tumour) pair are kept per case. Then, for each held-out validation
case, each criterion chooses the pair on the other validation cases (the example's rule:
the threshold nearest 0.5 within ``--tolerance`` of the best, then its best smallest
tumour), and the held-out case is scored with that pair. The held-out cases of a run
give a Dice per case and a global Dice; "fixed" is the untuned cascade (threshold 0.5,
every tumour kept). The heads and CRF stages were chosen on all the validation cases
(the held-out one included) by the example; only the two numbers are left out.

    python benchmarks/tuning_criterion.py --examples outputs/run21 outputs/run22 \\
        outputs/run23_seed13 outputs/run24_seed13_liver outputs/run25_seed14 \\
        outputs/run26_seed14_liver --json docs/results/tuning_criterion.json

The counts are cached in ``--cache`` (per run folder), so that a second call only
re-analyses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _example_run import example_split, write_json

from featsup import data as fd
from featsup.inference import TUMOUR_CRITERIA, Cascade, tumour_criterion
from featsup.inference.heads import _best_postprocessing, _case_arrays, _crf_trials
from featsup.postprocess import TUMOUR_MIN_VOXELS, TUMOUR_THRESHOLDS

RULES = ("fixed", *TUMOUR_CRITERIA, "global_within")
"""``global_within``: the global criterion, with the smallest tumour taken as the smallest
within ``--tolerance`` of its threshold's best instead of the best (a near-tie no longer
moves it up to 800 voxels)."""


def run_counts(folder: Path) -> dict[str, Any]:
    """The tumour counts (thresholds, sizes, validation cases, 3) of a run's saved cascade."""
    cascade = Cascade.load(folder / "cascade.pt", device="cpu")
    val = example_split(folder)["val"]
    arrays = [_case_arrays(fd.load_case(case), i) for i, case in enumerate(val)]
    # "both": the run's own liver and tumour CRFs (None where it chose none)
    trials = _crf_trials(cascade, arrays, cascade.liver_crf, cascade.tumour_crf,
                         thresholds=TUMOUR_THRESHOLDS, sizes=TUMOUR_MIN_VOXELS,
                         stages=("both",))  # fmt: skip
    return {"cases": [c.case_id for c in val], "counts": trials["both"]["counts"].tolist()}


def dice_of(rows: np.ndarray) -> tuple[float, float]:
    """Dice per case and global Dice of (cases, 3) counts."""
    return (float(tumour_criterion(rows, "per_case")), float(tumour_criterion(rows, "global")))


def choose(counts: np.ndarray, rule: str, tolerance: float) -> tuple[int, int]:
    """Indices (threshold, size) that ``rule`` picks from (T, S, cases, 3) counts."""
    if rule == "fixed":
        return TUMOUR_THRESHOLDS.index(0.5), TUMOUR_MIN_VOXELS.index(0)
    within = rule.endswith("_within")
    scores = tumour_criterion(counts, rule.removesuffix("_within"))  # type: ignore[arg-type]
    grid = {t: dict(zip(TUMOUR_MIN_VOXELS, row, strict=True))
            for t, row in zip(TUMOUR_THRESHOLDS, scores, strict=True)}  # fmt: skip
    threshold, size = _best_postprocessing(grid, tolerance)
    if within:
        row = grid[threshold]
        size = min(m for m, d in row.items() if d >= max(row.values()) - tolerance)
    return TUMOUR_THRESHOLDS.index(threshold), TUMOUR_MIN_VOXELS.index(size)


def leave_one_out(counts: np.ndarray, rule: str, tolerance: float) -> dict[str, Any]:
    """Each validation case scored with the pair ``rule`` chose on the others."""
    held, picks = [], []
    for i in range(counts.shape[2]):
        rest = np.delete(counts, i, axis=2)
        t, s = choose(rest, rule, tolerance)
        held.append(counts[t, s, i])
        picks.append([TUMOUR_THRESHOLDS[t], TUMOUR_MIN_VOXELS[s]])
    per_case, pooled = dice_of(np.array(held))
    t, s = choose(counts, rule, tolerance)
    return {"per_case": per_case, "global": pooled, "picks": picks,
            "all_cases_pick": [TUMOUR_THRESHOLDS[t], TUMOUR_MIN_VOXELS[s]]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=Path, nargs="+", required=True,
                   help="finished example runs (their --out)")  # fmt: skip
    p.add_argument("--tolerance", type=float, default=0.005, help="the example's default")
    p.add_argument("--cache", type=Path, default=Path("outputs/tuning_criterion_counts.json"))
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    cache = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    for folder in args.examples:
        if str(folder) not in cache:
            start = time.perf_counter()
            cache[str(folder)] = run_counts(folder)
            print(f"{folder}: validation cases run in {time.perf_counter() - start:.0f} s")
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            args.cache.write_text(json.dumps(cache))

    results: dict[str, dict[str, Any]] = {}
    print(f"\nleave one validation case out: held-out tumour Dice per case / global "
          f"(tolerance {args.tolerance})")  # fmt: skip
    print(f"{'run':28}" + "".join(f"{r:>16}" for r in RULES))
    for folder in args.examples:
        counts = np.array(cache[str(folder)]["counts"])
        results[str(folder)] = {r: leave_one_out(counts, r, args.tolerance) for r in RULES}
        row = results[str(folder)]
        print(f"{folder.name:28}" + "".join(
            f"{row[r]['per_case']:>8.3f} /{row[r]['global']:.3f}" for r in RULES))  # fmt: skip
    table = {r: {m: [results[f][r][m] for f in results] for m in ("per_case", "global")}
             for r in RULES}  # fmt: skip
    print(f"{'mean over runs':28}" + "".join(
        f"{np.mean(table[r]['per_case']):>8.3f} /{np.mean(table[r]['global']):.3f}"
        for r in RULES))  # fmt: skip
    print("\npaired difference to per_case, mean (min .. max) over runs")
    paired: dict[str, dict[str, list[float]]] = {}
    for r in RULES:
        if r == "per_case":
            continue
        paired[r] = {m: list(np.subtract(table[r][m], table["per_case"][m]))
                     for m in ("per_case", "global")}  # fmt: skip
        print(f"  {r:10}" + "".join(
            f"  {m}: {np.mean(d):+.3f} ({min(d):+.3f} .. {max(d):+.3f})"
            for m, d in paired[r].items()))  # fmt: skip
    print("\npairs chosen on all the validation cases:")
    for folder, row in results.items():
        print(f"  {Path(folder).name:28}" + "".join(
            f"  {r}: {row[r]['all_cases_pick']}" for r in RULES[1:]))  # fmt: skip
    out = {"tolerance": args.tolerance, "thresholds": TUMOUR_THRESHOLDS,
           "sizes": TUMOUR_MIN_VOXELS, "runs": results, "paired_to_per_case": paired,
           "cases": {f: cache[f]["cases"] for f in results}}  # fmt: skip
    write_json(args.json, out, indent=1)
    return out


if __name__ == "__main__":
    main()
