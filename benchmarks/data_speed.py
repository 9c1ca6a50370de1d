"""Data pipeline speed: preprocessing throughput (1 process vs a pool) and phantom generation.

Measures, side by side with interleaved repeats (medians, no assertions on wall time):

1. slices per second for NIfTI load + HU window + CLAHE + normalisation of 512 x 512
   slices, in this process and in a process pool of ``--workers`` (default 2), with the
   pool started before timing (its start-up is reported separately);
2. slices per second served by ``LiverSliceDataset`` from the memory-map cache
   (2.5D context 1, resized to 256 x 256), i.e. what an epoch costs after preparation;
3. seconds to generate one 512 x 512 x 100 phantom with ``make_phantom``.

Usage:
    python benchmarks/data_speed.py [--cases 4] [--slices 48] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from featsup.data import (
    LiverSliceDataset,
    find_cases,
    load_volume,
    make_phantom,
    preprocess_volume,
    write_phantom_dataset,
)


def _chain(path: Path) -> int:
    volume, _, _ = load_volume(path)
    out = preprocess_volume(volume)
    return int(out.shape[0])


def _serial(paths: list[Path]) -> float:
    start = time.perf_counter()
    n = sum(_chain(p) for p in paths)
    return n / (time.perf_counter() - start)


def _pooled(pool: ProcessPoolExecutor, paths: list[Path]) -> float:
    start = time.perf_counter()
    n = sum(pool.map(_chain, paths))
    return n / (time.perf_counter() - start)


def _dataset_rate(ds: LiverSliceDataset, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    return n / (time.perf_counter() - start)


def _phantom_seconds(seed: int) -> float:
    start = time.perf_counter()
    make_phantom(seed, (100, 512, 512))
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {
        "serial": [],
        "pool": [],
        "dataset": [],
        "phantom": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "lits"
        write_phantom_dataset(folder, args.cases, shape=(args.slices, 512, 512), seed=100)
        paths = [c.volume_path for c in find_cases(folder)]
        start = time.perf_counter()
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            list(pool.map(_chain, paths[:1] * args.workers))  # start and warm the workers
            pool_start = time.perf_counter() - start
            _serial(paths[:1])  # warm this process too
            for _ in range(args.repeats):  # interleaved: serial, pool, serial, pool, ...
                results["serial"].append(_serial(paths))
                results["pool"].append(_pooled(pool, paths))
        ds = LiverSliceDataset(
            folder, context=1, size=(256, 256), cache_dir=Path(tmp) / "cache", num_workers=2
        )
        _dataset_rate(ds, 20)
        for r in range(args.repeats):
            results["dataset"].append(_dataset_rate(ds, 200))
            results["phantom"].append(_phantom_seconds(r))
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "cases": args.cases,
        "slices_per_case": args.slices,
        "workers": args.workers,
        "repeats": args.repeats,
        "pool_startup_s": pool_start,
        "raw": results,
        "median": med,
        "pool_speedup": med["pool"] / med["serial"],
    }


def _table(report: dict) -> str:
    med = report["median"]
    rows = [
        ("load + HU window + CLAHE + normalise, 1 process", f"{med['serial']:.0f} slices/s"),
        (
            f"load + HU window + CLAHE + normalise, pool of {report['workers']}",
            f"{med['pool']:.0f} slices/s (x{report['pool_speedup']:.2f})",
        ),
        ("LiverSliceDataset item from cache (3 x 256 x 256)", f"{med['dataset']:.0f} slices/s"),
        ("make_phantom 512 x 512 x 100", f"{med['phantom']:.2f} s/volume"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'measure'.ljust(width)} | median |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--slices", type=int, default=48, help="slices per 512 x 512 case")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    report = run(args)
    print(_table(report))
    print(
        f"\n{report['cases']} cases x {report['slices_per_case']} slices of 512 x 512, "
        f"{report['repeats']} interleaved repeats, pool start-up {report['pool_startup_s']:.2f} s; "
        f"{report['machine']}, torch {report['torch']}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
