"""Keep a tumour only if enough of it lies inside the liver mask? Validation cases only.

With ``tumour_scope="roi"`` (the example's) the tumour model sees the whole liver-ROI box
and a tumour component is kept when it touches the predicted liver mask, so that a
lesion the liver stage left out at the liver's edge is not cut. On runs 37-39's
validation cases (``benchmarks/tumour_errors.py``) many false positives are such
touching components that lie almost wholly outside the true liver, at 18-40 HU: dark
tissue beside the liver, at the density of a necrotic lesion's core. A lesion at the
liver's edge lies mostly inside the mask. ``label_tumours(min_inside=)`` keeps a
component only if at least that share of its voxels is inside the mask.

For each finished example run, its saved cascade (its heads, CRF stages) runs once over
the run's validation cases; for every tumour threshold, smallest share inside
(``--shares``) and smallest tumour, the tumour overlap counts of each case are kept. Two
rules then choose the post-processing, each by **leaving one validation case out**
(chosen on the other validation cases, scored on the held-out one):

- ``touch``: the share fixed at 0 (any voxel inside; the cascade until 2026-12-04), the
  threshold and smallest tumour chosen as ``tune_on_validation`` does (global Dice);
- ``fixed``: the share fixed at ``--fixed`` (0.5: the cascade's default since), the
  threshold and smallest tumour chosen as above;
- ``chosen``: the share chosen too: for each share, the example's threshold and smallest
  tumour; then the smallest share whose global Dice is within ``--tolerance`` of the best.

No test case is loaded. The last column gives what ``chosen`` picks on all five cases.

    python benchmarks/tumour_inside.py --examples outputs/gpu1/a_s37 outputs/gpu1/a_s38 \\
        outputs/gpu1/a_s39 --json docs/results/tumour_inside.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _example_run import example_split, write_json
from tuning_criterion import choose as choose_pair

from featsup import data as fd
from featsup.inference import Cascade, tumour_criterion
from featsup.postprocess import TUMOUR_MIN_VOXELS, TUMOUR_THRESHOLDS
from featsup.postprocess.components import label_tumours, tumour_counts_by_min_voxels

SHARES = (0.0, 0.25, 0.5, 0.75)
RULES = ("touch", "fixed", "chosen")


def run_counts(folder: Path, shares: tuple[float, ...]) -> dict[str, Any]:
    """Counts (thresholds, shares, sizes, validation cases, 3) of a run's saved cascade."""
    cascade = Cascade.load(folder / "cascade.pt", device="cpu")
    val = example_split(folder, ("val",))["val"]
    counts = np.zeros((len(TUMOUR_THRESHOLDS), len(shares), len(TUMOUR_MIN_VOXELS), len(val), 3),
                      np.int64)  # fmt: skip
    for c, case in enumerate(val):
        loaded = fd.load_case(case)
        result = cascade(loaded.volume)  # its own CRF stages; the labels are redone below
        for i, threshold in enumerate(TUMOUR_THRESHOLDS):
            for j, share in enumerate(shares):
                labels = label_tumours(
                    result.liver_mask, result.tumour_probability, threshold=threshold,
                    scope="roi", min_inside=share,
                )  # fmt: skip
                counts[i, j, :, c] = tumour_counts_by_min_voxels(labels, loaded.labels)
    return {"cases": [c.case_id for c in val], "scope": cascade.tumour_scope,
            "counts": counts.tolist()}  # fmt: skip


def choose(counts: np.ndarray, rule: str, tolerance: float, fixed: int = 0) -> tuple[int, int, int]:
    """Indices (threshold, share, size) that ``rule`` picks from (T, I, S, cases, 3) counts.

    ``fixed``: the share's index for the ``fixed`` rule.
    """
    best: list[tuple[float, int, int]] = []
    shares = {"touch": [0], "fixed": [fixed]}.get(rule, range(counts.shape[1]))
    for j in shares:  # each share: the example's threshold and smallest tumour (global)
        t, s = choose_pair(counts[:, j], "global", tolerance)
        best.append((float(tumour_criterion(counts[t, j, s], "global")), t, s))
    top = max(d for d, _, _ in best)
    k = next(k for k, (d, _, _) in enumerate(best) if d >= top - tolerance)
    return best[k][1], list(shares)[k], best[k][2]


