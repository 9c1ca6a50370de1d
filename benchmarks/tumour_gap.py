"""Where the cascade's held-out tumour Dice is lost: the liver stage, false positives, or misses.

The example's tumour Dice on held-out phantom cases is well below its liver Dice
(docs/cascade.md). This script splits the gap with oracles, on fresh held-out phantom
cases (the same ones ``benchmarks/validation_size.py`` scores: seeds ``5000 + i`` after
the run's, the ``--extra`` first left out), with each finished run's saved cascade and
every choice it made on validation (heads, CRF stages, threshold, smallest tumour):

- ``chosen``: the cascade as the run saved it;
- ``true_liver``: the reference liver (``labels > 0``) instead of the liver stage, so the
  ROI, the tumour model's input and the share-inside rule all see the true liver;
- ``no_fp``: the cascade's tumours, with every predicted component that touches no
  reference tumour relabelled liver (every false-positive component gone);
- ``true_liver_no_fp``: both.

``true_liver`` minus ``chosen`` is what a perfect liver stage would add, ``no_fp`` minus
``chosen`` what removing every false-positive lesion would add; what ``true_liver_no_fp``
still misses is the tumour model's misses (lesions not found, found lesions' voxels).
Per run it also gives the share of reference tumour voxels inside the liver stage's mask
and the lesions found, by size (a lesion counts as found when a predicted tumour voxel
touches it), and by kind (:func:`lesion_kind`: mostly outside the liver stage's mask,
bright, near-isodense, small and dark, dark), which says what a lever would have to find.

    python benchmarks/tumour_gap.py outputs/run55 outputs/s27/x100_s40 --json F
    python benchmarks/tumour_gap.py outputs/run57_seed30 --figure 5010 docs/images/F.png

Only the fresh cases are loaded, never a run's test or validation cases.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from _example_run import write_json
from scipy import ndimage
from validation_size import (
    check_held_out_arguments,
    fresh_cases,
    held_out_arguments,
    held_out_cases,
)

from featsup import data as fd
from featsup.inference import Cascade, tumour_criterion
from featsup.viz import save_figure

ARMS = ("chosen", "true_liver", "no_fp", "true_liver_no_fp")
SIZES = ((0, 100), (100, 500), (500, 2000), (2000, None))
"""Lesion size bins, voxels (the upper bound excluded)."""


def without_false_positives(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``pred`` (bool, (D, H, W)) without its components (26-connected) that touch no
    ``truth`` voxel.

    Example:
        >>> pred = np.zeros((1, 1, 6), bool); pred[0, 0, [0, 1, 4]] = True
        >>> truth = np.zeros_like(pred); truth[0, 0, 1] = True
        >>> without_false_positives(pred, truth).astype(int).tolist()
        [[[1, 1, 0, 0, 0, 0]]]
    """
    components, n = ndimage.label(pred, structure=np.ones((3, 3, 3)))
    if n == 0:
        return pred.copy()
    hit = np.zeros(n + 1, bool)
    hit[np.unique(components[truth & pred])] = True
    hit[0] = False
    return hit[components]


def lesions_found(pred: np.ndarray, truth: np.ndarray) -> list[tuple[int, bool]]:
    """(voxels, found) of every reference lesion (26-connected component of ``truth``)."""
    components, n = ndimage.label(truth, structure=np.ones((3, 3, 3)))
    voxels = np.bincount(components.ravel(), minlength=n + 1)
    touched = np.bincount(components[pred].ravel(), minlength=n + 1)
    return [(int(voxels[i]), bool(touched[i] > 0)) for i in range(1, n + 1)]


KINDS = ("outside the liver mask", "bright", "near-isodense", "small dark", "dark")
"""Lesion kinds of :func:`lesion_kind`, in the order it tests them."""


def lesion_kind(voxels: int, contrast: float, inside: float) -> str:
    """What kind of lesion a reference lesion is, for the cascade.

    ``inside``: the share of its voxels in the liver stage's mask (under 0.5: "outside the
    liver mask", whatever its contrast); ``contrast``: its mean HU minus that of the
    reference liver around it (above +20: "bright", -20 to +20: "near-isodense"); a dark
    one under 100 voxels is "small dark", else "dark". A lesion with no liver around it
    (NaN contrast) counts as dark.

    Example:
        >>> [lesion_kind(50, -40.0, 0.2), lesion_kind(50, 30.0, 1.0), lesion_kind(50, -40.0, 1.0)]
        ['outside the liver mask', 'bright', 'small dark']
    """
    if inside < 0.5:
        return KINDS[0]
    if contrast > 20:
        return KINDS[1]
    if contrast >= -20:
        return KINDS[2]
    return KINDS[3] if voxels < 100 else KINDS[4]


