"""Does the tumour model rank small lesions above the liver's noise, and would a plain
dark-spot detector beside it help? On validation-type cases.

For each finished example run on the phantom (its ``--out``), the saved cascade runs on
the first ``--cases`` of ``validation_size.py``'s fresh cases that it adds to validation
(validation-type: never a rule's held-out block when ``--extra`` is that rule's, never a
test case). Three scores are read on each case, by one protocol:

- **model**: the cascade's tumour probability (its chosen head, before the threshold and
  the smallest-tumour rule);
- **dark**: :func:`liver_darkness`, how far the liver's local mean (sigma 3.5 mm) lies
  below its background (sigma 12 mm), both over the cascade's liver mask, so that the
  fat around it does not count;
- **dark_true**: the same over the reference liver (what a perfect liver stage would give).

**FROC, in the liver's interior.** Both lesions and false sites are read at least
``--depth`` mm inside the reference liver, where noise, not the surface, makes false
positives: a lesion (26-connected component of the tumour label) scores the maximum over
its voxels there (a lesion with none there is left out), a false site is a local maximum
(3 x 7 x 7 voxels) of the score there, in lesion-free liver 3 voxels from any lesion.
The default, 8 mm, leaves out the slice next to the liver's top and bottom (5.2 mm deep
at the example's spacing), which mixes with the lung at the dome and is as dark as a
lesion. Printed per lesion size:
the share of lesions scoring above the score that 0.1, 0.3, 1 and 3 false sites per case
reach (sensitivity at a fixed false-site rate: a threshold-free comparison of rankings).

**Spots added.** :func:`dark_spots` (seeds at least ``--depth`` mm inside the cascade's
liver mask, regions above half the threshold, at most 500 voxels; optionally kept only
where the model's probability reaches a floor) added to the cascade's tumours at several
thresholds; the tumour Dice per case and global of each, against the cascade alone.

    python benchmarks/lesion_froc.py outputs/s46/b_s42 outputs/s46/b_s0 --cases 20 \\
        --work outputs/s46/vsa --fresh 310 --extra 270 --json docs/results/lesion_froc.json \\
        --figure docs/images/lesion_froc.png
    python benchmarks/lesion_froc.py --json docs/results/lesion_froc.json \\
        --figure docs/images/lesion_froc.png --replot     # redraw only

What it leaves out, on purpose: the liver's outer ``--depth`` mm, for lesions and false
sites alike (where the darkness score fails, at the fat and the lung), and the
segmentation of what is found (a detection count, not a Dice). Lesions brighter than the
liver stay in the counts, where the darkness score cannot see them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _example_run import write_json
from scipy import ndimage
from validation_size import check_held_out_arguments, extra_cases, held_out_arguments

from featsup.data import load_case
from featsup.inference import Cascade, tumour_criterion
from featsup.postprocess.spots import seeded_regions
from featsup.viz import save_figure

SIZES = {"< 100": (0, 100), "100-499": (100, 500), ">= 500": (500, np.inf)}
RATES = (0.1, 0.3, 1.0, 3.0)
#: the scores compared, and their names in the figure.
SCORES = {"model": "tumour model", "dark": "darkness, the cascade's liver",
          "dark_true": "darkness, the true liver"}  # fmt: skip
#: (darkness threshold in HU, the model's probability floor or None) of the spots tried.
SPOTS = tuple((t, floor) for floor in (None, 0.2) for t in (15.0, 20.0, 25.0, 30.0, 40.0))
_CUBE = np.ones((3, 3, 3), bool)


def _masked_mean(
    volume: np.ndarray, mask: np.ndarray, sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian mean of ``volume`` over ``mask`` only (normalised convolution), and the
    share of the kernel inside the mask."""
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    total = ndimage.gaussian_filter(np.where(mask, volume, 0).astype(np.float32), sigma)
    return total / np.maximum(weight, np.float32(1e-3)), weight


