"""Where a finished example run's tumour errors lie, on its validation cases only.

Loads ``RUN/cascade.pt`` (with every choice made on validation) and runs it on the
validation cases that ``RUN/metrics.json`` records; test cases are never loaded. Per case:
true and predicted tumour voxels and their overlap; the false positives' components,
how many lie outside the true liver, how many within ``--rim`` mm of its surface in 3D
(voxel spacing included, so the thick slices count), how many in the first or last slice
of the liver, their mean tumour probability against the true positives', and the HU
medians of false positives, liver and tumour.

    python benchmarks/tumour_errors.py outputs/run8_seed2 --json errors.json
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


def case_errors(cascade: Cascade, case, rim_mm: float) -> dict:
    """The error record of one case (see the module docstring)."""
    volume, truth = np.asarray(case.volume), np.asarray(case.labels)
    result = cascade(volume)
    pred, prob = result.labels == 2, result.tumour_probability
    tumour, liver = truth == 2, truth > 0
    fp, tp = pred & ~tumour, pred & tumour
    sizes = np.bincount(ndimage.label(fp, structure=np.ones((3, 3, 3)))[0].ravel())[1:]
    depth = ndimage.distance_transform_edt(liver, sampling=case.spacing)  # mm, 0 outside
    slices = np.flatnonzero(liver.any(axis=(1, 2)))
    z = np.nonzero(fp)[0]
    at_end = (np.minimum(z - slices[0], slices[-1] - z) == 0) if len(slices) else z < 0

    def median(mask: np.ndarray) -> float | None:
        return float(np.median(volume[mask])) if mask.any() else None

    return {
        "case": case.case_id,
        "tumour_true": int(tumour.sum()), "tumour_pred": int(pred.sum()),
        "overlap": int(tp.sum()), "fp": int(fp.sum()), "fp_components": len(sizes),
        "fp_largest": sorted(int(s) for s in sizes)[-3:],
        "fp_outside_liver": int((fp & ~liver).sum()),
        "fp_within_rim": int((fp & (depth <= rim_mm)).sum()),
        "fp_end_slices": int(at_end.sum()),
        "prob_fp": float(prob[fp].mean()) if fp.any() else None,
        "prob_tp": float(prob[tp].mean()) if tp.any() else None,
        "hu_fp": median(fp), "hu_liver": median(truth == 1), "hu_tumour": median(tumour),
    }  # fmt: skip


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted, or "-" where there was nothing to measure."""
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="an examples/lits_cascade.py --out folder")
    p.add_argument("--rim", type=float, default=6.0, help="mm from the liver's surface")
    p.add_argument("--json", type=Path, help="write the records here")
    args = p.parse_args(argv)
    val = example_split(args.run)["val"]
    cascade = Cascade.load(args.run / "cascade.pt", device="cpu")
    rows = [case_errors(cascade, load_case(case), args.rim) for case in val]
    print(f"{args.run}: validation cases, tumour threshold {cascade.tumour_threshold}, "
          f"smallest tumour {cascade.tumour_min_voxels}, tumour CRF "
          f"{cascade.tumour_crf is not None}")  # fmt: skip
    print(f"| case | true | predicted | overlap | false pos. | components (largest) | outside "
          f"liver | within {args.rim:g} mm of its surface | in its end slices | p false / true "
          "| HU false / liver / tumour |")  # fmt: skip
    print("|---" * 11 + "|")
    for r in rows:
        share = f" ({100 * r['fp_within_rim'] / r['fp']:.0f} %)" if r["fp"] else ""
        print(f"| {r['case']} | {r['tumour_true']} | {r['tumour_pred']} | {r['overlap']} | "
              f"{r['fp']} | {r['fp_components']} ({', '.join(map(str, r['fp_largest']))}) | "
              f"{r['fp_outside_liver']} | {r['fp_within_rim']}{share} | {r['fp_end_slices']} | "
              f"{fmt(r['prob_fp'], '.2f')} / {fmt(r['prob_tp'], '.2f')} | {fmt(r['hu_fp'], '.0f')}"
              f" / {fmt(r['hu_liver'], '.0f')} / {fmt(r['hu_tumour'], '.0f')} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "rim_mm": args.rim, "cases": rows}))


if __name__ == "__main__":
    main()
