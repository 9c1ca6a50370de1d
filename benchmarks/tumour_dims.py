"""The tumour stage in 2D (liver-ROI slices) against 3D (liver-ROI patches), over seeds.

Both train from scratch as UN-DS (no teacher: the comparison is of the dimensions alone)
for the same wall-clock budget (``--seconds``, validation included), keep the checkpoint
with the best validation Dice of X0,4, then choose their head on the validation cases
(the smallest within 0.5 points of the best, through the cascade's tumour stage) and are
scored once on the test cases. Both see the true liver mask at validation and test (an
oracle liver stage), so that only the tumour stage differs. Printed (and written with
--json): per seed and dimension the chosen head, the steps done, and the test tumour
Dice per case and global; then the mean +- sd over seeds and the paired 3D - 2D
differences.

    python benchmarks/tumour_dims.py --seconds 240 --seeds 0 1 2 --json tumour_dims.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featsup import data as fd
from featsup.inference import Cascade, smallest_head_within
from featsup.losses import DeepSupervisionLoss, SegLoss
from featsup.metrics import MetricAccumulator, dice_score
from featsup.models import UNetPlusPlus, pooling_for_spacing
from featsup.supervision.variants import variant_trainer
from featsup.training import cpu_has_bf16_units, load_model


def datasets(dims: int, split: dict, args: argparse.Namespace, seed: int) -> tuple[Any, Any]:
    return fd.stage_datasets(
        "tumour", split["train"], split["val"], size=args.roi, seed=seed, val_empty_fraction=0.3,
        patch=args.patch if dims == 3 else None, patches_per_case=400,
        cache_dir=args.data / "cache",
    )  # fmt: skip


def run(dims: int, seed: int, split: dict, loaded: dict, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    train, val = datasets(dims, split, args, seed)
    if dims == 3:
        pooling = pooling_for_spacing(train.spacing, depth=len(args.widths) - 1)
        model = UNetPlusPlus(1, 2, widths=args.widths, spatial_dims=3, pooling=pooling)
    else:
        model = UNetPlusPlus(1, 2, widths=args.widths)
    folder = args.out / f"{dims}d-seed{seed}"
    start = time.perf_counter()
    loss = DeepSupervisionLoss(SegLoss(include_background=False))
    trainer = variant_trainer(
        model, train, val, num_classes=2, loss=loss,
        lr=args.lr, max_steps=100_000, batch_size=args.batch_size if dims == 2 else args.patches,
        val_every=args.val_every, warmup_steps=50, checkpoint_dir=folder, seed=seed,
        amp=args.amp, progress=False, device="cpu",
        stop_when=lambda _: time.perf_counter() - start > args.seconds,
    )  # fmt: skip
    trainer.fit()
    seconds = time.perf_counter() - start
    best = load_model(folder / "best.pt", map_location="cpu")
    patch = {"tumour_patch": tuple(args.patch)} if dims == 3 else {}
    cascade = Cascade(best, best, liver_size=args.roi, tumour_size=args.roi, device="cpu", **patch)
    livers = {  # the true liver: only the tumour stage differs
        k: [cascade.liver_stage(c.volume, mask=c.labels >= 1) for c in v] for k, v in loaded.items()
    }
    val_dice = [
        float(np.mean([dice_score(cascade.tumour_stage(lv, head=k).labels == 2, c.labels == 2)
                       for lv, c in zip(livers["val"], loaded["val"], strict=True)]))
        for k in range(1, len(args.widths))
    ]  # fmt: skip
    head = smallest_head_within(val_dice, 0.005)
    acc = MetricAccumulator(surface=False)
    for liver, case in zip(livers["test"], loaded["test"], strict=True):
        labels = cascade.tumour_stage(liver, head=head).labels
        acc.update(labels == 2, case.labels == 2, case_id=case.case_id)
    test = acc.compute(ignore_undefined=True)
    record = {"dims": dims, "seed": seed, "steps": trainer.step, "train_seconds": seconds,
              "val_dice_per_head": val_dice, "head": head,
              "test_dice_per_case": test["dice_per_case"],
              "test_dice_global": test["dice_global"]}  # fmt: skip
    shown = ", ".join(f"{d:.3f}" for d in val_dice)
    print(f"{dims}D seed {seed}: {trainer.step} steps in {seconds:.0f} s, head X0,{head} "
          f"(validation {shown}), test Dice per case {test['dice_per_case']:.3f}, "
          f"global {test['dice_global']:.3f}", flush=True)  # fmt: skip
    return record


def summary(records: list[dict], seeds: list[int]) -> dict:
    by = {(r["dims"], r["seed"]): r for r in records}
    out: dict[str, Any] = {}
    print("\n| tumour stage | Dice per case | Dice global | steps | head |\n|---|---|---|---|---|")
    for dims in (2, 3):
        rows = [by[dims, s] for s in seeds]
        stats = {
            k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows], ddof=1)))
            for k in ("test_dice_per_case", "test_dice_global")
        }
        out[f"{dims}d"] = stats
        steps = ", ".join(str(r["steps"]) for r in rows)
        heads = ", ".join(str(r["head"]) for r in rows)
        (case, case_sd), (pooled, pooled_sd) = stats.values()
        print(f"| {dims}D | {case:.3f} +- {case_sd:.3f} | {pooled:.3f} +- {pooled_sd:.3f} "
              f"| {steps} | {heads} |")  # fmt: skip
    print("\n| paired 3D - 2D | per seed | mean +- sd |\n|---|---|---|")
    for key in ("test_dice_per_case", "test_dice_global"):
        diff = [by[3, s][key] - by[2, s][key] for s in seeds]
        out[f"diff_{key}"] = diff
        print(f"| {key[5:]} | {', '.join(f'{d:+.3f}' for d in diff)} | "
              f"{np.mean(diff):+.3f} +- {np.std(diff, ddof=1):.3f} |")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("outputs/tumour_dims/phantom"))
    p.add_argument("--out", type=Path, default=Path("outputs/tumour_dims"))
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--val-cases", type=int, default=2)
    p.add_argument("--test-cases", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=[48, 256, 256])
    p.add_argument("--seconds", type=float, default=240.0, help="training budget per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--roi", type=int, default=128, help="2D ROI size")
    p.add_argument("--patch", type=int, nargs=3, default=[16, 64, 64], help="3D patch")
    p.add_argument("--batch-size", type=int, default=8, help="2D slices per step")
    p.add_argument("--patches", type=int, default=2, help="3D patches per step")
    p.add_argument("--widths", type=int, nargs=5, default=[8, 16, 32, 64, 128])
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.amp = "bf16" if cpu_has_bf16_units() else None
    fd.write_phantom_dataset(args.data, args.cases, shape=args.shape, seed=3000, reuse=True)
    cases = fd.find_cases(args.data)
    n_test, n_val = args.test_cases, args.val_cases
    split = {"test": cases[:n_test], "val": cases[n_test:n_test + n_val],
             "train": cases[n_test + n_val:]}  # fmt: skip
    loaded = {k: [fd.load_case(c) for c in split[k]] for k in ("val", "test")}
    records = [run(dims, seed, split, loaded, args) for seed in args.seeds for dims in (2, 3)]
    result = {"settings": vars(args), "runs": records, "summary": summary(records, args.seeds)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
