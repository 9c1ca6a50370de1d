"""Convergence of ES-DS vs UN-DS (paper section 3.1.2 / 5): steps to a target Dice.

A small liver-segmentation task on the synthetic CT phantom (``featsup.data.phantom``):
axial 64 x 64 slices that contain liver, HU window [-100, 400], labels liver + tumour vs
background. The encoding UNet++ teacher is trained once, label -> label, with
:func:`featsup.supervision.train_encoding_teacher`; then, for every seed, the same
initial student is trained as

- ``UN-DS``: UNet++ with deep supervision (mean over the heads of Dice + CE, eq. 13-14);
- ``ES-DS``: the same plus the Smooth-L1 feature loss at X(1,0)..X(4,0) (eq. 15-17,
  ``w1 = w2 = 1``), through :class:`featsup.supervision.FeatureSupervisor`;

(``--variants`` adds ``BS-DS``, ``UN-NS``, ``BS-NS``, ``ES-NS``) with the same batches.
Every ``--eval-every`` steps the global Dice of the deepest head (eval mode) on held-out
phantoms is measured; the table gives, per variant, the steps at which each seed first
reached ``--target`` (``-`` if never), the mean Dice at a few steps, and the final Dice
of every head (the pruning view of Table 2). Nothing is asserted: the numbers are
reported as measured, whichever way they point.

Usage:
    python benchmarks/convergence.py [--seeds 0 1 2] [--target 0.85] [--max-steps 400]
        [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featsup.data.phantom import make_phantom
from featsup.losses import TotalLoss, deep_supervision_loss
from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor, train_encoding_teacher
from featsup.training import load_model

LEVELS = {"UN": None, "BS": "bottleneck", "ES": "all"}


def phantom_slices(seeds: range, size: int, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices with at least 0.5 % liver from phantoms ``seeds``: (N, 1, S, S) and (N, S, S)."""
    images, labels = [], []
    for seed in seeds:
        volume, label, _ = make_phantom(seed, (depth, size, size))
        keep = (label > 0).reshape(depth, -1).mean(1) > 0.005
        images.append(np.clip((volume[keep].astype(np.float32) + 100.0) / 500.0, 0.0, 1.0))
        labels.append((label[keep] > 0).astype(np.int64))
    image = torch.from_numpy(np.concatenate(images))[:, None]
    image = (image - image.mean()) / image.std()
    return image, torch.from_numpy(np.concatenate(labels))


def global_dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    inter = int(((pred == 1) & (target == 1)).sum())
    total = int((pred == 1).sum() + (target == 1).sum())
    return 2.0 * inter / total if total else 1.0


