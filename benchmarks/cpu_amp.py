"""Training-step time on CPU: float32 against bfloat16 autocast, side by side.

One optimizer step (forward, Seg-Loss of every head, backward, AdamW) of the cascade
example's CPU models, student alone (UN-DS) and with the live ES teacher (ES-DS), in
float32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``, interleaved, median
of ``--repeats`` after a warm-up. bfloat16 pays on CPUs with bfloat16 matrix units
(Intel AMX); elsewhere oneDNN emulates it.

    python benchmarks/cpu_amp.py --repeats 15 --json cpu_amp.json
    python benchmarks/cpu_amp.py --widths 8 16 32 64 128 --widths 16 32 64 128 256 --variants UN-DS

With several ``--widths`` every setting is timed once a round, and the last column is each
width set's bfloat16 step over the first set's, per round, then the median. A compiled
row's last column divides by the first set's *eager* bfloat16 step of its variant.

``--compile`` adds a copy of every setting with its student under :func:`torch.compile`,
timed in the same rounds: its rows say ``compiled``, with the seconds of its first step in
each precision (the compilation, paid once per process and precision) and its bfloat16
step against the eager one's, per round, then the median. ``--compile-backend`` picks the
backend (default ``inductor``, the one that generates kernels).

    python benchmarks/cpu_amp.py --variants UN-DS --compile --repeats 9
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
from featsup.supervision.variants import VARIANTS, build_variant, segmentation_step
from featsup.training import cpu_has_bf16_units


def make_step(variant: str, widths: list[int], size: int, batch: int, compiled: str | None = None):
    torch.manual_seed(0)  # the same weights eager and compiled
    teacher = UNetPlusPlus(2, 2, widths=widths, skip_connections=False).eval()
    student = UNetPlusPlus(1, 2, widths=widths).to(memory_format=torch.channels_last)
    if compiled:
        student = torch.compile(student, backend=compiled)
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
    p.add_argument(
        "--widths",
        type=int,
        nargs=5,
        action="append",
        help="UNet++ widths per depth; give it again to time several sets interleaved "
        "(default 8 .. 128)",
    )
    p.add_argument("--variants", nargs="+", default=["UN-DS", "ES-DS"], choices=VARIANTS)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd students")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.widths = args.widths or [[8, 16, 32, 64, 128]]
    if args.repeats < 1:
        p.error(f"--repeats: expected at least 1, got {args.repeats}")
    print(f"CPU: {platform.processor() or platform.machine()}; bf16 units: {cpu_has_bf16_units()}")
    print(f"threads {torch.get_num_threads()}, {args.size}^2, batch {args.batch}, "
          f"median of {args.repeats} interleaved rounds")  # fmt: skip
    names = ["-".join(map(str, w[::4])) for w in args.widths]  # first-last: 8-128
    if len(set(names)) < len(names):
        p.error(f"--widths: expected sets that differ in their first or last width, got {names}")
    variants = list(dict.fromkeys(args.variants))  # one row per variant, even if named twice
    kinds = ("", " compiled") if args.compile else ("",)
    steps = {
        (name, v + kind): make_step(v, w, args.size, args.batch, kind and args.compile_backend)
        for name, w in zip(names, args.widths, strict=True)
        for v in variants
        for kind in kinds
    }
    first = {key: {amp: step(amp) for amp in (False, True)} for key, step in steps.items()}
    for step in steps.values():  # warm-up, both precisions
        for amp in (False, True):
            step(amp)
    times: dict[tuple[str, str], dict[bool, list[float]]] = {
        key: {False: [], True: []} for key in steps
    }
    for _ in range(args.repeats):  # every setting once a round: drift hits them alike
        for key, step in steps.items():
            for amp in (False, True):
                times[key][amp].append(step(amp))
    rows = {}
    print("| widths | variant | fp32 ms | bf16 ms | fp32 / bf16 | bf16 / first widths' bf16 |")
    print("|---|---|---|---|---|---|")
    for key, t in times.items():
        fp32, bf16 = (np.array(t[a]) for a in (False, True))
        eager = key[1].removesuffix(" compiled")
        versus = bf16 / np.array(times[names[0], eager][True])  # per round, then the median
        row = {
            "fp32_ms": 1e3 * float(np.median(fp32)),
            "bf16_ms": 1e3 * float(np.median(bf16)),
            "ratio": float(np.median(fp32 / bf16)),
            "bf16_vs_first": float(np.median(versus)),
        }
        if eager != key[1]:
            row["eager_bf16_vs_compiled"] = float(
                np.median(np.array(times[key[0], eager][True]) / bf16)
            )
            row["first_step_s"] = {"fp32": first[key][False], "bf16": first[key][True]}
        rows[" ".join(key)] = row
        print(
            f"| {key[0]} | {key[1]} | {row['fp32_ms']:.0f} | {row['bf16_ms']:.0f} | "
            f"{row['ratio']:.2f}x | {row['bf16_vs_first']:.2f}x |"
        )
    for name, row in rows.items():
        if "first_step_s" in row:
            print(f"{name}: eager bf16 / compiled bf16 {row['eager_bf16_vs_compiled']:.2f}x; first "
                  f"step (compilation) {row['first_step_s']['fp32']:.1f} s fp32, "
                  f"{row['first_step_s']['bf16']:.1f} s bf16")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args), "rows": rows}, default=str))
    return rows


if __name__ == "__main__":
    main()
