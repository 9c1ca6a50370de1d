"""Speed of the dense CRF: pydensecrf vs the pure-PyTorch backend, 1 and 2 workers, CUDA.

Cases (synthetic CT phantom, liver stage, default parameters of ``dense_crf``):

* ``slice``  one 512 x 512 slice (2D CRF);
* ``crop``   a 64 x 128 x 128 ROI crop around the liver (3D CRF, LiTS-like spacing);
* ``volume`` a 100 x 512 x 512 volume slice by slice (2D CRF per slice, ``workers``);
* ``control`` pure-Python busy work, once in this process and once split over 2 worker
  processes: how much parallelism the machine offered while the benchmark ran (other
  jobs on a shared machine can take the second core).

Configurations run interleaved (A B C A B C ...) and the table shows medians, because
other processes share the machine. pydensecrf is single-threaded, and so is the torch
backend on the CPU (``dense_crf`` limits torch to one intra-op thread there; parallelism
comes from ``workers``, one process per worker).

Usage:
    python benchmarks/crf_speed.py                  # CPU, both backends
    python benchmarks/crf_speed.py --device cuda    # torch backend on the GPU
    python benchmarks/crf_speed.py --repeats 5 --json crf_speed.json
    python benchmarks/crf_speed.py --cases volume      # workers scaling only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import ndimage

from featsup.data import hu_window, make_phantom
from featsup.postprocess import dense_crf


@dataclass
class Config:
    case: str
    backend: str
    device: str
    workers: int
    units: int  # slices (2D) or crops (3D) processed per run
    run: Callable[[], object] = field(repr=False)
    seconds: list[float] = field(default_factory=list)


def degrade(truth: np.ndarray, seed: int) -> np.ndarray:
    """A network-like liver prediction: displaced, blurred, noisy boundary (in-plane)."""
    rng = np.random.default_rng(seed)
    signed = ndimage.distance_transform_edt(truth) - ndimage.distance_transform_edt(~truth)
    sigma = (0.0,) * (truth.ndim - 2) + (12.0, 12.0)
    offset = ndimage.gaussian_filter(rng.normal(size=truth.shape).astype(np.float32), sigma)
    logit = (signed + offset * (4.0 / offset.std())) / 3.0
    fg = 1.0 / (1.0 + np.exp(-logit))
    return np.stack([1.0 - fg, fg]).astype(np.float32)


def busy(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def control(workers: int, n: int = 8_000_000) -> None:
    """Two equal pieces of pure-Python work, serially or in ``workers`` processes."""
    if workers == 1:
        busy(n)
        busy(n)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(busy, [n, n])


def make_cases(slices: int) -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, ...]]]:
    volume, labels, spacing = make_phantom(0, (slices, 512, 512))
    image = hu_window(volume).astype(np.float32)
    liver = labels >= 1
    probs = degrade(liver, 0)
    z, y, x = (int(np.median(a)) for a in np.nonzero(liver))
    z0 = int(np.clip(z - 32, 0, max(slices - 64, 0)))
    y0, x0 = int(np.clip(y - 64, 0, 384)), int(np.clip(x - 64, 0, 384))
    crop = (slice(z0, z0 + 64), slice(y0, y0 + 128), slice(x0, x0 + 128))
    return {
        "slice": (probs[:, z], image[z], spacing[1:]),
        "crop": (probs[(slice(None), *crop)], image[crop], spacing),
        "volume": (probs, image, spacing),
    }


def build_configs(cases, device: str, has_pydensecrf: bool) -> list[Config]:
    configs = []
    backends = ["torch"] if device == "cuda" or not has_pydensecrf else ["pydensecrf", "torch"]
    for case, (probs, image, spacing) in cases.items():
        mode = "3d" if case == "crop" else "2d"
        units = probs.shape[1] if case == "volume" else 1
        workers_list = [1, 2] if case == "volume" and device == "cpu" else [1]
        for backend in backends:
            for workers in workers_list:

                def run(p=probs, i=image, s=spacing, b=backend, w=workers, m=mode):
                    return dense_crf(p, i, mode=m, spacing=s, backend=b, workers=w, device=device)

                configs.append(Config(case, backend, device, workers, units, run))
    if device == "cpu":
        for workers in (1, 2):
            configs.append(
                Config("control", "python", "cpu", workers, 1, lambda w=workers: control(w))
            )
    return configs


def time_configs(configs: list[Config], repeats: int) -> None:
    for config in configs:  # warm-up (lazy initialisation, first sparse products)
        config.run()
    for _ in range(repeats):
        for config in configs:
            if config.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            config.run()
            if config.device == "cuda":
                torch.cuda.synchronize()
            config.seconds.append(time.perf_counter() - start)
            print(
                f"  {config.case:6s} {config.backend:10s} {config.device} "
                f"workers={config.workers}: {config.seconds[-1]:.3f} s",
                flush=True,
            )


def summarise(configs: list[Config]) -> list[dict]:
    rows = []
    for c in configs:
        median = statistics.median(c.seconds)
        ref = [
            o
            for o in configs
            if o.case == c.case and o.backend == "pydensecrf" and o.workers == c.workers
        ]
        one = [o for o in configs if o.case == c.case and o.backend == c.backend and o.workers == 1]
        row = {k: v for k, v in asdict(c).items() if k not in ("run", "seconds")}
        row.update(seconds=c.seconds, median_s=median, per_unit_ms=1e3 * median / c.units)
        row["vs_pydensecrf"] = median / statistics.median(ref[0].seconds) if ref else None
        row["speedup_vs_1_worker"] = statistics.median(one[0].seconds) / median if one else None
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        "case",
        "backend",
        "device",
        "workers",
        "median s",
        "ms / unit",
        "time vs pydensecrf",
        "speed-up vs 1 worker",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        ratio = "" if r["vs_pydensecrf"] is None else f"{r['vs_pydensecrf']:.2f}x"
        speedup = "" if r["speedup_vs_1_worker"] is None else f"{r['speedup_vs_1_worker']:.2f}x"
        print(
            f"| {r['case']} | {r['backend']} | {r['device']} | {r['workers']} "
            f"| {r['median_s']:.3f} | {r['per_unit_ms']:.0f} | {ratio} | {speedup} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slices", type=int, default=100, help="slices of the volume case")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=("slice", "crop", "volume"),
        default=["slice", "crop", "volume"],
    )
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    try:
        import pydensecrf.densecrf  # noqa: F401

        has_pydensecrf = True
    except ImportError:
        has_pydensecrf = False
        print('pydensecrf is not installed (pip install "featsup[crf]"): torch backend only')
    cases = {k: v for k, v in make_cases(args.slices).items() if k in args.cases}
    configs = build_configs(cases, args.device, has_pydensecrf)
    time_configs(configs, args.repeats)
    rows = summarise(configs)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
    }
    print(f"\nmachine: {machine}\nrepeats: {args.repeats} (interleaved), medians\n")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