@torch.no_grad()
def evaluate(model: UNetPlusPlus, image: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Global Dice of every head, eval mode."""
    model.eval()
    ds = model.deep_supervision
    model.deep_supervision = True
    heads = [torch.cat(h) for h in zip(*(model(x) for x in image.split(64)), strict=True)]
    model.deep_supervision = ds
    model.train()
    return [global_dice(h.argmax(1), target) for h in heads]


def train_variant(
    name: str, seed: int, teacher: UNetPlusPlus, data: dict[str, torch.Tensor], args: Any
) -> dict[str, Any]:
    supervision, mode = name.split("-")
    torch.manual_seed(seed)
    student = UNetPlusPlus(1, 2, widths=args.widths, deep_supervision=mode == "DS")
    sup = None
    if LEVELS[supervision] is not None:
        sup = FeatureSupervisor(student, teacher, levels=LEVELS[supervision])
    total = TotalLoss(seg=deep_supervision_loss, feature_weight=args.feature_weight)  # eq. 17
    params = sup.parameters() if sup is not None else student.parameters()
    optimizer = torch.optim.Adam(params, lr=args.lr)
    gen = torch.Generator().manual_seed(1000 + seed)
    image, target = data["train_image"], data["train_target"]
    curve, reached, start = [], None, time.perf_counter()
    for step in range(1, args.max_steps + 1):
        index = torch.randint(0, len(image), (args.batch,), generator=gen)
        x, y = image[index], target[index]
        if sup is None:
            loss = deep_supervision_loss(student(x), y)
        else:
            out = sup(x, y)
            loss = total(out.output, y, feature=out.feature_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0:
            dice = evaluate(student, data["val_image"], data["val_target"])
            curve.append((step, dice[-1]))
            if reached is None and dice[-1] >= args.target:
                reached = step
                if args.stop_at_target:
                    break
    final_heads = evaluate(student, data["val_image"], data["val_target"])
    if sup is not None:
        sup.close()
    print(
        f"  {name} seed {seed}: target at step {reached}, final heads "
        f"{[round(d, 3) for d in final_heads]}, {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )
    return {
        "variant": name,
        "seed": seed,
        "steps_to_target": reached,
        "curve": curve,
        "final_heads": final_heads,
        "seconds": time.perf_counter() - start,
    }


def get_teacher(target: torch.Tensor, args: Any) -> tuple[UNetPlusPlus, dict[str, Any]]:
    """Load ``--teacher`` if it exists, else train the encoding UNet++ (and save it there)."""
    if args.teacher and Path(args.teacher).is_file():
        path = Path(args.teacher)
        return load_model(path), torch.load(path, weights_only=True)["report"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.teacher) if args.teacher else Path(tmp) / "teacher.pt"
        teacher = train_encoding_teacher(
            target, num_classes=2, widths=args.widths, steps=args.teacher_steps,
            lr=args.teacher_lr, dice_threshold=0.98, eval_every=100, path=path, seed=0,
            progress=False,
        )  # fmt: skip
        return teacher, torch.load(path, weights_only=True)["report"]


def dice_at(run: dict[str, Any], step: int) -> float | None:
    values = [d for s, d in run["curve"] if s == step]
    return values[0] if values else None


def report(runs: list[dict[str, Any]], args: Any, teacher_report: dict[str, Any]) -> None:
    print(
        f"phantom liver slices {args.size}x{args.size}, widths {tuple(args.widths)}, batch "
        f"{args.batch}, Adam lr {args.lr}, target Dice {args.target} (deepest head, "
        f"held-out phantoms), seeds {args.seeds}"
    )
    print(
        f"encoding teacher: Dice {teacher_report['dice']:.4f} after {teacher_report['steps']} "
        f"steps (threshold reached: {teacher_report['reached_threshold']})"
    )
    marks = (40, 100, 200, 300, 400, 600, 800)
    checkpoints = [s for s in marks if s <= args.max_steps and s % args.eval_every == 0]
    head = " ".join(f"{'@' + str(s):>6}" for s in checkpoints)
    print(
        f"{'variant':<7} {'steps to target per seed':<26} {'mean':>6}  Dice {head}  final X01..X04"
    )
    for name in args.variants:
        mine = [r for r in runs if r["variant"] == name]
        steps = [r["steps_to_target"] for r in mine]
        shown = ", ".join("-" if s is None else str(s) for s in steps)
        done = [s for s in steps if s is not None]
        mean = f"{statistics.mean(done):.0f}" if len(done) == len(steps) else "n/a"
        at = []
        for s in checkpoints:
            values = [v for v in (dice_at(r, s) for r in mine) if v is not None]
            at.append(f"{statistics.mean(values):6.3f}" if len(values) == len(mine) else "     -")
        heads = np.mean([r["final_heads"] for r in mine], axis=0)
        print(
            f"{name:<7} {shown:<26} {mean:>6}       {' '.join(at)}  "
            f"{' '.join(f'{h:.3f}' for h in heads)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["UN-DS", "ES-DS"])
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--stop-at-target", action="store_true")
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-phantoms", type=int, default=8)
    parser.add_argument("--val-phantoms", type=int, default=2)
    parser.add_argument("--teacher-steps", type=int, default=3000)
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument("--teacher", type=str, default=None, help="load / save the teacher here")
    parser.add_argument("--feature-weight", type=float, default=1.0, help="w2 of eq. 17")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    for name in args.variants:
        sup, _, mode = name.partition("-")
        if sup not in LEVELS or mode not in ("NS", "DS"):
            parser.error(f"--variants: expected names like ES-DS or UN-NS, got {name!r}")

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train_image, train_target = phantom_slices(range(args.train_phantoms), args.size, 40)
    val_image, val_target = phantom_slices(range(100, 100 + args.val_phantoms), args.size, 40)
    data = {"train_image": train_image, "train_target": train_target,
            "val_image": val_image, "val_target": val_target}  # fmt: skip
    teacher, teacher_report = get_teacher(train_target, args)
    print(f"  teacher: {teacher_report}, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    runs = [
        train_variant(name, seed, teacher, data, args)
        for seed in args.seeds
        for name in args.variants
    ]
    print(f"{len(train_image)} training / {len(val_image)} validation slices")
    report(runs, args, teacher_report)
    elapsed = time.perf_counter() - start
    print(f"total {elapsed:.0f} s on {platform.machine()}, {torch.get_num_threads()} threads")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "convergence", "args": vars(args), "runs": runs,
                       "teacher": teacher_report, "seconds": elapsed}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
