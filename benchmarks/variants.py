"""The paper's six variants UN/BS/ES x NS/DS on the phantom, with the same budget and seeds.

For each stage (liver on whole slices, tumour on liver-ROI crops) one encoding UNet++
teacher is trained, then every variant trains for the same number of steps from the same
seed; the Dice of each head X0,1..X0,4 on held-out test cases is printed in the layout
of the paper's Table 2, and the training curves (Fig. 11-14 analogues: Seg-Loss, SL1
feature loss, validation Dice per head) are drawn. Averaged over ``--seeds``.

    python benchmarks/variants.py --steps 300 --seeds 0 1 2 --json variants.json
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
from featsup.supervision import train_encoding_teacher
from featsup.training import Trainer, dice_per_head
from featsup.variants import VARIANTS, build_variant, parse_variant, segmentation_step
from featsup.viz import load_history, plot_curves


def stage_data(stage: str, folder: Path, ids: dict[str, list[str]], size: int) -> dict:
    cases = {c.case_id: c for c in fd.find_cases(folder)}
    common = {"size": (size, size), "cache_dir": folder / "cache"}
    make = fd.LiverSliceDataset if stage == "liver" else fd.TumourSliceDataset
    empty = 0.2 if stage == "liver" else 0.3
    # no left-right flips for whole slices: the liver's side of the body is a cue
    augment = fd.SliceAugment(flip_p=0.0) if stage == "liver" else fd.SliceAugment()
    return {
        "train": make(
            [cases[i] for i in ids["train"]], augment=augment, empty_fraction=empty, **common
        ),
        "val": make([cases[i] for i in ids["val"]], empty_fraction=empty, **common),
        "test": make([cases[i] for i in ids["test"]], empty_fraction=None, **common),
    }


def run_variant(variant: str, stage: str, sets: dict, teacher: Any, seed: int, args) -> dict:
    torch.manual_seed(seed)
    model = build_variant(
        variant, in_channels=1, num_classes=2, widths=args.widths, teacher=teacher
    )
    folder = args.out / stage / f"{variant}-seed{seed}"
    trainer = Trainer(
        model,
        segmentation_step(),
        sets["train"],
        val_data=sets["val"],
        val_fn=lambda m, loader: dice_per_head(m, loader, num_classes=2),
        lr=args.lr,
        max_steps=args.steps,
        batch_size=args.batch_size,
        seed=seed,
        val_every=max(10, args.steps // 10),
        log_every=max(5, args.steps // 30),
        checkpoint_dir=folder,
        warmup_steps=min(50, args.steps // 10),
        device=args.device,
        drop_last=True,
        # NS trains the X0,4 head alone: DDP must be told the shallow heads get no gradient
        find_unused_parameters=not parse_variant(variant)[1],
        progress=False,
    )
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    loader = torch.utils.data.DataLoader(sets["test"], batch_size=16)
    test = dice_per_head(model, loader, num_classes=2)
    if hasattr(model, "close"):
        model.close()
    return {"test": test, "seconds": seconds, "history": str(folder / "history.jsonl")}


def print_table(results: dict) -> None:
    print("\n| variant | Liver X0,1 | X0,2 | X0,3 | X0,4 | Tumour X0,1 | X0,2 | X0,3 | X0,4 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant in results["variants"]:
        cells = []
        for stage in ("liver", "tumour"):
            runs = results[stage].get(variant, [])
            for k in range(1, 5):
                values = [r["test"][f"dice_x0_{k}"] for r in runs]
                cells.append(f"{100 * np.mean(values):.1f}%" if values else "-")
        print(f"| {variant} | " + " | ".join(cells) + " |")


def draw(results: dict, args: argparse.Namespace) -> None:
    for stage in ("liver", "tumour"):
        runs = {v: load_history(r[0]["history"]) for v, r in results[stage].items() if r}
        if not runs:
            continue
        plot_curves(
            args.out / f"curves_{stage}_loss.png",
            runs,
            keys=["train/seg", "train/feature"],
            title=f"{stage}: training losses (seed {args.seeds[0]})",
        )
        plot_curves(
            args.out / f"curves_{stage}_dice.png",
            runs,
            keys=[f"val/dice_x0_{k}" for k in range(1, 5)],
            title=f"{stage}: validation Dice per head",
        )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/variants"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--stages", nargs="+", default=["liver", "tumour"], choices=["liver", "tumour"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--teacher-steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--phantom-shape", type=int, nargs=3, default=[40, 192, 192])
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    folder = args.out / "phantom"
    if not sorted(folder.glob("volume-*.nii.gz")):
        fd.write_phantom_dataset(folder, args.cases, shape=tuple(args.phantom_shape), seed=1000)
    ids = [c.case_id for c in fd.find_cases(folder)]
    split = {"test": ids[:2], "val": ids[2:3], "train": ids[3:]}
    results: dict[str, Any] = {"variants": args.variants, "settings": vars(args), "split": split}
    for stage in args.stages:
        sets = stage_data(stage, folder, split, args.size)
        labels = torch.stack([sets["train"][i]["target"] for i in range(len(sets["train"]))])
        teacher = train_encoding_teacher(
            labels,
            num_classes=2,
            widths=args.widths,
            steps=args.teacher_steps,
            lr=args.lr,
            dice_threshold=0.97,
            device=args.device,
            progress=False,
        )
        results[stage] = {}
        for variant in args.variants:
            results[stage][variant] = []
            for seed in args.seeds:
                run = run_variant(variant, stage, sets, teacher, seed, args)
                results[stage][variant].append(run)
                print(
                    f"{stage} {variant} seed {seed}: "
                    + ", ".join(f"{k[5:]} {v:.3f}" for k, v in run["test"].items())
                    + f" ({run['seconds']:.0f} s)",
                    flush=True,
                )
    for stage in ("liver", "tumour"):
        results.setdefault(stage, {})
    print_table(results)
    draw(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
