"""Would dropping tumour components on the liver's surface help? Validation cases only.

The example's false positives are confident (peak probability near 1) and hug the
liver's surface, many in its first or last slice, where partial volume with fat or lung
darkens the liver (``tumour_errors.py``, docs/cascade.md). A post-processing rule a user
might try: drop every predicted tumour component of which at least a fraction ``f`` lies
in the outer shell of the *predicted* liver mask (``k`` 6-connected erosions deep: ``k``
slices in z, ``k`` pixels in-plane). For each finished run's saved cascade (every choice
made on validation) and its validation cases (test cases are never loaded), this prints
the validation tumour Dice per case for each ``k`` and ``f`` (``f`` = 1.01: no rule),
and the same for the confidence of the components (their peak and mean probability).

    python benchmarks/tumour_surface_filter.py outputs/run11_seed5 outputs/run12_seed6 \\
        --json surface.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _example_run import example_split
from scipy import ndimage

from featsup.data import load_case
from featsup.inference import Cascade
from featsup.metrics import dice_score

FRACTIONS = (1.01, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
DEPTHS = (1, 2, 3)


def case_scores(cascade: Cascade, case) -> dict:
    """{depth: Dice per fraction} and the components' confidence, for one case."""
    loaded = load_case(case)
    result = cascade(loaded.volume)
    truth, liver = loaded.labels == 2, result.labels > 0
    components, n = ndimage.label(result.labels == 2, np.ones((3, 3, 3)))
    sizes = np.maximum(np.bincount(components.ravel(), minlength=n + 1), 1)
    scores = {}
    for depth in DEPTHS:
        shell = liver & ~ndimage.binary_erosion(liver, iterations=depth)
        share = np.bincount(components[shell], minlength=n + 1) / sizes
        row = []
        for fraction in FRACTIONS:
            keep = share < fraction
            keep[0] = False
            row.append(dice_score(keep[components], truth))
        scores[depth] = row
    p = result.tumour_probability
    found = [
        {"voxels": int(m.sum()), "peak": float(p[m].max()), "mean": float(p[m].mean()),
         "true": bool((m & truth).any())}
        for m in (components == i for i in range(1, n + 1))
    ]  # fmt: skip
    return {"case": case.case_id, "dice": scores, "components": found}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="examples/lits_cascade.py --out folders")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    records = {}
    for run in args.runs:
        cascade = Cascade.load(run / "cascade.pt", device="cpu")
        records[run.name] = [case_scores(cascade, c) for c in example_split(run, ("val",))["val"]]
        print(f"{run.name}: validation cases {[r['case'] for r in records[run.name]]}", flush=True)
    print(f"\nValidation tumour Dice per case, components with >= f of their voxels in the "
          f"liver's outer shell dropped (f = {FRACTIONS})")  # fmt: skip
    for depth in DEPTHS:
        means = {
            r: np.mean([c["dice"][depth] for c in cases], axis=0) for r, cases in records.items()
        }
        print(f"shell {depth} voxel(s) deep")
        for run, row in means.items():
            print(f"  {run}: " + " ".join(f"{v:.3f}" for v in row))
        print("  mean over runs: " + " ".join(f"{v:.3f}" for v in np.mean(list(means.values()), 0)))
    found = [c for cases in records.values() for r in cases for c in r["components"]]
    for true in (True, False):
        group = [c for c in found if c["true"] == true and c["voxels"] >= 200]
        if group:
            print(
                f"{'true' if true else 'false'} components of >= 200 voxels: {len(group)}, "
                f"peak probability median {np.median([c['peak'] for c in group]):.3f}, "
                f"mean probability median {np.median([c['mean'] for c in group]):.3f}"
            )
    if args.json:
        args.json.write_text(json.dumps({"fractions": FRACTIONS, "runs": records}, indent=1))
    return records


if __name__ == "__main__":
    main()