def liver_darkness(volume_hu: np.ndarray, liver: np.ndarray, spacing, *, scale_mm: float = 3.5,
                   background_mm: float = 12.0) -> np.ndarray:  # fmt: skip
    """(D, H, W) float32: HU by which the liver's local Gaussian mean (sigma ``scale_mm``
    on every axis) lies below its background (sigma ``background_mm``), both over the bool
    ``liver`` mask only; 0 outside it and where over half the local kernel falls outside.

    >>> liver = np.zeros((9, 40, 40), bool)
    >>> liver[1:8, 4:36, 4:36] = True
    >>> ct = np.where(liver, 110.0, -100.0).astype(np.float32)
    >>> ct[4:6, 17:24, 17:24] = 60.0  # a 1-cm spot 50 HU below the liver
    >>> d = liver_darkness(ct, liver, (5.0, 1.5, 1.5))
    >>> round(float(d[4, 20, 20])), bool(abs(d[4, 6, 20]) < 2), float(d[0, 0, 0])
    (27, True, 0.0)
    """
    volume_hu, liver = np.asarray(volume_hu, np.float32), np.asarray(liver, bool)
    if volume_hu.ndim != 3 or volume_hu.shape != liver.shape:
        raise ValueError(f"volume_hu, liver: expected one (D, H, W) shape, got "
                         f"{volume_hu.shape} and {liver.shape}")  # fmt: skip
    mm = np.asarray(spacing, dtype=np.float64)
    if mm.shape != (3,) or not np.all(mm > 0) or scale_mm <= 0 or background_mm <= 0:
        raise ValueError(f"spacing, scale_mm, background_mm: expected positive mm, got "
                         f"{tuple(spacing)}, {scale_mm}, {background_mm}")  # fmt: skip
    local, share = _masked_mean(volume_hu, liver, scale_mm / mm)
    background, _ = _masked_mean(volume_hu, liver, background_mm / mm)
    out = background - local
    out[~liver | (share <= 0.5)] = 0.0
    return out


def dark_spots(
    darkness: np.ndarray,
    liver: np.ndarray,
    depth: np.ndarray,
    threshold: float,
    *,
    min_depth_mm: float = 8.0,
    max_voxels: int = 500,
    probability: np.ndarray | None = None,
    floor: float | None = None,
) -> np.ndarray:
    """Bool mask of dark spots: 26-connected regions of ``liver`` where ``darkness`` is at
    least ``threshold / 2``, holding a seed of at least ``threshold`` that lies
    ``min_depth_mm`` or more inside the mask (``depth``: its distance map, mm), of at most
    ``max_voxels`` voxels; with ``floor``, only where ``probability`` reaches it.

    >>> liver = np.ones((3, 9, 9), bool)
    >>> dark = np.zeros(liver.shape, np.float32)
    >>> dark[1, 3:6, 3:6], dark[1, 4, 4] = 13.0, 30.0
    >>> depth = np.full(liver.shape, 9.0)
    >>> [int(dark_spots(dark, liver, depth, t).sum()) for t in (25.0, 31.0)]
    [9, 0]
    """
    seeds = (darkness >= threshold) & (depth >= min_depth_mm)
    if not seeds.any():
        return np.zeros(liver.shape, bool)
    regions, keep = seeded_regions((darkness >= threshold / 2) & liver, seeds, max_voxels)
    if floor is not None and probability is not None:
        peak = ndimage.maximum(probability, regions, index=np.arange(len(keep)))
        keep &= np.asarray(peak) >= floor
    return keep[regions]


def lesion_peaks(
    score: np.ndarray, truth: np.ndarray, where: np.ndarray | None = None
) -> list[tuple[int, float]]:
    """(voxels, the score's maximum inside) per 26-connected lesion of bool ``truth``; with
    ``where``, the maximum over the lesion's voxels in ``where``, and lesions with none
    there left out (the region both scores are compared in)."""
    components, _ = ndimage.label(truth, structure=_CUBE)
    out = []
    for k, box in enumerate(ndimage.find_objects(components), start=1):
        lesion = components[box] == k
        inside = lesion if where is None else lesion & where[box]
        if inside.any():
            out.append((int(lesion.sum()), float(score[box][inside].max())))
    return out


def interior(labels: np.ndarray, spacing, depth_mm: float) -> np.ndarray:
    """Bool: at least ``depth_mm`` inside the reference liver (``labels > 0``)."""
    return ndimage.distance_transform_edt(labels > 0, sampling=spacing) >= depth_mm


def site_region(labels: np.ndarray, deep: np.ndarray) -> np.ndarray:
    """Bool: where false sites are read, in ``deep`` (:func:`interior`) and 3 voxels from
    any lesion (``labels == 2``); one region for every score of a case."""
    return deep & ~ndimage.binary_dilation(labels == 2, structure=_CUBE, iterations=3)


