"""Step-time overhead of wrapping each architecture in one line with ``FeatureSupervisor``.

For every architecture, copies of the same student (same initial weights) train on the
same batch (2 x 1 x 64 x 64; 3D: 2 x 1 x 32^3): one plainly (cross-entropy, AdamW) and
one or two wrapped with ``FeatureSupervisor(student, teacher)``, all defaults
(``levels="all"``), whose loss adds the feature loss:

- "fixed": featsup's encoding UNet++ with the paper's widths (32, 64, 128, 256, 512;
  levels at 1/2 .. 1/16), untrained (the cost does not depend on its weights); the 3D
  MONAI UNet gets a 3D MONAI UNet teacher instead, as no 3D UNet++ exists;
- "matching" (2D): ``matching_teacher(student, ...)`` (one training step: only its
  shape matters here), the student's reductions and widths, so no adapters.

Students are the libraries' defaults (smp: ``encoder_weights=None``, default decoders;
MONAI: typical channels) with one input channel and two classes. Rounds are interleaved
(each round runs every variant once, in a random order); the table gives the median plain
step and, per wrapped variant, the median over rounds of the per-round ratio wrapped /
plain with its interquartile range. Nothing is asserted.

Usage:
    python benchmarks/wrap_overhead.py [--rounds 15] [--warmup 2] [--threads 1]
        [--only smp-Unet-resnet18 ...] [--json results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor, matching_teacher

Builder = Callable[[], tuple[nn.Module, nn.Module, tuple[int, ...]]]
SIZE_2D, SIZE_3D = (2, 64, 64), (2, 32, 32, 32)  # batch 2


def featsup_teacher() -> nn.Module:
    return UNetPlusPlus(2, 2, widths=(32, 64, 128, 256, 512), skip_connections=False)


def architectures() -> dict[str, Builder]:
    import monai.networks.nets as mn
    import segmentation_models_pytorch as smp

    def smp_builder(arch: str, encoder: str) -> Builder:
        def build() -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
            model = getattr(smp, arch)(encoder, encoder_weights=None, in_channels=1, classes=2)
            return model, featsup_teacher(), SIZE_2D

        return build

    def monai_builder(make: Callable[[], nn.Module]) -> Builder:
        return lambda: (make(), featsup_teacher(), SIZE_2D)

    two_d = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}
    builders: dict[str, Builder] = {"featsup-UNetPlusPlus": lambda: (
        UNetPlusPlus(1, 2), featsup_teacher(), SIZE_2D)}  # fmt: skip
    for arch in ("Unet", "FPN", "DeepLabV3Plus", "UnetPlusPlus"):
        for encoder in ("resnet18", "efficientnet-b0", "mit_b0"):
            if not (arch == "UnetPlusPlus" and encoder == "mit_b0"):  # smp rejects it
                builders[f"smp-{arch}-{encoder}"] = smp_builder(arch, encoder)
    unet = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2)}
    builders["monai-UNet"] = monai_builder(lambda: mn.UNet(**two_d, **unet))
    builders["monai-BasicUNet"] = monai_builder(lambda: mn.BasicUNet(**two_d))
    builders["monai-BasicUNetPlusPlus"] = monai_builder(lambda: mn.BasicUNetPlusPlus(**two_d))
    builders["monai-DynUNet"] = monai_builder(lambda: mn.DynUNet(
        **two_d, kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2],
        upsample_kernel_size=[2] * 4))  # fmt: skip
    builders["monai-SegResNet"] = monai_builder(lambda: mn.SegResNet(**two_d))
    three_d = {"spatial_dims": 3, "out_channels": 2, **unet}
    builders["monai-UNet-3d"] = lambda: (
        mn.UNet(in_channels=1, **three_d), mn.UNet(in_channels=2, **three_d), SIZE_3D)  # fmt: skip
    return builders


def seg_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    heads = output if isinstance(output, (list, tuple)) else [output]
    return sum(F.cross_entropy(h, target) for h in heads) / len(heads)  # type: ignore[return-value]


def batch(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(shape, generator=gen) > 0.7).long()
    return target[:, None].float() + 0.5 * torch.randn(
        shape[0], 1, *shape[1:], generator=gen
    ), target


def make_step(model: nn.Module, image: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    """One AdamW training step of ``model`` (a plain student or a FeatureSupervisor)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    wrapped = isinstance(model, FeatureSupervisor)

    def step() -> None:
        out = model(image, target) if wrapped else model(image)
        output = out.output if wrapped else out
        loss = seg_loss(output, target) + (out.feature_loss if wrapped else 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def variants(build: Builder) -> tuple[dict[str, Callable[[], None]], dict[str, FeatureSupervisor]]:
    """Plain, wrapped with the fixed teacher, wrapped with a matching teacher (2D only)."""
    torch.manual_seed(0)
    student, teacher, shape = build()
    image, target = batch(shape)
    copies = [copy.deepcopy(student) for _ in range(2)]
    sups = {"fixed": FeatureSupervisor(copies[0], teacher, probe_size=shape[1:])}
    if len(shape) == 3:  # matching_teacher builds 2D UNet++ only
        matched = matching_teacher(copies[1], target, num_classes=2, steps=1, batch_size=2,
                                   progress=False)  # fmt: skip
        sups["matching"] = FeatureSupervisor(copies[1], matched)
    fns = {"plain": make_step(student, image, target)}
    fns.update({name: make_step(sup, image, target) for name, sup in sups.items()})
    return fns, sups


def describe(sup: FeatureSupervisor) -> dict[str, Any]:
    """Levels paired, left out, and the adapter channels of one supervisor."""
    adapters = [
        f"{a.in_channels}->{a.out_channels}" if isinstance(a, nn.modules.conv._ConvNd) else "="
        for a in sup.adapters
    ]
    reductions = {lv.name: lv.reduction[0] for lv in sup.student_levels}
    return {
        "pairs": [f"{s}->{t} (1/{reductions[s]})"
                  for s, t in zip(sup.level_names, sup.teacher_level_names, strict=True)],
        "left_out_student": [lv.name for lv in sup.student_levels
                             if lv.name not in sup.level_names],
        "left_out_teacher": [lv.name for lv in sup.teacher_levels
                             if lv.name not in sup.teacher_level_names],
        "adapters": adapters,
        "teacher_widths": list(getattr(sup.teacher, "widths", [])),
    }  # fmt: skip


def measure(build: Builder, rounds: int, warmup: int, seed: int) -> dict[str, Any]:
    fns, sups = variants(build)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    rng = random.Random(seed)
    order = list(fns)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    result: dict[str, Any] = {"plain_ms": 1e3 * statistics.median(times["plain"])}
    for name, sup in sups.items():
        ratios = [w / p for w, p in zip(times[name], times["plain"], strict=True)]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        result[name] = {
            **describe(sup), "ms": 1e3 * statistics.median(times[name]),
            "ratio_median": statistics.median(ratios), "ratio_iqr": [q1, q3],
        }  # fmt: skip
    result["times_s"] = times
    return result


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="architecture names to run (default all)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # smp / MONAI deprecation chatter
    builders = architectures()
    names = args.only or list(builders)
    env = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
           "torch": torch.__version__, "load_before": os.getloadavg()}  # fmt: skip
    results = {}
    print(f"{'architecture':<30} {'plain ms':>8} {'x fixed':>7} {'IQR':>13} {'x match':>7} "
          f"{'IQR':>13}  pairs with the fixed teacher | adapters")  # fmt: skip
    for k, name in enumerate(names):
        r = results[name] = measure(builders[name], args.rounds, args.warmup, seed=k)
        cells = []
        for variant in ("fixed", "matching"):
            v = r.get(variant)
            cells += [f"{v['ratio_median']:.3f}", "[{:.3f}, {:.3f}]".format(*v["ratio_iqr"])] \
                if v else ["-", "-"]  # fmt: skip
        fixed = r["fixed"]
        print(f"{name:<30} {r['plain_ms']:>8.1f} {cells[0]:>7} {cells[1]:>13} {cells[2]:>7} "
              f"{cells[3]:>13}  {', '.join(fixed['pairs'])} | {', '.join(fixed['adapters'])}",
              flush=True)  # fmt: skip
    env["load_after"] = os.getloadavg()
    print(f"# {env}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rounds": args.rounds, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
