"""Peak memory (RSS) and seconds of ``featsup predict`` on one 512 x 512 x 600 CT volume.

The claim (issue 13): ``featsup predict`` segments one LiTS-sized volume on a CPU in at
most 4 GB. This script writes one synthetic volume with LiTS's extremes (600 slices of
512 x 512, 0.7 mm pixels, 1 mm slices, a flipped affine as many LiTS files have), stored
uncompressed as the LiTS download is; a cascade file; then runs the real command,
``python -m featsup predict ... --device cpu --workers 0``, in a child process and
reads its peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) and its wall
time. Each setting runs in its own child, so peaks never mix.

The cascade is the example's CPU preset (widths 8..128, liver slices resized to 128,
tumour ROI 128). With no ``--model``, its students are set by hand to threshold the
image (as in tests/_cascades.py), so both stages run on realistic masks (liver on about
a third of the slices); speed and memory do not depend on what the weights learned.
``--model cascade.pt`` measures a trained cascade instead.

Usage:
    python benchmarks/predict_memory.py [--slices 600] [--crf] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from featsup.inference import Cascade
from featsup.models import UNetPlusPlus
from featsup.postprocess import CRF_PRESETS

SRC = str(Path(__file__).resolve().parents[1] / "src")
GOAL_GB = 4.0


def synthetic_volume(path: Path, slices: int) -> None:
    """Body, liver and tumours as ellipsoids with noise (int16 HU), a flipped affine."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    z = np.arange(slices, dtype=np.float32)[:, None, None] / slices
    y = np.arange(512, dtype=np.float32)[None, :, None] / 512
    x = np.arange(512, dtype=np.float32)[None, None, :] / 512
    hu = np.full((slices, 512, 512), -1000, np.int16)  # processing order (D, H, W)
    for start in range(0, slices, 50):  # in slabs: the float temporaries stay small
        zz = z[start : start + 50]
        body = ((y - 0.5) / 0.38) ** 2 + ((x - 0.5) / 0.45) ** 2 < 1
        liver = ((zz - 0.45) / 0.17) ** 2 + ((y - 0.45) / 0.2) ** 2 + ((x - 0.33) / 0.17) ** 2 < 1
        tumour = ((zz - 0.45) / 0.03) ** 2 + ((y - 0.45) / 0.04) ** 2 + ((x - 0.3) / 0.04) ** 2 < 1
        slab = np.where(body, 40, -1000) + np.where(liver, 60, 0) - np.where(tumour, 50, 0)
        noise = rng.normal(0, 15, slab.shape).astype(np.float32)
        hu[start : start + 50] = np.clip(slab + noise, -1024, 3000).astype(np.int16)
    # disk voxel axes R, A, S (flipped in-plane against DICOM's L, P, S): (W, H, D) reversed
    disk = np.ascontiguousarray(hu.transpose(2, 1, 0)[::-1, ::-1])
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    nib.save(nib.Nifti1Image(disk, affine), str(path))


@torch.no_grad()
def threshold_unetpp(widths: list[int], threshold: float, bright: bool) -> UNetPlusPlus:
    """A UNet++ whose every head scores class 1 where the preprocessed image passes."""
    net = UNetPlusPlus(1, 2, widths=widths)
    blocks = [net.encoder["x0_0"]] + [net.decoder[f"x0_{j}"].conv for j in range(1, net.depth + 1)]
    for block in blocks:
        for unit in block:
            unit[0].weight.zero_()
            unit[0].weight[0, 0, 1, 1] = 1.0
    sign = 1.0 if bright else -1.0
    for head in net.heads.values():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1, 0] = 40.0 * sign
        head.bias[1] = -40.0 * sign * threshold
    return net.eval()


def cascade_file(path: Path, crf: bool) -> None:
    widths = [8, 16, 32, 64, 128]
    cascade = Cascade(
        threshold_unetpp(widths, 0.35, True), threshold_unetpp(widths, 0.45, False),
        liver_size=128, tumour_size=128, device="cpu",
        liver_crf={**CRF_PRESETS["liver"], "workers": 1} if crf else None,
    )  # fmt: skip
    cascade.save(path, training={"data": "none: hand-set thresholds for benchmarks"})


def measure(model: Path, volume: Path, out: Path, extra: list[str]) -> dict[str, float]:
    command = [sys.executable, "-m", "featsup", "predict", "--model", str(model),
               "--input", str(volume), "--output", str(out), "--device", "cpu",
               "--workers", "0", "--quiet", "--overwrite", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"featsup predict failed:\n{done.stdout}\n{done.stderr}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {"peak_rss_gb": peak_kb / 2**20, "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--slices", type=int, default=600)
    p.add_argument("--model", type=Path, help="a trained cascade file (default: hand-set)")
    p.add_argument("--crf", action="store_true", help="also measure with the liver CRF")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        volume = folder / "volume-0.nii"
        start = time.perf_counter()
        synthetic_volume(volume, args.slices)
        print(f"wrote a 512 x 512 x {args.slices} volume in {time.perf_counter() - start:.0f} s")
        settings = [("no CRF", False, ["--no-crf"])]
        if args.crf:
            settings.append(("liver CRF", True, []))
        for name, crf, extra in settings:  # each child's peak is the largest so far: CRF last
            model = args.model or folder / f"cascade-{name.replace(' ', '-')}.pt"
            if args.model is None:
                cascade_file(model, crf)
            result = measure(model, volume, folder / "out", extra)
            rows.append({"setting": name, "slices": args.slices, **result})
    print("\n| setting | volume | peak RSS GB | seconds | goal <= 4 GB |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        ok = "yes" if r["peak_rss_gb"] <= GOAL_GB else "no"
        print(f"| {r['setting']} | 512x512x{r['slices']} | {r['peak_rss_gb']:.2f} | "
              f"{r['seconds']:.1f} | {ok} |")  # fmt: skip
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "goal_gb": GOAL_GB}, indent=2))


if __name__ == "__main__":
    main()