def lesion_records(
    volume: np.ndarray, labels: np.ndarray, liver_mask: np.ndarray, pred: np.ndarray
) -> list[list[Any]]:
    """[voxels, contrast HU, share inside ``liver_mask``, found by ``pred``] of every
    reference lesion (26-connected), the contrast against the reference liver (label 1)
    within 3 voxels of it (NaN when none is)."""
    cube = np.ones((3, 3, 3), bool)
    components, _ = ndimage.label(labels == 2, structure=cube)
    out: list[list[Any]] = []
    for i, box in enumerate(ndimage.find_objects(components), start=1):
        grown = tuple(slice(max(b.start - 3, 0), b.stop + 3) for b in box)
        lesion = components[grown] == i
        ring = ndimage.binary_dilation(lesion, cube, iterations=3) & (labels[grown] == 1)
        hu = np.asarray(volume[grown], np.float64)
        contrast = float(hu[lesion].mean() - hu[ring].mean()) if ring.any() else float("nan")
        out.append([int(lesion.sum()), contrast, float(liver_mask[grown][lesion].mean()),
                    bool(pred[grown][lesion].any())])  # fmt: skip
    return out


def counts(pred: np.ndarray, truth: np.ndarray) -> list[int]:
    """[both, predicted, reference] tumour voxels."""
    return [int((pred & truth).sum()), int(pred.sum()), int(truth.sum())]