def false_sites(score: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Scores of the local maxima (3 x 7 x 7) of ``score`` in ``region``
    (:func:`site_region`); only maxima above 0."""
    peaks = (score == ndimage.maximum_filter(score, size=(3, 7, 7))) & region & (score > 0)
    return score[peaks].astype(np.float64)


def sensitivity(peaks: np.ndarray, sites: np.ndarray, cases: int, rate: float) -> float:
    """Share of ``peaks`` above the score that ``rate`` false sites per case reach.

    One false site allowed over two cases: the bar is the second highest site, 0.4.

    >>> round(sensitivity(np.array([0.9, 0.5, 0.2]), np.array([0.8, 0.4, 0.1, 0.05]), 2, 0.5), 3)
    0.667
    """
    if not len(peaks):
        return float("nan")
    k = int(rate * cases)  # the k-th highest false site (0-based) sets the bar
    ordered = np.sort(sites)[::-1]
    bar = ordered[k] if k < len(ordered) else -np.inf
    return float(np.mean(peaks > bar))


def froc_table(lesions: list[tuple[int, float]], sites: np.ndarray, cases: int) -> dict:
    """{size bin: {"lesions": n, "sensitivity": {rate: share, None without lesions}}}."""
    table = {}
    sizes = np.array([v for v, _ in lesions], dtype=np.int64)
    peaks = np.array([p for _, p in lesions], dtype=np.float64)
    for name, (low, high) in SIZES.items():
        sel = peaks[(sizes >= low) & (sizes < high)]
        shares = {str(r): sensitivity(sel, sites, cases, r) if len(sel) else None for r in RATES}
        table[name] = {"lesions": len(sel), "sensitivity": shares}
    return table


def evaluate_run(run: Path, args: argparse.Namespace, keep: int) -> dict:
    """Every score's lesion peaks, FROC table and ``keep`` highest false sites (enough for
    any table pooled over every run), and the spots' tumour counts, over one run's cases."""
    start = time.perf_counter()
    cascade = Cascade.load(run / "cascade.pt", device="cpu")
    found: dict[str, dict] = {name: {"lesions": [], "sites": []} for name in SCORES}
    cases = extra_cases(run, args)[: args.cases]
    counts: list[list[tuple[int, int, int]]] = []  # per case: the cascade, then each of SPOTS
    for case in cases:
        loaded = load_case(case)
        volume, labels = np.asarray(loaded.volume), np.asarray(loaded.labels)
        result = cascade(volume)
        mask = result.liver_mask
        scores = {"model": result.tumour_probability,
                  "dark": liver_darkness(volume, mask, loaded.spacing),
                  "dark_true": liver_darkness(volume, labels > 0, loaded.spacing)}  # fmt: skip
        truth, pred = labels == 2, result.labels == 2
        dark = scores["dark"]
        depth = ndimage.distance_transform_edt(mask, sampling=loaded.spacing)
        rows = [(int((pred & truth).sum()), int(pred.sum()), int(truth.sum()))]
        for threshold, floor in SPOTS:
            more = pred | dark_spots(dark, mask, depth, threshold, min_depth_mm=args.depth,
                                     probability=result.tumour_probability,
                                     floor=floor)  # fmt: skip
            rows.append((int((more & truth).sum()), int(more.sum()), int(truth.sum())))
        counts.append(rows)
        deep = interior(labels, loaded.spacing, args.depth)
        region = site_region(labels, deep)
        for name, score in scores.items():
            found[name]["lesions"] += lesion_peaks(score, truth, deep)
            found[name]["sites"].append(false_sites(score, region))
    out: dict = {"cases": len(cases), "counts": counts,
                 "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    for name, f in found.items():
        sites = np.concatenate(f["sites"]) if f["sites"] else np.zeros(0)
        top = np.sort(sites)[::-1][:keep]
        out[name] = {"froc": froc_table(f["lesions"], sites, len(cases)),
                     "lesions": [(v, round(x, 4)) for v, x in f["lesions"]],
                     "sites": len(sites),
                     "site_scores": [round(float(x), 4) for x in top]}  # fmt: skip
    return out


def pooled(report: dict) -> dict:
    """The FROC tables over every run: lesions and false sites pooled."""
    out = {}
    for name in SCORES:
        lesions = [tuple(x) for r in report["runs"].values() for x in r[name]["lesions"]]
        sites = np.concatenate(
            [np.asarray(r[name]["site_scores"]) for r in report["runs"].values()]
        )
        cases = sum(r["cases"] for r in report["runs"].values())
        out[name] = froc_table(lesions, sites, cases)  # type: ignore[arg-type]
    return out


def spot_names() -> list[str]:
    """Row names of the spots table: the cascade alone, then each of :data:`SPOTS`."""
    return ["cascade alone"] + [f"+ spots >= {t:g} HU" + ("" if f is None else f", p >= {f:g}")
                                for t, f in SPOTS]  # fmt: skip


def spots_table(report: dict) -> dict[str, dict[str, float]]:
    """Tumour Dice per case and global of each spots option, every run's cases pooled, and
    each run's per-case Dice minus the cascade's alone."""
    counts = [np.asarray(r["counts"], dtype=np.float64) for r in report["runs"].values()]
    every = np.concatenate(counts)  # (cases, options, 3)
    out = {}
    for i, name in enumerate(spot_names()):
        diffs = [float(tumour_criterion(c[:, i], "per_case")
                       - tumour_criterion(c[:, 0], "per_case")) for c in counts]  # fmt: skip
        out[name] = {"per_case": float(tumour_criterion(every[:, i], "per_case")),
                     "global": float(tumour_criterion(every[:, i], "global")),
                     "per_case_minus_cascade_by_run": diffs}  # fmt: skip
    return out


def figure(report: dict, path: Path) -> Path:
    """FROC curves of every score, one panel per lesion size, every run pooled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"].values()
    cases = sum(r["cases"] for r in runs)
    rates = np.geomspace(0.05, max(RATES), 40)
    fig, axes = plt.subplots(1, len(SIZES), figsize=(10, 3.4), sharey=True)
    for ax, (size, (low, high)) in zip(axes, SIZES.items(), strict=True):
        for name, style in zip(SCORES, ("-", "--", ":"), strict=True):
            peaks = np.array([p for r in runs for v, p in r[name]["lesions"] if low <= v < high])
            sites = np.concatenate([np.asarray(r[name]["site_scores"]) for r in runs])
            curve = [sensitivity(peaks, sites, cases, rate) for rate in rates]
            ax.plot(rates, curve, style, label=SCORES[name])
        ax.set_xscale("log")
        ax.set_title(f"lesions {size} voxels")
        ax.set_xlabel("false sites per case (liver interior)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("lesions found")
    fig.suptitle(f"{len(report['runs'])} runs, {cases} validation-type cases", fontsize=10)
    return save_figure(fig, path, dpi=90)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="examples/lits_cascade.py --out folders")
    held_out_arguments(p)
    p.add_argument("--cases", type=int, default=20, help="the first N validation-type fresh cases")
    p.add_argument("--depth", type=float, default=8.0,
                   help="false sites and spot seeds this deep, mm")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the records here")
    p.add_argument("--figure", type=Path, help="draw the FROC curves here (.png)")
    p.add_argument("--replot", action="store_true",
                   help="no runs: read --json and draw --figure")  # fmt: skip
    args = p.parse_args(argv)
    if args.replot:
        if args.json is None or args.figure is None:
            p.error("--replot: expected --json and --figure")
        report = json.loads(args.json.read_text())
        figure(report, args.figure)
        return report
    if not args.runs:
        p.error("expected at least one run folder (or --replot)")
    check_held_out_arguments(p, args)
    if not 1 <= args.cases <= args.extra:
        p.error(f"--cases: expected 1 to --extra ({args.extra}), got {args.cases}")
    report: dict = {"settings": {"cases": args.cases, "depth_mm": args.depth,
                                 "rates": list(RATES)}, "runs": {}}  # fmt: skip
    keep = int(max(RATES) * args.cases * len(args.runs)) + 1
    for run in args.runs:
        report["runs"][run.name] = evaluate_run(run, args, keep)
        print(f"{run.name}: {report['runs'][run.name]['seconds']:.0f} s", flush=True)
    head = " | ".join(f"{r:g} / case" for r in RATES)
    print(f"\n| score | lesions (voxels) | n | sensitivity at {head} |")
    print("| --- | --- | --- |" + " --- |" * len(RATES))
    report["pooled"] = pooled(report)
    for name, table in report["pooled"].items():
        for size, row in table.items():
            cells = " | ".join(
                "-" if v is None else f"{v:.2f}" for v in row["sensitivity"].values()
            )
            print(f"| {name} | {size} | {row['lesions']} | {cells} |")
    report["spots"] = spots_table(report)
    print("\n| cascade | tumour Dice per case / global | per case minus the cascade's, by run |")
    print("| --- | --- | --- |")
    for name, row in report["spots"].items():
        by_run = " / ".join(f"{x:+.3f}" for x in row["per_case_minus_cascade_by_run"])
        print(f"| {name} | {row['per_case']:.3f} / {row['global']:.3f} | {by_run} |")
    write_json(args.json, report)
    if args.figure is not None:
        figure(report, args.figure)
    return report


if __name__ == "__main__":
    main()
