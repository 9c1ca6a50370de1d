"""Train and evaluate the paper's liver -> tumour cascade of ES-UNet++ (sections 3.2.3, 4.2.5).

With no arguments it writes a synthetic CT phantom data set in LiTS layout, trains the
encoding UNet++ teachers (liver and tumour, label -> label), the ES-DS liver model and
the ES-DS tumour model (initialised from the liver model: transfer learning), chooses
the heads and the CRF stages on the validation cases, then runs the cascade (liver ->
largest component -> liver ROI -> tumour -> dense CRF) once on the test cases and
writes, under --out:

    predictions/segmentation-N.nii.gz   labels {0, 1, 2} with the source affine
    figures/case-N.png                  original, liver, resized ROI, tumour (Fig. 15-18)
    figures/curves_*.png                training losses and Dice per head (Fig. 11-14)
    metrics.json                        per case, aggregated, per head, the settings, the
                                        split and what was chosen on validation

and prints Table 2 (Dice per head X0,1..X0,4, liver and tumour), Dice per case and global,
VOE, RVD, ASSD, MSD and timings. ``--data DIR`` runs on a real LiTS folder instead.
Cases are split by --seed into training, validation (--val-cases, 3) and test
(--test-fraction, 25 %): checkpoints, heads and CRF stages are chosen on validation, and
test cases are neither trained nor tuned on.

    python examples/lits_cascade.py                       # phantom, CPU defaults
    python examples/lits_cascade.py --data /data/LiTS --device cuda --size 512
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featsup import data as fd
from featsup.inference import Cascade, resolve_device
from featsup.losses import DeepSupervisionLoss, SegLoss
from featsup.metrics import MetricAccumulator, dice_score
from featsup.models import UNetPlusPlus
from featsup.postprocess import CRF_PRESETS
from featsup.supervision import supervised_student, train_encoding_teacher
from featsup.supervision.variants import VARIANTS, build_variant, parse_variant, segmentation_step
from featsup.training import Trainer, cpu_has_bf16_units, dice_per_head, load_model
from featsup.viz import load_history, plot_cascade_panels, plot_curves

# Defaults for a 2-core CPU (1320 s on a quiet 2-core Xeon with AMX, docs/cascade.md), and
# the paper-scale recipe for CUDA.
PRESETS = {
    "cpu": {
        "size": 128,
        "tumour_size": 128,
        "widths": [8, 16, 32, 64, 128],
        "steps": 1000,
        "tumour_steps": 1250,
        "teacher_steps": 600,
        "batch_size": 8,
        "lr": 3e-3,
        "phantom_shape": [48, 256, 256],
        "cases": 20,
    },
    "cuda": {
        "size": 512,
        "tumour_size": 256,
        "widths": [32, 64, 128, 256, 512],
        "steps": 30000,
        "tumour_steps": 30000,
        "teacher_steps": 3000,
        "batch_size": 16,
        "lr": 1e-3,
        "phantom_shape": [100, 512, 512],
        "cases": 40,
    },
}


# Seg-Loss (eq. 13) per stage. Tumours are a small fraction of the liver ROI: the Dice term
# leaves the background out so that it measures the tumour alone.
STAGE_LOSS = {"liver": SegLoss(), "tumour": SegLoss(include_background=False)}
# HU window, CLAHE and normalisation: one definition for both datasets and the cascade.
PREPROCESSING = fd.Preprocessing()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, help="LiTS folder (volume-N / segmentation-N .nii[.gz])")
    p.add_argument("--out", type=Path, default=Path("outputs/lits_cascade"))
    p.add_argument("--variant", default="ES-DS", type=str.upper, choices=VARIANTS)
    p.add_argument(
        "--head",
        type=int,
        choices=(1, 2, 3, 4),
        help="cascade head (default: chosen on validation)",
    )
    p.add_argument("--steps", type=int, help="optimizer steps per stage model")
    p.add_argument("--tumour-steps", type=int, help="tumour model's steps (default: --steps)")
    p.add_argument("--epochs", type=int, help="epochs per stage model (with --steps: fewer wins)")
    p.add_argument("--teacher-steps", type=int, help="max steps per encoding teacher")
    p.add_argument("--size", type=int, help="liver-stage slice size")
    p.add_argument("--tumour-size", type=int, help="tumour-stage ROI size")
    p.add_argument("--widths", type=int, nargs=5, help="UNet++ widths per depth")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--mask-dilation",
        type=int,
        default=6,
        help="tumour stage: grow the training liver masks by up to this many pixels (and "
        "fill their holes), so that tissue a predicted liver mask includes (rim, "
        "gallbladder) is not taken for tumour; 0 keeps the exact masks (paper)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "none"),
        default="auto",
        help="mixed precision for training (auto: bfloat16 on CUDA and on CPUs with bfloat16 "
        "matrix units, such as Intel AMX; float32 elsewhere)",
    )
    p.add_argument(
        "--crf",
        choices=("auto", "liver", "both", "none"),
        default="auto",
        help="stages refined by the dense CRF (default auto: each stage's preset is used "
        "where it raises that stage's validation Dice)",
    )
    p.add_argument(
        "--head-tolerance",
        type=float,
        default=0.005,
        help="choose the smallest head within this validation Dice of the best (0.005 = 0.5 "
        "points); --head overrides",
    )
    p.add_argument("--no-crf", action="store_true", help="same as --crf none")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, help="phantom cases (train + val + test)")
    p.add_argument("--phantom-shape", type=int, nargs=3, metavar=("D", "H", "W"))
    p.add_argument("--test-cases", nargs="+", help="case ids to test on (default: by --seed)")
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument(
        "--val-cases",
        type=int,
        default=3,
        help="validation cases (every choice: checkpoint, head, CRF, is made on them)",
    )
    args = p.parse_args(argv)
    args.device = str(resolve_device(args.device))
    if args.no_crf:
        args.crf = "none"
    if args.amp == "auto":
        fast = args.device.startswith("cuda") or cpu_has_bf16_units()
        args.amp = "bf16" if fast else "none"
    preset = PRESETS["cuda" if args.device.startswith("cuda") else "cpu"]
    if args.steps is not None and args.tumour_steps is None:
        args.tumour_steps = args.steps
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data: expected a LiTS folder, got {args.data} (not a directory)")
    if args.val_cases < 1:
        p.error(f"--val-cases: expected at least 1, got {args.val_cases}")
    if args.cases < args.val_cases + 2:
        p.error(
            f"--cases: expected at least {args.val_cases + 2} (train, validation, test), "
            f"got {args.cases}"
        )
    if args.mask_dilation < 0:
        p.error(f"--mask-dilation: expected pixels >= 0, got {args.mask_dilation}")
    if not 0 < args.test_fraction < 1:
        p.error(f"--test-fraction: expected a number in (0, 1), got {args.test_fraction}")
    return args


def split_cases(args: argparse.Namespace) -> dict[str, list[fd.LitsCase]]:
    """Train / validation / test cases; test cases are never used for training."""
    if args.data is None:
        folder = args.out / "phantom"
        if not sorted(folder.glob("volume-*.nii.gz")):
            print(f"writing {args.cases} phantom cases {tuple(args.phantom_shape)} to {folder}")
            fd.write_phantom_dataset(
                folder, args.cases, shape=tuple(args.phantom_shape), seed=args.seed
            )
        source = folder
    else:
        source = args.data
    try:
        cases = fd.find_cases(source)
    except ValueError as error:
        sys.exit(f"--data: {error}")
    if len(cases) < 3:
        sys.exit(
            f"--data: expected at least 3 volume/segmentation pairs in {source}, found {len(cases)}"
        )
    ids = [c.case_id for c in cases]
    if args.test_cases:
        unknown = sorted(set(args.test_cases) - set(ids))
        if unknown:
            sys.exit(f"--test-cases: unknown case ids {unknown}; available: {ids}")
        test = [c for c in cases if c.case_id in args.test_cases]
        rest = [c for c in cases if c.case_id not in args.test_cases]
    else:
        order = np.random.default_rng(args.seed).permutation(len(cases))
        n_test = max(1, round(args.test_fraction * len(cases)))
        test = [cases[i] for i in sorted(order[:n_test])]
        rest = [cases[i] for i in sorted(order[n_test:])]
    if len(rest) < args.val_cases + 1:
        sys.exit(
            f"--val-cases: expected fewer than the {len(rest)} non-test cases, got "
            f"{args.val_cases}; fix: more cases or fewer validation cases"
        )
    # validation: every choice is made on these; test cases are scored once, at the end
    order = np.random.default_rng(args.seed + 1).permutation(len(rest))
    val = [rest[i] for i in sorted(order[: args.val_cases])]
    train = [rest[i] for i in sorted(order[args.val_cases :])]
    return {"train": train, "val": val, "test": test}


def datasets(stage: str, cases: dict, args: argparse.Namespace) -> tuple[Any, Any]:
    cache = args.out / "cache"
    if stage == "liver":
        common = {
            "size": (args.size, args.size),
            "cache_dir": cache,
            "preprocessing": PREPROCESSING,
        }
        # no flips: which side of the body the liver is on is a cue worth keeping
        train = fd.LiverSliceDataset(
            cases["train"],
            augment=fd.SliceAugment(flip_p=0.0),
            seed=args.seed,
            empty_fraction=0.2,
            **common,
        )
        val = fd.LiverSliceDataset(cases["val"], empty_fraction=0.2, **common)
    else:
        common = {
            "size": (args.tumour_size, args.tumour_size),
            "cache_dir": cache,
            "preprocessing": PREPROCESSING,
        }
        train = fd.TumourSliceDataset(
            cases["train"],
            augment=fd.SliceAugment(),
            seed=args.seed,
            empty_fraction=0.3,
            mask_dilation=args.mask_dilation,
            mask_fill_holes=args.mask_dilation > 0,
            **common,
        )
        val = fd.TumourSliceDataset(cases["val"], empty_fraction=None, **common)
    return train, val


def teacher(stage: str, train: Any, val: Any, args: argparse.Namespace) -> UNetPlusPlus | None:
    """The stage's encoding teacher: reused when the same label maps trained it before."""
    if parse_variant(args.variant)[0] == "UN":
        return None
    model = train_encoding_teacher(
        torch.stack([train[i]["target"] for i in range(len(train))]),
        val_labels=torch.stack([val[i]["target"] for i in range(len(val))]),
        num_classes=2,
        widths=args.widths,
        steps=args.teacher_steps,
        dice_threshold=0.97,
        amp="bf16" if args.amp == "bf16" else None,
        device=args.device,
        path=args.out / "teachers" / f"{stage}.pt",
        seed=args.seed,
    )
    if model.training_report["reused"]:
        print(
            f"reusing the {stage} teacher in {args.out / 'teachers'} (same label maps and recipe)"
        )
    return model


