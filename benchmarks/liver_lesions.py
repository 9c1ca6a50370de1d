"""Does the liver stage keep the lesions inside the liver? Paired runs, validation cases only.

The liver label of LiTS includes the tumours (liver = label > 0), and the tumour stage looks
for tumour only where the liver stage put liver (or next to it). A liver model that leaves a
large dark lesion out of its mask costs itself little Dice (lesions are a small share of
the liver) but costs the tumour stage the whole lesion. This script compares finished
example runs of two settings in pairs (the same ``--seed``, so the same phantom and split;
say, ``--liver-lesion-weight 1`` and ``5``, or ``--variant ES-DS`` and ``UN-DS``, as
``scripts/paired_runs_cuda.sh`` makes them), on their **validation** cases only:
each run's saved cascade (its own heads, CRF stages, threshold and smallest tumour, all
chosen on those cases) runs once per validation case, and for each run it reports

- liver Dice per case (mean);
- lesion coverage: the share of reference tumour voxels inside the predicted liver mask;
- lesions left out: reference lesions (26-connected) with less than half their voxels
  inside the mask, of all lesions;
- tumour Dice per case (mean) and global (pooled voxels),

then the paired differences (second run minus first) with their mean and sd over pairs.

    python benchmarks/liver_lesions.py --pairs outputs/w1_s24:outputs/w4_s24 \\
        outputs/w1_s25:outputs/w4_s25 --json docs/results/liver_lesion_weight.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _example_run import example_split, write_json
from tumour_errors import lesions

from featsup import data as fd
from featsup.inference import Cascade
from featsup.metrics import dice_score

METRICS = ("liver_dice", "coverage", "left_out", "tumour_dice", "tumour_global")


def run_scores(folder: Path, device: str) -> dict[str, Any]:
    """The metrics above of one finished run, on its validation cases."""
    cascade = Cascade.load(folder / "cascade.pt", device=device)
    cases, rows = example_split(folder, ("val",))["val"], []
    for case in cases:
        loaded = fd.load_case(case)
        result = cascade(loaded.volume)
        truth = np.asarray(loaded.labels)
        # per reference lesion (26-connected): its voxels, and those inside the liver mask
        found = lesions(np.asarray(loaded.volume), truth, result.liver_mask)
        rows.append({
            "case": case.case_id,
            "tumour": sum(x["voxels"] for x in found),
            "inside": sum(x["found"] for x in found),
            "lesions": len(found),
            "left_out": sum(x["found"] < 0.5 * x["voxels"] for x in found),
            "liver_dice": dice_score(result.labels > 0, truth > 0),
            "tumour_dice": dice_score(result.labels == 2, truth == 2),
            "tumour_overlap": int(np.sum((result.labels == 2) & (truth == 2))),
            "tumour_predicted": int(np.sum(result.labels == 2)),
        })  # fmt: skip
    pooled = {k: sum(r[k] for r in rows) for k in ("tumour", "inside", "lesions", "left_out")}
    overlap, predicted = (sum(r[k] for r in rows) for k in ("tumour_overlap", "tumour_predicted"))
    denominator = predicted + pooled["tumour"]
    return {
        "run": str(folder),
        "cases": rows,
        "liver_dice": statistics.fmean(r["liver_dice"] for r in rows),
        "coverage": pooled["inside"] / pooled["tumour"] if pooled["tumour"] else 1.0,
        "left_out": pooled["left_out"] / pooled["lesions"] if pooled["lesions"] else 0.0,
        "tumour_dice": statistics.fmean(r["tumour_dice"] for r in rows),
        "tumour_global": 2.0 * overlap / denominator if denominator else 1.0,
        "lesions": pooled["lesions"],
    }


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):+.3f} +- {sd:.3f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", required=True, metavar="FIRST:SECOND",
                        help="finished example runs of one --seed: FIRST (one setting) "
                        "and SECOND (the other)")  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="runs scored at once (processes)")
    parser.add_argument("--json", type=Path, help="write every case's counts here")
    args = parser.parse_args(argv)
    pairs = []
    for text in args.pairs:
        first, sep, second = text.partition(":")
        if not sep or not first or not second:
            parser.error(f"--pairs: expected FIRST:SECOND, got {text!r}")
        pairs.append((Path(first), Path(second)))
    for first, second in pairs:
        splits = [json.loads((f / "metrics.json").read_text())["split"]["val"]
                  for f in (first, second)]  # fmt: skip
        if splits[0] != splits[1]:
            raise SystemExit(f"{first} and {second}: different validation cases "
                             f"({splits[0]} and {splits[1]}); expected one --seed")  # fmt: skip
    start, folders = time.perf_counter(), [f for pair in pairs for f in pair]
    if args.workers > 1:  # spawned: CUDA does not survive a fork
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            scores = list(pool.map(run_scores, folders, [args.device] * len(folders)))
    else:
        scores = [run_scores(folder, args.device) for folder in folders]
    print(f"{len(folders)} runs scored in {time.perf_counter() - start:.0f} s\n")
    print(f"{'run':<34} {'cases':>5} {'lesions':>7} "
          + " ".join(f"{m:>13}" for m in METRICS))  # fmt: skip
    for run in scores:
        print(f"{run['run'][-34:]:<34} {len(run['cases']):>5} {run['lesions']:>7} "
              + " ".join(f"{run[m]:>13.3f}" for m in METRICS))  # fmt: skip
    results = [
        {"first": a, "second": b, "difference": {m: b[m] - a[m] for m in METRICS}}
        for a, b in zip(scores[::2], scores[1::2], strict=True)
    ]
    print("\nsecond minus first, mean +- sd over pairs:")
    for m in METRICS:
        diffs = [r["difference"][m] for r in results]
        print(f"  {m:<14} {_mean_sd(diffs)}   ({', '.join(f'{d:+.3f}' for d in diffs)})")
    report = {"pairs": results, "validation_cases_only": True}
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
