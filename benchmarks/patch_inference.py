"""Seconds and peak memory of featsup's ``predict_patches`` vs MONAI's sliding window.

One volume (default 64 x 160 x 160), windows of 32 x 64 x 64 overlapping by half,
Gaussian blending (sigma 0.125 of the window) in both, a small 3D conv net (8 channels,
two classes), the same batch of windows per forward pass. MONAI's predictor returns the
softmax, so both blend probabilities and their outputs can be compared (with these sizes
the windows coincide; the largest difference is printed). Seconds: medians of
``--repeats`` interleaved repeats in this process (one warm-up each). Peak memory: on
CUDA ``torch.cuda.max_memory_allocated``; on the CPU the rise of the resident-set
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the run)
over the RSS at its start, in a fresh child process per method (imports, net and volume
in place), so the two never share a peak.

Usage:
    python benchmarks/patch_inference.py [--shape 64 160 160] [--patch 32 64 64]
        [--repeats 5] [--threads 1] [--device cpu] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from featsup.inference import predict_patches

METHODS = ("featsup", "monai")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv3d(8, 2, 1),
    ).eval()  # fmt: skip


def runner(method: str, args: argparse.Namespace) -> Callable[[], np.ndarray]:
    """A function that predicts the benchmark volume with ``method``."""
    device = torch.device(args.device)
    net = small_net().to(device)
    volume = torch.from_numpy(np.random.default_rng(0).normal(size=args.shape).astype(np.float32))
    patch, batch = tuple(args.patch), args.batch
    if method == "featsup":
        return lambda: predict_patches(net, volume, patch=patch, batch_size=batch, device=device)
    from monai.inferers import sliding_window_inference

    def monai_run() -> np.ndarray:
        with torch.inference_mode():
            out = sliding_window_inference(
                volume[None, None], patch, batch, lambda x: torch.softmax(net(x), 1),
                overlap=0.5, mode="gaussian", sigma_scale=0.125, sw_device=device,
                device=device,
            )  # fmt: skip
        return out[0].cpu().numpy()

    return monai_run


def peak_mb(method: str, args: argparse.Namespace) -> float:
    """Peak memory of one run: CUDA allocator peak, or RSS rise in a child process."""
    if args.device.startswith("cuda"):
        run = runner(method, args)
        run()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    command = [sys.executable, __file__, "--child", method, "--threads", str(args.threads),
               "--shape", *map(str, args.shape), "--patch", *map(str, args.patch),
               "--batch", str(args.batch)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def _rss_kb(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(method: str, args: argparse.Namespace) -> None:
    """Print the rise of the peak RSS over the RSS before one run, in MB."""
    run = runner(method, args)
    Path("/proc/self/clear_refs").write_text("5")  # peak := current (Linux >= 4.0)
    before = _rss_kb("VmRSS")
    run()
    print(f"{(_rss_kb('VmHWM') - before) / 1024:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=[64, 160, 160])
    p.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args)
    runs = {m: runner(m, args) for m in METHODS}
    outputs = {m: run() for m, run in runs.items()}  # warm-up, and the outputs to compare
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for m, run in runs.items():
            start = time.perf_counter()
            run()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[m].append(time.perf_counter() - start)
    rows = [
        {"method": m, "seconds": statistics.median(seconds[m]), "peak_mb": peak_mb(m, args)}
        for m in METHODS
    ]
    gap = float(np.abs(outputs["featsup"] - outputs["monai"]).max())
    print(f"\nvolume {tuple(args.shape)}, patch {tuple(args.patch)}, overlap 0.5, gaussian, "
          f"batch {args.batch}, {args.device}, {args.threads} thread(s), "
          f"median of {args.repeats}; max |featsup - MONAI| = {gap:.1e}\n")  # fmt: skip
    print("| method | seconds | peak MB | time vs MONAI |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | "
              f"{r['seconds'] / rows[1]['seconds']:.2f}x |")  # fmt: skip
    print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {**vars(args), "json": str(args.json)}, "rows": rows, "max_gap": gap},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
