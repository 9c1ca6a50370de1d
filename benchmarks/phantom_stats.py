"""Lesion statistics of the synthetic CT phantom over many seeds (what the labels contain).

For each case ``make_phantom(seed, shape)`` it reports the labelled tumour components
(``scipy.ndimage.label``, 6-connectivity; the smallest one under 26-connectivity too),
their equivalent diameters (the sphere of the same volume), the contrast to the liver
(tumour mean HU minus liver parenchyma mean HU, whole case and per lesion), the smallest
labelled component in voxels, the parenchyma median HU and the generation time; then a
summary over all cases. No assertions: it measures.

It also prints what the lesion sizes allow: the tumour Dice per case and global of an
oracle that finds every lesion of at least N voxels exactly and nothing else (a case whose
lesions are all smaller scores 0, a tumour-free case 1), for N in ``--oracle-sizes``.

Usage:
    python benchmarks/phantom_stats.py [--seeds 50] [--shape 48 256 256] [--workers 2]
                                       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage

from featsup.data import make_phantom
from featsup.metrics import dice_from_counts

CUBE = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


def case_stats(seed: int, shape: tuple[int, int, int]) -> dict:
    """Statistics of one phantom case (a JSON-ready dict)."""
    start = time.perf_counter()
    volume, labels, spacing = make_phantom(seed, shape)
    seconds = time.perf_counter() - start
    hu = volume.astype(np.float32)
    tumour, parenchyma = labels == 2, labels == 1
    components, n = ndimage.label(tumour)
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    voxel_mm3 = float(np.prod(spacing))
    liver_mean = float(hu[parenchyma].mean())
    means = ndimage.mean(hu, components, index=np.arange(1, n + 1)) if n else np.zeros(0)
    sizes26 = np.bincount(ndimage.label(tumour, CUBE)[0].ravel())[1:] if n else sizes
    return {
        "seed": seed,
        "lesions": int(n),
        "diameters_mm": np.cbrt(6.0 * sizes * voxel_mm3 / np.pi).round(2).tolist(),
        "voxels": sizes.tolist(),
        "min_voxels_26": int(sizes26.min()) if n else None,
        "lesion_contrast_hu": (np.asarray(means) - liver_mean).round(1).tolist(),
        "contrast_hu": float(hu[tumour].mean() - liver_mean) if n else None,
        "liver_median_hu": float(np.median(hu[parenchyma])),
        "seconds": round(seconds, 3),
    }


def _fmt(values: list[float], spec: str = ".1f") -> str:
    if not values:
        return "-"
    return "/".join(format(v, spec) for v in (min(values), float(np.median(values)), max(values)))


def print_table(cases: list[dict]) -> None:
    """One line per case."""
    print(f"{'seed':>4} {'lesions':>7} {'diam min/med/max mm':>22} {'contrast':>9} "
          f"{'smallest':>8} {'liver HU':>8} {'s':>6}")  # fmt: skip
    for c in cases:
        contrast = "-" if c["contrast_hu"] is None else f"{c['contrast_hu']:+.0f}"
        smallest = min(c["voxels"]) if c["voxels"] else "-"
        print(
            f"{c['seed']:>4} {c['lesions']:>7} {_fmt(c['diameters_mm']):>22} {contrast:>9} "
            f"{smallest!s:>8} {c['liver_median_hu']:>8.0f} {c['seconds']:>6.2f}"
        )


def summary(cases: list[dict]) -> dict:
    """Totals over all cases."""
    diam = np.array([d for c in cases for d in c["diameters_mm"]])
    contrast = np.array([x for c in cases for x in c["lesion_contrast_hu"]])
    counts = [c["lesions"] for c in cases]
    with_tumour = [c for c in cases if c["lesions"]]
    return {
        "cases": len(cases),
        "tumour_free_cases": sum(n == 0 for n in counts),
        "lesions": int(diam.size),
        "lesions_per_case_max": max(counts),
        "diameter_mm_percentiles_0_5_25_50_75_95_100": np.percentile(
            diam, [0, 5, 25, 50, 75, 95, 100]
        ).round(1).tolist() if diam.size else [],
        "share_diameter_under_10mm": round(float((diam < 10).mean()), 3) if diam.size else None,
        "share_diameter_over_50mm": round(float((diam > 50).mean()), 3) if diam.size else None,
        "lesion_contrast_hu_percentiles_5_50_95": np.percentile(
            contrast, [5, 50, 95]
        ).round(1).tolist() if contrast.size else [],
        "share_hypodense": round(float((contrast < 0).mean()), 3) if contrast.size else None,
        "share_abs_contrast_20_70": round(
            float(((np.abs(contrast) >= 20) & (np.abs(contrast) <= 70)).mean()), 3
        ) if contrast.size else None,
        "smallest_component_voxels": min(min(c["voxels"]) for c in with_tumour) if with_tumour
        else None,
        "smallest_component_voxels_26": min(c["min_voxels_26"] for c in with_tumour)
        if with_tumour else None,
        "smallest_diameter_mm": round(float(diam.min()), 2) if diam.size else None,
        "liver_median_hu_range": [min(c["liver_median_hu"] for c in cases),
                                  max(c["liver_median_hu"] for c in cases)],
        "seconds_median": round(float(np.median([c["seconds"] for c in cases])), 3),
    }  # fmt: skip


def oracle_dice(cases: list[dict], min_voxels: int) -> tuple[float, float]:
    """(Dice per case, Dice global) of finding exactly the lesions of >= ``min_voxels``.

    ``cases`` are :func:`case_stats` rows (their ``voxels``: one size per lesion).

    Example:
        >>> rows = [{"voxels": [40, 400]}, {"voxels": [30]}, {"voxels": []}]
        >>> oracle_dice(rows, 0), [round(x, 3) for x in oracle_dice(rows, 100)]
        ((1.0, 1.0), [0.651, 0.92])
    """
    pairs = [(sum(v for v in c["voxels"] if v >= min_voxels), sum(c["voxels"])) for c in cases]
    per_case = [dice_from_counts(found, found, truth) for found, truth in pairs]
    found, truth = sum(f for f, _ in pairs), sum(t for _, t in pairs)
    return float(np.mean(per_case)), dice_from_counts(found, found, truth)


def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments, measure every seed in a process pool, print and save."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=50, help="cases: seeds 0 .. seeds-1")
    p.add_argument("--shape", type=int, nargs=3, default=[48, 256, 256], metavar=("D", "H", "W"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--oracle-sizes",
        type=int,
        nargs="+",
        default=[0, 50, 100, 200, 500, 1000, 2000],
        help="the oracle finds every lesion of at least this many voxels",
    )
    p.add_argument("--json", help="also write the per-case rows and the summary here")
    args = p.parse_args(argv)
    shape = tuple(args.shape)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        cases = list(pool.map(case_stats, range(args.seeds), [shape] * args.seeds))
    print_table(cases)
    total = summary(cases)
    print()
    for key, value in total.items():
        print(f"{key}: {value}")
    print("\nan oracle that finds every lesion of >= N voxels exactly and nothing else:")
    print(f"{'N':>6} {'Dice per case':>13} {'Dice global':>11}")
    oracle = {}
    for n in args.oracle_sizes:
        oracle[n] = oracle_dice(cases, n)
        print(f"{n:>6} {oracle[n][0]:>13.3f} {oracle[n][1]:>11.3f}")
    total["oracle_dice_per_case_global"] = {str(n): list(v) for n, v in oracle.items()}
    result = {
        "shape": shape,
        "workers": args.workers,
        "cpu": platform.processor() or platform.machine(),
        "summary": total,
        "cases": cases,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