def train_stage(
    stage: str, cases: dict, args: argparse.Namespace, init: UNetPlusPlus | None = None
) -> UNetPlusPlus:
    """Train one stage's model (teacher first); return its best student in eval mode."""
    train, val = datasets(stage, cases, args)
    print(f"\n== {stage} stage: {args.variant}, {len(train)} training slices ==")
    student = UNetPlusPlus(1, 2, widths=args.widths)
    if init is not None:  # transfer learning (paper 4.2.5): start from the liver model
        student.load_state_dict(init.state_dict())
    # channels-last: the layout oneDNN's convolutions prefer (not measured here against NCHW)
    student.to(memory_format=torch.channels_last)
    student.channels_last = True
    model = build_variant(
        args.variant,
        in_channels=1,
        num_classes=2,
        widths=args.widths,
        teacher=teacher(stage, train, val, args),
        student=student,
    )
    folder = args.out / stage
    steps = args.steps if stage == "liver" else args.tumour_steps
    trainer = Trainer(
        model,
        segmentation_step(DeepSupervisionLoss(STAGE_LOSS[stage])),
        train,
        val_data=val,
        val_fn=lambda m, loader: dice_per_head(m, loader, num_classes=2),
        lr=args.lr,
        max_steps=steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        val_every=max(25, steps // 8),
        checkpoint_dir=folder,
        keep_best_by="val/dice_x0_4",
        warmup_steps=min(50, steps // 10),
        device=args.device,
        amp="bf16" if args.amp == "bf16" else None,
        seed=args.seed,
        drop_last=True,
        # NS trains the X0,4 head alone: DDP must be told the shallow heads get no gradient
        find_unused_parameters=not parse_variant(args.variant)[1],
    )
    last = folder / "last.pt"
    trainer.fit(resume_from=last if args.resume and last.exists() else None)
    student = supervised_student(model)
    part = "model" if student is None else "student"
    best = UNetPlusPlus.from_config((student or model).config)
    load_model(folder / "best.pt", model=best, part=part)
    if hasattr(model, "close"):
        model.close()
    return best.eval()


def crf_options(stages: str) -> tuple[dict | None, dict | None]:
    """(liver CRF, tumour CRF) keyword arguments for ``stages`` in none / liver / both."""
    workers = {"workers": 2}
    liver_crf = None if stages == "none" else {**CRF_PRESETS["liver"], **workers}
    tumour_crf = {**CRF_PRESETS["tumour"], **workers} if stages == "both" else None
    return liver_crf, tumour_crf


def make_cascade(liver, tumour, args, *, heads=(None, None), crf="none") -> Cascade:
    liver_crf, tumour_crf = crf_options(crf)
    return Cascade(
        liver, tumour, liver_size=args.size, tumour_size=args.tumour_size, device=args.device,
        liver_head=heads[0], tumour_head=heads[1], liver_crf=liver_crf, tumour_crf=tumour_crf,
        preprocessing=PREPROCESSING,
    )  # fmt: skip


def choose_head(dice: list[float], tolerance: float) -> int:
    """The smallest head (1-based) whose Dice is within ``tolerance`` of the best head's."""
    best = max(dice)
    return next(k + 1 for k, d in enumerate(dice) if d >= best - tolerance)


def select_on_validation(liver, tumour, cases: list, args: argparse.Namespace) -> dict:
    """Choose the heads and the CRF stages on the validation cases (never on test cases).

    Heads: the smallest whose validation Dice per case is within --head-tolerance of the
    best head's (liver: raw liver output; tumour: through the cascade). CRF: a stage is
    refined only when its preset raises that stage's validation Dice per case.
    """
    loaded = [fd.load_case(case) for case in cases]
    heads = head_dice_table(liver, tumour, loaded, args)
    liver_head = args.head or choose_head(heads["liver"], args.head_tolerance)
    tumour_head = args.head or choose_head(heads["tumour"], args.head_tolerance)
    crf_scores = {}
    options = ("none", "liver", "both") if args.crf == "auto" else (args.crf,)
    for stages in options:
        cascade = make_cascade(liver, tumour, args, heads=(liver_head, tumour_head), crf=stages)
        pairs = [(cascade(c.volume).labels, c) for c in loaded]
        crf_scores[stages] = {
            name: float(np.mean([dice_score(f(r), f(c.labels)) for r, c in pairs]))
            for name, f in (("liver", lambda a: a > 0), ("tumour", lambda a: a == 2))
        }
    crf = options[0]
    if args.crf == "auto":
        use_liver = crf_scores["liver"]["liver"] > crf_scores["none"]["liver"]
        use_tumour = use_liver and crf_scores["both"]["tumour"] > crf_scores["liver"]["tumour"]
        crf = "both" if use_tumour else "liver" if use_liver else "none"
    choice = {"liver_head": liver_head, "tumour_head": tumour_head, "crf": crf}
    print(f"chosen on validation cases {[c.case_id for c in cases]}: {choice}")
    return {**choice, "val_dice_per_head": heads, "val_dice_by_crf": crf_scores}


def head_dice_table(liver, tumour, loaded: list, args: argparse.Namespace) -> dict:
    """Dice per case of each head, averaged over ``loaded`` cases (paper Table 2).

    One cascade prepares each head's model once; per case the liver model runs once per
    head, and the deepest liver head's stage feeds the four tumour heads.
    """
    table: dict[str, list[list[float]]] = {"liver": [[], [], [], []], "tumour": [[], [], [], []]}
    cascade = make_cascade(liver, tumour, args)
    for case in loaded:
        stages = [cascade.liver_stage(case.volume, head=k) for k in range(1, 5)]
        for k in range(1, 5):
            raw = stages[k - 1].probability > 0.5  # the liver head's raw output (no CRF)
            table["liver"][k - 1].append(dice_score(raw, case.labels > 0))
            # --widths has five entries: head 4 is the deepest, the cascade's liver head
            labels = cascade.tumour_stage(stages[3], head=k).labels
            table["tumour"][k - 1].append(dice_score(labels == 2, case.labels == 2))
    return {stage: [float(np.mean(v)) for v in values] for stage, values in table.items()}


def evaluate(liver, tumour, cases: list, choice: dict, args: argparse.Namespace) -> dict:
    """Score the test cases once, with the choices made on validation."""
    heads = (choice["liver_head"], choice["tumour_head"])
    final = make_cascade(liver, tumour, args, heads=heads, crf=choice["crf"])
    acc = {"liver": MetricAccumulator(), "tumour": MetricAccumulator()}
    records, loaded = [], []
    for case in cases:
        loaded.append(fd.load_case(case))
        volume, truth, spacing = loaded[-1].volume, loaded[-1].labels, loaded[-1].spacing
        result = final(volume)
        out = args.out / "predictions" / f"segmentation-{case.case_id}.nii.gz"
        fd.save_prediction(result.labels, case, out)
        record = {"case": case.case_id, "timings": result.timings}
        for name, pred, gt in (
            ("liver", result.labels > 0, truth > 0),
            ("tumour", result.labels == 2, truth == 2),
        ):
            record[name] = acc[name].update(pred, gt, spacing=spacing, case_id=case.case_id)
        records.append(record)
        draw_case(case.case_id, volume, truth, result, args)
        print(
            f"case {case.case_id}: liver Dice {record['liver']['dice']:.3f}, "
            f"tumour Dice {record['tumour']['dice']:.3f}, {result.timings['total']:.1f} s"
        )
    table = head_dice_table(liver, tumour, loaded, args)  # reported, not chosen on
    return {
        "cases": records,
        "liver": summarize(acc["liver"]),
        "tumour": summarize(acc["tumour"]),
        "dice_per_head": {s: {f"x0_{k + 1}": v[k] for k in range(4)} for s, v in table.items()},
        "seconds_per_case": float(np.mean([r["timings"]["total"] for r in records])),
    }


def summarize(acc: MetricAccumulator) -> dict[str, float]:
    """Case means; RVD and surface distances over the cases where they are defined.

    They are undefined (infinite) when one of prediction and truth is empty, as for a
    tumour-free case with a false positive; the count of such cases is reported.
    """
    summary = acc.compute()
    for key in ("rvd", "assd", "msd"):
        values = [case[key] for case in acc.cases if np.isfinite(case[key])]
        summary[key] = float(np.mean(values)) if values else float("nan")
        summary[f"{key}_undefined_cases"] = len(acc.cases) - len(values)
    return summary


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, containers are walked."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def draw_case(case_id: str, volume, truth, result, args) -> None:
    tumour_voxels = (truth == 2).sum(axis=(1, 2))
    k = (
        int(tumour_voxels.argmax())
        if tumour_voxels.any()
        else int((truth > 0).sum((1, 2)).argmax())
    )
    low, high = PREPROCESSING.hu_window
    image = fd.hu_window(volume[k], low=low, high=high, output="uint8")
    roi_image = None
    if result.roi is not None:
        _, rows, cols = result.roi.slices
        crop = np.where(result.labels[k, rows, cols] > 0, image[rows, cols], 0).astype(np.float32)
        roi_image = fd.resize(crop, (args.tumour_size, args.tumour_size))
    plot_cascade_panels(
        args.out / "figures" / f"case-{case_id}.png",
        image=image,
        liver=result.labels[k] > 0,
        roi_image=roi_image,
        tumour=result.labels[k] == 2,
        truth=truth[k],
        title=f"case {case_id}, slice {k}",
    )


def draw_curves(args: argparse.Namespace) -> None:
    runs = {s: load_history(args.out / s / "history.jsonl") for s in ("liver", "tumour")}
    plot_curves(
        args.out / "figures" / "curves_loss.png",
        runs,
        keys=["train/loss", "train/seg", "train/feature"],
        title=args.variant,
    )
    plot_curves(
        args.out / "figures" / "curves_dice.png",
        runs,
        keys=[f"val/dice_x0_{k}" for k in range(1, 5)],
        title="validation Dice per head",
    )


def print_report(metrics: dict, seconds: dict[str, float]) -> None:
    heads = metrics["dice_per_head"]
    print("\nTable 2 layout: Dice per case of each head (test cases)")
    print("| | Liver X0,1 | X0,2 | X0,3 | X0,4 | Tumour X0,1 | X0,2 | X0,3 | X0,4 |")
    print("|---|---|---|---|---|---|---|---|---|")
    cells = [f"{100 * heads[s][f'x0_{k}']:.1f}%" for s in ("liver", "tumour") for k in range(1, 5)]
    print(f"| {metrics['variant']} | " + " | ".join(cells) + " |")
    print("\nCascade (final head, CRF as configured), over the test cases")
    print("| | Dice per case | Dice global | VOE | RVD | ASSD mm | MSD mm |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    for s in ("liver", "tumour"):
        m = metrics[s]
        print(
            f"| {s} | {m['dice_per_case']:.3f} | {m['dice_global']:.3f} | {m['voe']:.3f} | "
            f"{m['rvd']:+.3f} | {m['assd']:.2f} | {m['msd']:.2f} |"
        )
        if m["assd_undefined_cases"] or m["rvd_undefined_cases"]:
            notes.append(
                f"{s}: RVD undefined in {m['rvd_undefined_cases']} case(s), ASSD/MSD in "
                f"{m['assd_undefined_cases']} (an empty prediction or truth); means over the rest"
            )
    for note in notes:
        print(note)
    print(
        "\nTimings: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + f"; cascade {metrics['seconds_per_case']:.1f} s per test case"
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    cases = split_cases(args)
    seconds["data"] = time.perf_counter() - start
    liver = train_stage("liver", cases, args)
    seconds["liver training"] = time.perf_counter() - start - sum(seconds.values())
    tumour = train_stage("tumour", cases, args, init=liver)
    seconds["tumour training"] = time.perf_counter() - start - sum(seconds.values())
    choice = select_on_validation(liver, tumour, cases["val"], args)
    seconds["validation choices"] = time.perf_counter() - start - sum(seconds.values())
    metrics = evaluate(liver, tumour, cases["test"], choice, args)
    seconds["test evaluation"] = time.perf_counter() - start - sum(seconds.values())
    draw_curves(args)
    seconds["total"] = time.perf_counter() - start
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    metrics.update(
        variant=args.variant,
        settings=settings,
        seconds=seconds,
        split={k: [c.case_id for c in v] for k, v in cases.items()},
        chosen_on_validation=choice,
    )
    (args.out / "metrics.json").write_text(json.dumps(_finite(metrics), indent=2, default=str))
    print_report(metrics, seconds)
    print(f"\nwrote {args.out}/metrics.json, predictions/, figures/")
    return metrics


if __name__ == "__main__":
    main()
