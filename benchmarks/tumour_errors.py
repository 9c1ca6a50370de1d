"""Where a finished example run's tumour errors lie, on its validation, training or held-out
fresh cases (never its test cases).

Loads ``RUN/cascade.pt`` (with every choice made on validation) and runs it on the
validation cases that ``RUN/metrics.json`` records (``--split train``: its training
cases, ``--limit N`` the first N; whether the model learnt what it misses at all;
``--split fresh``: the held-out fresh phantom cases that ``validation_size.py`` and
``tumour_gap.py`` score, ``--fresh`` written under ``--work`` and the first ``--extra``
left out, so the same cases as theirs); test cases are never loaded. Per case:
true and predicted tumour voxels and their overlap; the false positives' components,
how many lie outside the true liver, how many within ``--rim`` mm of its surface in 3D
(voxel spacing included, so the thick slices count), how many in the first or last slice
of the liver, their mean tumour probability against the true positives', and the HU
medians of false positives, liver and tumour; and per run, the tumour Dice per case and
global (``--split train`` against the validation cases: does the model fit what it saw?).

Then the misses, per true lesion (26-connected component of the tumour label): its size,
its contrast (mean HU inside minus the mean of the liver in a 3-voxel ring around it)
and the share of its voxels the cascade found; summed over every run given, by contrast
(hypodense under -15 HU, near-isodense within 15 HU, hyperdense over 15 HU) and by size.

``RUN:CHECKPOINT`` scores another tumour model (a Trainer checkpoint, such as
``benchmarks/tumour_sweep.py``'s ``best.pt``) in RUN's cascade instead of its own, at
its deepest head, the argmax, no tumour CRF and no smallest-tumour rule, so that two
models are compared on themselves.

    python benchmarks/tumour_errors.py outputs/run8_seed2 --json errors.json
    python benchmarks/tumour_errors.py outputs/run29_seed17 outputs/run31_seed18
    python benchmarks/tumour_errors.py outputs/run33_seed19:outputs/sweep/MODEL/best.pt
    python benchmarks/tumour_errors.py outputs/s27/cb1.0_s40 --split train --limit 20
    python benchmarks/tumour_errors.py outputs/s38/t_s40 --split fresh --fresh 30 --extra 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _example_run import example_split
from scipy import ndimage
from validation_size import check_held_out_arguments, held_out_arguments, held_out_cases

from featsup.data import lesion_contrasts, load_case
from featsup.data.slices import CONTRAST_HU
from featsup.inference import Cascade
from featsup.inference.bundle import cascade_arguments
from featsup.metrics import dice_from_counts, dice_score
from featsup.training import load_model

# lesion contrast classes (HU, lesion mean minus the liver around it) and size bins (voxels)
CONTRASTS = {"hypodense": (-np.inf, -CONTRAST_HU), "near-isodense": (-CONTRAST_HU, CONTRAST_HU),
             "hyperdense": (CONTRAST_HU, np.inf)}  # fmt: skip
WHICH = {"val": "validation", "train": "training", "fresh": "held-out fresh"}
SIZES = {"< 100": (0, 100), "100-499": (100, 500), "500-1999": (500, 2000),
         ">= 2000": (2000, np.inf)}  # fmt: skip


def lesions(volume: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> list[dict]:
    """Per true lesion: voxels, voxels found, and contrast to the liver around it (HU)."""
    components, contrast = lesion_contrasts(volume, truth)
    out = []
    for k, box in enumerate(ndimage.find_objects(components), start=1):
        lesion, hu = components[box] == k, float(contrast[k])
        out.append({"voxels": int(lesion.sum()), "found": int((lesion & pred[box]).sum()),
                    "contrast_hu": None if np.isnan(hu) else hu})  # fmt: skip
    return out


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
        "overlap": int(tp.sum()), "dice": dice_score(pred, tumour),
        "fp": int(fp.sum()), "fp_components": len(sizes),
        "fp_largest": sorted(int(s) for s in sizes)[-3:],
        "fp_outside_liver": int((fp & ~liver).sum()),
        "fp_within_rim": int((fp & (depth <= rim_mm)).sum()),
        "fp_end_slices": int(at_end.sum()),
        "prob_fp": float(prob[fp].mean()) if fp.any() else None,
        "prob_tp": float(prob[tp].mean()) if tp.any() else None,
        "hu_fp": median(fp), "hu_liver": median(truth == 1), "hu_tumour": median(tumour),
        "lesions": lesions(volume, truth, pred),
    }  # fmt: skip


def recall_table(records: list[dict]) -> list[dict]:
    """Lesions found, by contrast class and by size, over every case's ``"lesions"``."""
    every = [lesion for r in records for lesion in r["lesions"]]
    rows = []
    for kind, bins, key in (("contrast", CONTRASTS, "contrast_hu"), ("size", SIZES, "voxels")):
        for name, (low, high) in bins.items():
            sel = [x for x in every if x[key] is not None and low <= x[key] < high]
            voxels, found = sum(x["voxels"] for x in sel), sum(x["found"] for x in sel)
            rows.append({"by": kind, "bin": name, "lesions": len(sel),
                         "touched": sum(x["found"] > 0 for x in sel), "voxels": voxels,
                         "recall": found / voxels if voxels else None})  # fmt: skip
    return rows