def case_gap(cascade: Cascade, volume: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Every arm's tumour counts on one case, with the liver stage's coverage and lesions."""
    truth = labels == 2
    liver = cascade.liver_stage(volume)
    chosen = cascade.tumour_stage(liver).labels == 2
    known = cascade.liver_stage(volume, mask=labels > 0)
    oracle = cascade.tumour_stage(known).labels == 2
    preds = {
        "chosen": chosen, "true_liver": oracle,
        "no_fp": without_false_positives(chosen, truth),
        "true_liver_no_fp": without_false_positives(oracle, truth),
    }  # fmt: skip
    return {
        "counts": {arm: counts(p, truth) for arm, p in preds.items()},
        "inside_liver_mask": int((truth & liver.mask).sum()),
        "lesions": {arm: lesions_found(preds[arm], truth) for arm in ("chosen", "true_liver")},
        "lesion_records": lesion_records(volume, labels, liver.mask, chosen),
    }


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Tumour Dice per case and global of every arm, coverage and lesions found by size."""
    out: dict[str, Any] = {}
    for arm in ARMS:
        rows = np.array([c["counts"][arm] for c in cases])
        out[arm] = {"per_case": float(tumour_criterion(rows, "per_case")),
                    "global": float(tumour_criterion(rows, "global"))}  # fmt: skip
    both, pred, truth = np.array([c["counts"]["chosen"] for c in cases]).sum(axis=0)
    out["recall"], out["precision"] = both / max(truth, 1), both / max(pred, 1)
    out["coverage"] = sum(c["inside_liver_mask"] for c in cases) / max(truth, 1)
    for arm in ("chosen", "true_liver"):
        lesions = [x for c in cases for x in c["lesions"][arm]]
        bins = {}
        for low, high in SIZES:
            inside = [f for v, f in lesions if v >= low and (high is None or v < high)]
            name = f"{low}-{high}" if high else f">={low}"
            bins[name] = {"lesions": len(inside), "found": int(sum(inside))}
        out[f"lesions_{arm}"] = bins
    records = [r for c in cases for r in c.get("lesion_records", [])]
    kinds = {kind: {"lesions": 0, "found": 0, "voxels": 0, "voxels_missed": 0} for kind in KINDS}
    for voxels, contrast, inside, found in records:
        row = kinds[lesion_kind(voxels, contrast, inside)]
        row["lesions"] += 1
        row["found"] += int(found)
        row["voxels"] += voxels
        row["voxels_missed"] += 0 if found else voxels
    out["lesion_kinds"] = kinds
    return out


def run(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One run's saved cascade on its held-out fresh cases, every arm."""
    held = held_out_cases(folder, args)
    cascade = Cascade.load(folder / "cascade.pt", device="cpu")
    start, cases = time.perf_counter(), []
    for case in held:
        loaded = fd.load_case(case)
        cases.append(
            {
                "case": case.case_id,
                **case_gap(cascade, np.asarray(loaded.volume), np.asarray(loaded.labels)),
            }
        )
    summary = summarise(cases)
    print(f"  {folder}: " + ", ".join(
        f"{arm} {summary[arm]['per_case']:.3f} / {summary[arm]['global']:.3f}" for arm in ARMS)
        + f"; recall {summary['recall']:.3f}, precision {summary['precision']:.3f}, coverage "
        f"{summary['coverage']:.3f} ({time.perf_counter() - start:.0f} s)",
        flush=True)  # fmt: skip
    return {"held_out": [c.case_id for c in held], "summary": summary, "cases": cases}


def figure(folder: Path, case_id: str, path: Path, args: argparse.Namespace) -> None:
    """One held-out case of a run: CT, reference, the cascade's labels and its tumour
    probability, on the slice with the most reference tumour, cropped to the liver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fresh = {c.case_id: c for c in fresh_cases(folder, args.work / folder.name / "fresh",
                                               args.fresh)}  # fmt: skip
    if case_id not in fresh:
        raise SystemExit(f"--figure: {case_id} is not one of {folder}'s fresh cases")
    loaded = fd.load_case(fresh[case_id])
    volume, labels = np.asarray(loaded.volume), np.asarray(loaded.labels)
    result = Cascade.load(folder / "cascade.pt", device="cpu")(volume)
    z = int(np.argmax((labels == 2).sum(axis=(1, 2))))
    rows, cols = np.nonzero(labels[z] > 0)
    box = (z, slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    tumour, liver = volume[box][labels[box] == 2], volume[box][labels[box] == 1]
    panels = (
        (np.clip(volume[box], -100, 400), "gray", f"CT, slice {z} (tumour {np.median(tumour):.0f}"
         f" HU, liver {np.median(liver):.0f})" if tumour.size else f"CT, slice {z}"),
        (labels[box], "viridis", "reference (liver, tumour)"),
        (result.labels[box], "viridis", "cascade"),
        (result.tumour_probability[box], "magma", "tumour probability"),
    )  # fmt: skip
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    for ax, (image, cmap, title) in zip(axes, panels, strict=True):
        limits = {"viridis": {"vmin": 0, "vmax": 2}, "magma": {"vmin": 0, "vmax": 1}}
        ax.imshow(image, cmap=cmap, **limits.get(cmap, {}))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{folder.name}, held-out case {case_id}", fontsize=10)
    save_figure(fig, path, dpi=80)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("examples", type=Path, nargs="+", help="finished example runs (their --out)")
    held_out_arguments(p)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--figure", nargs=2, metavar=("CASE", "PNG"), help="instead: draw one "
                   "held-out case of the (first) run to PNG")  # fmt: skip
    args = p.parse_args(argv)
    check_held_out_arguments(p, args)

    if args.figure:
        figure(args.examples[0], args.figure[0], Path(args.figure[1]), args)
        return {}
    runs: dict[str, Any] = {}
    for folder in args.examples:
        runs[str(folder)] = run(folder, args)
        write_json(args.json, {"fresh": args.fresh, "extra": args.extra, "runs": runs})
    print(f"\nheld-out tumour Dice per case / global ({args.fresh - args.extra} cases a run)")
    extra = ("recall", "precision", "coverage")
    head = "".join(f"{arm:>20}" for arm in ARMS) + "".join(f"{k:>10}" for k in extra)
    print(f"{'run':24}{head}")
    for folder, r in runs.items():
        s = r["summary"]
        print(f"{Path(folder).name:24}" + "".join(
            f"{s[a]['per_case']:>12.3f} /{s[a]['global']:.3f}" for a in ARMS)
            + "".join(f"{s[k]:>10.3f}" for k in extra))  # fmt: skip
    means: dict[str, Any] = {}
    for arm in ARMS:
        d = [np.mean([r["summary"][arm][m] - r["summary"]["chosen"][m]
                      for m in ("per_case", "global")]) for r in runs.values()]  # fmt: skip
        means[arm] = {
            m: float(np.mean([r["summary"][arm][m] for r in runs.values()]))
            for m in ("per_case", "global")
        }
        means[arm]["d_vs_chosen"] = [float(x) for x in d]
        print(f"{arm:18} mean {means[arm]['per_case']:.3f} / {means[arm]['global']:.3f};"
              f" d vs chosen {np.mean(d):+.3f}")  # fmt: skip
    for arm in ("chosen", "true_liver"):
        key = f"lesions_{arm}"
        first = runs[next(iter(runs))]["summary"][key]
        bins = {b: [sum(r["summary"][key][b][k] for r in runs.values())
                    for k in ("found", "lesions")] for b in first}  # fmt: skip
        means[key] = bins
        found = ", ".join(f"{b} vx {f}/{n}" for b, (f, n) in bins.items())
        print(f"lesions found, {arm}: {found}")
    kinds = {kind: {k: sum(r["summary"]["lesion_kinds"][kind][k] for r in runs.values())
                    for k in ("lesions", "found", "voxels", "voxels_missed")}
             for kind in KINDS}  # fmt: skip
    means["lesion_kinds"] = kinds
    print("\n| lesion kind (the cascade's) | lesions | found | missed | tumour voxels "
          "| in missed lesions |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, k in kinds.items():
        print(f"| {kind} | {k['lesions']} | {k['found']} | {k['lesions'] - k['found']} | "
              f"{k['voxels']} | {k['voxels_missed']} |")  # fmt: skip
    report = {"fresh": args.fresh, "extra": args.extra, "runs": runs, "means": means}
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
