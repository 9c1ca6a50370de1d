"""Training-step time on CPU: float32 against bfloat16 autocast, side by side.

One optimizer step (forward, Seg-Loss of every head, backward, AdamW) of the cascade
example's CPU models, student alone (UN-DS) and with the live ES teacher (ES-DS), in
float32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``, interleaved, median
of ``--repeats`` after a warm-up. bfloat16 pays on CPUs with bfloat16 matrix units
(Intel AMX); elsewhere oneDNN emulates it.

    python benchmarks/cpu_amp.py --repeats 15 --json cpu_amp.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch
from _timing import timed_step

from featsup.models import UNetPlusPlus
from featsup.supervision.variants import build_variant, segmentation_step
from featsup.training import cpu_has_bf16_units


def make_step(variant: str, widths: list[int], size: int, batch: int):
    teacher = UNetPlusPlus(2, 2, widths=widths, skip_connections=False).eval()
    student = UNetPlusPlus(1, 2, widths=widths).to(memory_format=torch.channels_last)
    model = build_variant(
        variant, in_channels=1, num_classes=2, widths=widths, teacher=teacher, student=student
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    step_fn = segmentation_step()
    gen = torch.Generator().manual_seed(0)
    batch_data = {
        "image": torch.randn(batch, 1, size, size, generator=gen),
        "target": (torch.rand(batch, size, size, generator=gen) > 0.7).long(),
    }

    return timed_step(lambda: step_fn(model, batch_data)[0], optimizer)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--widths", type=int, nargs=5, default=[8, 16, 32, 64, 128])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = {}
    print(f"CPU: {platform.processor() or platform.machine()}; bf16 units: {cpu_has_bf16_units()}")
    print(f"threads {torch.get_num_threads()}, widths {args.widths}, {args.size}^2, "
          f"batch {args.batch}")  # fmt: skip
    print("| variant | fp32 ms | bf16 ms | fp32 / bf16 |\n|---|---|---|---|")
    for variant in ("UN-DS", "ES-DS"):
        step = make_step(variant, args.widths, args.size, args.batch)
        for amp in (False, True, False, True):  # warm-up both
            step(amp)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for amp in (False, True):
                times[amp].append(step(amp))
        fp32, bf16 = (1e3 * float(np.median(times[a])) for a in (False, True))
        ratios = np.array(times[False]) / np.array(times[True])
        rows[variant] = {"fp32_ms": fp32, "bf16_ms": bf16, "ratio": float(np.median(ratios))}
        print(f"| {variant} | {fp32:.0f} | {bf16:.0f} | {rows[variant]['ratio']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args), "rows": rows}, default=str))
    return rows


if __name__ == "__main__":
    main()