def dice_summary(records: list[dict]) -> dict:
    """Tumour Dice per case (a case with no tumour either way scores 1) and global."""
    if not records:
        return {"cases": 0, "per_case": None, "global": None}
    pooled = dice_from_counts(*(sum(r[k] for r in records)
                                for k in ("overlap", "tumour_pred", "tumour_true")))  # fmt: skip
    return {"cases": len(records), "per_case": float(np.mean([r["dice"] for r in records])),
            "global": pooled}  # fmt: skip


def run_cascade(spec: str) -> tuple[Path, Cascade]:
    """``RUN`` or ``RUN:CHECKPOINT``: the run's folder and the cascade to score."""
    run, _, checkpoint = spec.partition(":")
    cascade = Cascade.load(Path(run) / "cascade.pt", device="cpu")
    if checkpoint:  # the run's cascade, with the other model at its plainest settings
        tumour = load_model(checkpoint, map_location="cpu")
        options = {**cascade_arguments(cascade), "tumour_head": None, "tumour_crf": None,
                   "tumour_threshold": 0.5, "tumour_min_voxels": 0}  # fmt: skip
        cascade = Cascade(cascade.liver_model, tumour, **options)
    return Path(run), cascade


def split_cases(run: Path, args: argparse.Namespace) -> list:
    """The cases of ``args.split`` for one run (held-out fresh ones written on first use)."""
    if args.split == "fresh":
        return held_out_cases(run, args)
    return example_split(run, (args.split,))[args.split]


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted, or "-" where there was nothing to measure."""
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN[:CHECKPOINT]",
                   help="examples/lits_cascade.py --out folders")  # fmt: skip
    p.add_argument("--rim", type=float, default=6.0, help="mm from the liver's surface")
    p.add_argument("--json", type=Path, help="write the records here")
    p.add_argument("--split", choices=tuple(WHICH), default="val", help="the run's "
                   "validation cases, its training cases (does the model learn what it "
                   "misses at all?), or held-out fresh phantom cases; never its test "
                   "cases")  # fmt: skip
    p.add_argument("--limit", type=int, help="only the first N cases of the split")
    held_out_arguments(p, note="--split fresh: ")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit: expected at least 1, got {args.limit}")
    if args.split == "fresh":
        check_held_out_arguments(p, args)
    result: dict = {"rim_mm": args.rim, "runs": {}}
    for spec in args.runs:
        run, cascade = run_cascade(spec)
        cases = split_cases(run, args)[: args.limit]
        rows = [case_errors(cascade, load_case(case), args.rim) for case in cases]
        result["runs"][spec] = rows
        result.setdefault("dice", {})[spec] = summary = dice_summary(rows)
        print(f"\n{spec}: {WHICH[args.split]} cases, tumour threshold {cascade.tumour_threshold}, "
              f"smallest tumour {cascade.tumour_min_voxels}, tumour CRF "
              f"{cascade.tumour_crf is not None}; tumour Dice per case / global "
              f"{fmt(summary['per_case'], '.3f')} / {fmt(summary['global'], '.3f')}")  # fmt: skip
        print(f"| case | true | predicted | overlap | false pos. | components (largest) | "
              f"outside liver | within {args.rim:g} mm of its surface | in its end slices | "
              "p false / true | HU false / liver / tumour |")  # fmt: skip
        print("|---" * 11 + "|")
        for r in rows:
            share = f" ({100 * r['fp_within_rim'] / r['fp']:.0f} %)" if r["fp"] else ""
            print(f"| {r['case']} | {r['tumour_true']} | {r['tumour_pred']} | {r['overlap']} | "
                  f"{r['fp']} | {r['fp_components']} ({', '.join(map(str, r['fp_largest']))}) | "
                  f"{r['fp_outside_liver']} | {r['fp_within_rim']}{share} | "
                  f"{r['fp_end_slices']} | {fmt(r['prob_fp'], '.2f')} / "
                  f"{fmt(r['prob_tp'], '.2f')} | {fmt(r['hu_fp'], '.0f')} / "
                  f"{fmt(r['hu_liver'], '.0f')} / {fmt(r['hu_tumour'], '.0f')} |")  # fmt: skip
    table = recall_table([r for rows in result["runs"].values() for r in rows])
    result["recall"] = table
    print(f"\nTrue lesions found, over the {WHICH[args.split]} cases of {len(args.runs)} run(s)")
    print("| lesions by | bin | lesions | touched | voxels | voxels found |")
    print("|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['by']} | {row['bin']} | {row['lesions']} | {row['touched']} | "
              f"{row['voxels']} | {fmt(row['recall'], '.2f')} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
