"""Training-step layout on CPU: contiguous (NCHW) against channels-last, side by side.

Five jobs of the cascade example's CPU defaults (widths 8..128), each in both
layouts, in float32 and under bfloat16 autocast (``--precisions``):

- ``liver teacher``: one training step of ``train_encoding_teacher``'s recipe on 8
  whole 128 x 128 label maps (the liver stage's);
- ``tumour teacher``: the same on 16 crops of 64 x 64 (the tumour stage's);
- ``ES-DS student``: one training step of the ES-DS student (channels-last, as the
  example trains it) on 8 slices of 128 x 128, its live teacher in one layout or the
  other;
- ``UN-DS student``: one training step of the student alone (what the example trains by
  default) on 8 slices of 128 x 128, the *student* in one layout or the other;
- ``UN-DS student 3D``: the same for the ``--dims 3`` student (pooling for 5.2 x 1.4 x
  1.4 mm voxels) on 2 patches of 16 x 64 x 64, NCDHW against channels-last-3d.

Each optimizer step is timed; the layouts alternate within every repeat, and the
table gives the medians and the median of the per-repeat ratios (this machine is
shared and noisy: compare ratios, not absolute times).

    python benchmarks/teacher_layout.py --repeats 15 --json teacher_layout.json
    python benchmarks/teacher_layout.py --precisions fp32 --jobs "UN-DS student"
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _timing import timed_step

from featsup.models import UNetPlusPlus, pooling_for_spacing
from featsup.supervision.teacher import _encoding_unetpp, _reconstruction_step
from featsup.supervision.variants import build_variant, segmentation_step
from featsup.training import cpu_has_bf16_units

JOBS = {
    "liver teacher": (8, 128),
    "tumour teacher": (16, 64),
    "ES-DS student": (8, 128),
    "UN-DS student": (8, 128),
    "UN-DS student 3D": (2, 64),
}


def make_step(job: str, widths: list[int], channels_last: bool) -> Callable[[bool], float]:
    """One timed optimizer step of ``job`` with its teacher (for ``UN-DS student``: the
    student) in the given layout."""
    batch, size = JOBS[job]
    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(batch, size, size, generator=gen) > 0.7).long()
    if job.startswith("UN-DS student"):
        torch.manual_seed(0)  # the same weights in both layouts
        shape: tuple[int, ...] = (size, size)
        if job.endswith("3D"):
            shape = (16, size, size)
            pooling = pooling_for_spacing((5.2, 1.4, 1.4), depth=len(widths) - 1)
            student = UNetPlusPlus(1, 2, widths=widths, spatial_dims=3, pooling=pooling)
            target = (torch.rand(batch, *shape, generator=gen) > 0.7).long()
        else:
            student = UNetPlusPlus(1, 2, widths=widths)
        if channels_last:
            student.use_channels_last()
        seg, image = segmentation_step(), torch.randn(batch, 1, *shape, generator=gen)

        def student_loss() -> torch.Tensor:
            return seg(student, {"image": image, "target": target})[0]

        return timed_step(student_loss, torch.optim.Adam(student.parameters(), lr=1e-3))
    teacher = _encoding_unetpp(2, widths, 2, None, seed=0)
    if channels_last:
        teacher.use_channels_last()
    if job == "ES-DS student":
        teacher.eval()
        student = UNetPlusPlus(1, 2, widths=widths).use_channels_last()
        model: torch.nn.Module = build_variant(
            "ES-DS", in_channels=1, num_classes=2, widths=widths, teacher=teacher, student=student
        )
        data = {"image": torch.randn(batch, 1, size, size, generator=gen), "target": target}
        seg = segmentation_step()

        def loss_fn() -> torch.Tensor:
            return seg(model, data)[0]
    else:
        model, recon = teacher.train(), _reconstruction_step(2)

        def loss_fn() -> torch.Tensor:
            return recon(model, target)[0]

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    return timed_step(loss_fn, optimizer)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--widths", type=int, nargs=5, default=[8, 16, 32, 64, 128])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    print(f"CPU: {platform.processor() or platform.machine()}; bf16 units: {cpu_has_bf16_units()}")
    print(f"threads {torch.get_num_threads()}, widths {args.widths}, {args.repeats} repeats")
    print("| job | precision | NCHW ms | channels-last ms | NCHW / channels-last |")
    print("|---|---|---|---|---|")
    rows = []
    for job in args.jobs:
        for amp in (precision == "bf16" for precision in args.precisions):
            steps = {cl: make_step(job, args.widths, cl) for cl in (False, True)}
            for _ in range(2):  # warm-up
                for cl in (False, True):
                    steps[cl](amp)
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeats):
                for cl in (False, True):
                    times[cl].append(steps[cl](amp))
            nchw, cl_ms = (1e3 * float(np.median(times[c])) for c in (False, True))
            ratio = float(np.median(np.array(times[False]) / np.array(times[True])))
            precision = "bf16" if amp else "fp32"
            rows.append({"job": job, "precision": precision, "nchw_ms": nchw,
                         "channels_last_ms": cl_ms, "ratio": ratio})  # fmt: skip
            print(f"| {job} | {precision} | {nchw:.0f} | {cl_ms:.0f} | {ratio:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args), "rows": rows}, default=str))
    return {"rows": rows}


if __name__ == "__main__":
    main()