def leave_one_out(counts: np.ndarray, rule: str, tolerance: float,
                  shares: tuple[float, ...], fixed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Each validation case scored with the post-processing ``rule`` chose on the others."""
    held, picks = [], []
    for k in range(counts.shape[3]):
        i, j, s = choose(np.delete(counts, k, axis=3), rule, tolerance, fixed)
        held.append(counts[i, j, s, k])
        picks.append([TUMOUR_THRESHOLDS[i], shares[j], TUMOUR_MIN_VOXELS[s]])
    held_rows = np.array(held)
    i, j, s = choose(counts, rule, tolerance, fixed)
    return {
        "per_case": float(tumour_criterion(held_rows, "per_case")),
        "global": float(tumour_criterion(held_rows, "global")),
        "held_out_dice": [float(tumour_criterion(r[None], "per_case")) for r in held_rows],
        "picks": picks,
        "all_cases_pick": [TUMOUR_THRESHOLDS[i], shares[j], TUMOUR_MIN_VOXELS[s]],
        "all_cases_global": float(tumour_criterion(counts[i, j, s], "global")),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=Path, nargs="+", required=True,
                   help="finished example runs (their --out), with tumour_scope roi")  # fmt: skip
    p.add_argument("--shares", type=float, nargs="+", default=list(SHARES),
                   help="shares inside the liver mask to try (0 first: 'touch')")  # fmt: skip
    p.add_argument("--fixed", type=float, default=0.5, help="the share of the 'fixed' rule")
    p.add_argument("--tolerance", type=float, default=0.005, help="the example's default")
    p.add_argument("--cache", type=Path, default=Path("outputs/tumour_inside_counts.json"))
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    shares = tuple(args.shares)
    if shares[0] != 0.0 or any(not 0 <= s <= 1 for s in shares):
        p.error(f"--shares: expected 0 first, then shares in [0, 1], got {args.shares}")
    if args.fixed not in shares:
        p.error(f"--fixed: expected one of --shares {shares}, got {args.fixed}")
    fixed = shares.index(args.fixed)

    cache = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    key = {str(f): f"{f}|{','.join(map(str, shares))}" for f in args.examples}
    for folder in args.examples:
        if key[str(folder)] not in cache:
            start = time.perf_counter()
            cache[key[str(folder)]] = run_counts(folder, shares)
            print(f"{folder}: validation cases run in {time.perf_counter() - start:.0f} s")
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            args.cache.write_text(json.dumps(cache))

    results: dict[str, Any] = {}
    print(f"\nleave one validation case out: held-out tumour Dice per case / global "
          f"(tolerance {args.tolerance}; shares {shares})")  # fmt: skip
    print(f"{'run':24}" + "".join(f"{r:>18}" for r in RULES) + "   'chosen' on all five")
    for folder in args.examples:
        record = cache[key[str(folder)]]
        if record["scope"] != "roi":
            raise SystemExit(f"{folder}: expected a run with --tumour-scope roi, got "
                             f"{record['scope']}")  # fmt: skip
        counts = np.array(record["counts"])
        row = {r: leave_one_out(counts, r, args.tolerance, shares, fixed) for r in RULES}
        results[str(folder)] = {"cases": record["cases"], **row}
        print(f"{str(folder)[-24:]:24}" + "".join(
            f"{row[r]['per_case']:>10.3f} /{row[r]['global']:.3f}" for r in RULES)
            + f"   {row['chosen']['all_cases_pick']}")  # fmt: skip
    diffs: dict[str, dict[str, list[float]]] = {}
    for rule in ("fixed", "chosen"):
        diffs[rule] = {m: [results[f][rule][m] - results[f]["touch"][m] for f in results]
                       for m in ("per_case", "global")}  # fmt: skip
        print(f"\n{rule} minus touch, mean +- sd over runs (each run's):")
        for m, d in diffs[rule].items():
            sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
            print(f"  {m:9} {np.mean(d):+.3f} +- {sd:.3f}   ("
                  + ", ".join(f"{x:+.3f}" for x in d) + ")")  # fmt: skip
    report = {"shares": shares, "fixed": args.fixed, "tolerance": args.tolerance,
              "runs": results, "minus_touch": diffs}  # fmt: skip
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
