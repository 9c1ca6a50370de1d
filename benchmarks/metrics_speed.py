"""Speed of the boundary weight map and of the LiTS metrics on CT-sized arrays.

Two parts, each timed with interleaved repeats (medians; noisy shared machines are fine
because the backends are compared side by side in one run):

1. ``boundary_weight_map`` of a 100 x 512 x 512 liver-like mask, slice-wise (the 2D
   training case), OpenCV vs SciPy backends, plus their largest difference.
2. ``case_metrics`` (Dice, VOE, RVD, ASSD, MSD) of a 512 x 512 x 300 prediction / truth
   pair with LiTS-like spacing (0.7, 0.7, 2.5) mm: overlap metrics only, surface
   distances (cropped feature transforms), and, with ``--uncropped``, once, the
   medpy-style surface distances (full-volume distance transforms, about a minute).

Usage:
    python benchmarks/metrics_speed.py [--repeats 5] [--uncropped] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from featsup.losses import boundary_weight_map
from featsup.metrics import case_metrics, surface_distances


def liver_like_volume(depth: int, shift: float = 0.0, axis_first: bool = True) -> np.ndarray:
    """A liver-sized ellipsoid with a bumpy surface; empty slices at both ends."""
    z = np.arange(depth)[:, None, None]
    y = np.arange(512)[None, :, None]
    x = np.arange(512)[None, None, :]
    cz = depth / 2
    radius = 1.0 + 0.05 * np.sin(y / 17.0) * np.cos(x / 23.0)
    inside = (
        ((z - cz - shift) / (0.35 * depth)) ** 2
        + ((y - 250 - shift) / 110.0) ** 2
        + ((x - 230 + shift) / 140.0) ** 2
    ) < radius
    return inside if axis_first else np.ascontiguousarray(np.moveaxis(inside, 0, -1))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm-up (imports, page faults)
        fn()
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def uncropped_surface_distances(p: np.ndarray, g: np.ndarray, spacing) -> None:
    cross = ndimage.generate_binary_structure(3, 1)
    sp = p & ~ndimage.binary_erosion(p, cross)
    sg = g & ~ndimage.binary_erosion(g, cross)
    ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    parser.add_argument("--uncropped", action="store_true", help="also time the full-volume EDT")
    args = parser.parse_args()

    rows: list[dict[str, object]] = []
    mask = liver_like_volume(100)
    weight_cases = {
        "opencv": lambda: boundary_weight_map(mask, slicewise=True, backend="opencv"),
        "scipy": lambda: boundary_weight_map(mask, slicewise=True, backend="scipy"),
    }
    weight_times = interleaved(weight_cases, args.repeats)
    diff = float(
        np.abs(
            boundary_weight_map(mask, slicewise=True, backend="opencv")
            - boundary_weight_map(mask, slicewise=True, backend="scipy")
        ).max()
    )
    for name, seconds in weight_times.items():
        rows.append(
            {
                "task": "boundary_weight_map 100x512x512 slicewise",
                "variant": name,
                "seconds": seconds,
                "ratio": seconds / weight_times["opencv"],
            }
        )

    spacing = (0.7, 0.7, 2.5)
    truth = liver_like_volume(300, axis_first=False)
    pred = liver_like_volume(300, shift=3.0, axis_first=False)
    metric_cases = {
        "overlap only (Dice, VOE, RVD)": lambda: case_metrics(pred, truth, surface=False),
        "all (+ ASSD, MSD)": lambda: case_metrics(pred, truth, spacing=spacing),
        "surface_distances (cropped)": lambda: surface_distances(pred, truth, spacing=spacing),
    }
    metric_times = interleaved(metric_cases, max(1, args.repeats // 2))
    if args.uncropped:
        metric_times["medpy-style full-volume EDT (once)"] = timed(
            lambda: uncropped_surface_distances(pred, truth, spacing)
        )
    base = metric_times["surface_distances (cropped)"]
    for name, seconds in metric_times.items():
        rows.append(
            {
                "task": "LiTS metrics 512x512x300 pair",
                "variant": name,
                "seconds": seconds,
                "ratio": seconds / base,
            }
        )
    values = case_metrics(pred, truth, spacing=spacing)

    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    print(f"{'task':44s} {'variant':36s} {'median s':>9s} {'ratio':>7s}")
    for row in rows:
        print(f"{row['task']:44s} {row['variant']:36s} {row['seconds']:9.3f} {row['ratio']:7.2f}")
    print("ratio: weight map vs OpenCV; metrics vs cropped surface_distances")
    print(f"weight map max |opencv - scipy| = {diff:.2e}")
    print("metrics of the pair: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    if args.json:
        payload = {"rows": rows, "weight_map_max_abs_diff": diff, "metrics": values}
        payload["repeats"] = args.repeats
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)


if __name__ == "__main__":
    main()
