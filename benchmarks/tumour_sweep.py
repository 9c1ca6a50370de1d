"""Choose the tumour stage's data settings on the example's validation cases, over seeds.

The cascade example's tumour stage has settings that were once picked on test cases:
the ROI size, how far the training liver masks are grown (``--mask-dilation``) and the
share of tumour-free slices it trains on (``STAGE_EMPTY_FRACTION["tumour"]``); one
the paper fixed: its preprocessing (CLAHE, or the HU window alone); and its 2.5D context
(neighbouring slices as input channels; the liver model's kernel starts on the centre
slice, :func:`featsup.models.transfer_weights`); and another the paper fixed, its scope:
the liver alone (the image zeroed outside the liver mask, paper 4.1.3) or the whole ROI
with tumours that touch the liver kept whole (``Cascade(tumour_scope="roi")``). This
script re-chooses them where choices belong: it trains the tumour stage of the example
(2D UNet++ from the example's liver model, as UN-DS: no teacher, which is the same for
every setting; or as any other variant with ``--variants``, feature-supervised by the
example's own tumour teacher) once per setting, variant and seed, for a fixed number of
steps, and scores it on
the example's **validation** cases only, through the cascade with the example's own
liver model (so that grown masks meet the predicted liver mask they exist for). The test
cases are never loaded.

Per run: the validation tumour Dice per case of every head, and the Dice once the head
and the smallest tumour component are chosen (``tune_on_validation``, no CRF); then per
setting the mean and range over seeds, and the paired difference to the first setting.

Run the example first (its phantom, split and liver model are reused):

    python examples/lits_cascade.py --out outputs/run5
    python benchmarks/tumour_sweep.py --example outputs/run5 --steps 600 --seeds 0 1 \\
        --settings 128,6,0.3 128,6,0.6 128,0,0.3 96,6,0.3 --json tumour_sweep.json
    python benchmarks/tumour_sweep.py --example outputs/run5 --settings 128,0,0.3,clahe \\
        128,0,0.3,window
    python benchmarks/tumour_sweep.py --example outputs/run10_seed4 --settings \\
        128,0,0.3,window 128,0,0.3,window,1
    python benchmarks/tumour_sweep.py --example outputs/run21 --settings 128,0,0.3,window \\
        --batch-dice
    python benchmarks/tumour_sweep.py --example outputs/run21 --seeds 0 1 2 --settings \\
        128,0,0.3,window,0,liver 128,0,0.3,window,0,roi
    python benchmarks/tumour_sweep.py --example outputs/run34_seed20 --seeds 20 --steps 1250 \\
        --settings 128,0,0.3,window,0,roi --variants UN-DS ES-DS
    python benchmarks/tumour_sweep.py --example outputs/run34_seed20 --seeds 20 --steps 1250 \\
        --settings 128,0,0.3,window,0,roi --lesion-reversal 0.3

The liver model keeps the preprocessing it was trained with; the cascade feeds each model
its own (``Cascade(tumour_preprocessing=)``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _example_run import example_split

from featsup import data as fd
from featsup.data import SliceAugment
from featsup.inference import Cascade, tune_on_validation
from featsup.losses import DeepSupervisionLoss, SegLoss
from featsup.models import UNetPlusPlus, transfer_weights
from featsup.supervision.variants import VARIANTS, build_variant, parse_variant, variant_trainer
from featsup.training import cpu_has_bf16_units, load_model

# the tumour stage's preprocessing by name: the paper's (HU window, CLAHE, min-max), or
# the same without CLAHE
PREPROCESSINGS = {"clahe": fd.Preprocessing(), "window": fd.Preprocessing(clahe=False)}


def parse_setting(text: str) -> tuple[int, int, float, str, int, str]:
    """``ROI,DILATION,EMPTY[,PREP[,CONTEXT[,SCOPE]]]`` -> (ROI size, mask dilation, empty
    share, preprocessing, 2.5D neighbours on each side, tumour scope)."""
    try:
        roi, dilation, empty, *rest = text.split(",")
        if len(rest) > 3:
            raise ValueError(text)
        name, context, scope = [*rest, *("clahe", "0", "liver")[len(rest) :]]
        if name not in PREPROCESSINGS or int(context) < 0 or scope not in ("liver", "roi"):
            raise ValueError(name)
        if scope == "roi" and int(dilation):
            raise ValueError(dilation)
        return int(roi), int(dilation), float(empty), name, int(context), scope
    except ValueError:
        message = (f"expected ROI,DILATION,EMPTY[,PREP[,CONTEXT[,SCOPE]]] such as 128,6,0.3 or "
                   f"128,0,0.3,window,0,roi (PREP: {' or '.join(PREPROCESSINGS)}; CONTEXT: "
                   f"2.5D neighbours on each side, >= 0; SCOPE: liver or roi, the cascade's "
                   f"tumour_scope, roi with DILATION 0), got {text!r}")  # fmt: skip
        raise argparse.ArgumentTypeError(message) from None


def extra_cases(example: Path, count: int, out: Path) -> list[fd.LitsCase]:
    """``count`` phantom cases that follow the example's own (the next phantom seeds), its
    split's and those it trained on only (``--extra-train-cases``)."""
    metrics = json.loads((example / "metrics.json").read_text())
    settings = metrics["settings"]
    n = settings["cases"] + settings.get("extra_train_cases", 0)
    folder = out / "extra_phantom"
    fd.write_phantom_dataset(
        folder, count, shape=settings["phantom_shape"], seed=metrics["phantom_seed"] + n,
        start_index=n, reuse=True,
    )  # fmt: skip
    return fd.find_cases(folder)


def load_teacher(args: argparse.Namespace) -> Any:
    """The example run's tumour teacher; the settings must be those it was trained for."""
    path, example = args.example / "teachers" / "tumour.pt", args.example_settings
    if not path.exists():
        raise SystemExit(f"{path} not found: BS and ES variants need the example's tumour "
                         f"teacher (run the example with a BS or ES --variant)")  # fmt: skip
    for roi, _, _, _, context, _ in args.settings:  # it saw the example's tumour maps only
        if (roi, context, args.extra_train_cases) != (
            example["tumour_size"],
            example["tumour_context"],
            0,
        ):
            raise SystemExit(f"the example's tumour teacher fits its own ROI size "
                             f"({example['tumour_size']}), context "
                             f"({example['tumour_context']}) and training cases (no "
                             f"--extra-train-cases); got ROI {roi}, context {context}")  # fmt: skip
    return load_model(path, map_location="cpu")


def run(setting: tuple[int, int, float, str, int, str], variant: str, seed: int, split: dict,
        val: list, liver: Any, teacher: Any, args: argparse.Namespace) -> dict:  # fmt: skip
    roi, dilation, empty, prep, context, scope = setting
    supervised = parse_variant(variant)[0] != "UN"
    p = args.lesion_reversal
    reversal = SliceAugment(lesion_reversal_p=p) if p else None  # None: the stage's own
    train, val_slices = fd.stage_datasets(
        "tumour", split["train"], split["val"], size=roi, context=context, seed=seed,
        mask_dilation=dilation, mask_outside=scope == "liver",
        empty_fraction=empty, cache_dir=args.example / "cache",
        preprocessing=PREPROCESSINGS[prep],
        augment=reversal,
    )  # fmt: skip
    torch.manual_seed(seed)
    # transfer learning from the liver model, as the example (2.5D: its kernel on the centre)
    student = transfer_weights(liver, UNetPlusPlus(2 * context + 1, 2, widths=args.widths))
    model = build_variant(variant, in_channels=2 * context + 1, num_classes=2, student=student,
                          teacher=teacher if supervised else None)  # fmt: skip
    name = f"roi{roi}-dil{dilation}-empty{empty}" + ("" if prep == "clahe" else f"-{prep}")
    name += f"-context{context}" if context else ""
    name += f"-scope{scope}" if scope != "liver" else ""
    name += "-batchdice" if args.batch_dice else ""
    name += f"-{variant}" if variant != "UN-DS" else ""
    name += f"-reversal{args.lesion_reversal}" if args.lesion_reversal else ""
    folder = args.out / f"{name}-seed{seed}"
    trainer = variant_trainer(
        model, train, val_slices, num_classes=2,
        loss=DeepSupervisionLoss(SegLoss(include_background=False, batch_dice=args.batch_dice)),
        lr=args.lr,
        max_steps=args.steps, batch_size=args.batch_size, val_every=max(25, args.steps // 8),
        warmup_steps=min(50, args.steps // 10), checkpoint_dir=folder, seed=seed,
        amp=args.amp, device="cpu", progress=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    if hasattr(model, "close"):
        model.close()
    part = "student" if supervised else "model"
    tumour = load_model(folder / "best.pt", part=part, map_location="cpu")
    cascade = Cascade(liver, tumour, liver_size=args.size, tumour_size=roi,
                      tumour_context=context, tumour_scope=scope, device="cpu")  # fmt: skip
    # heads and smallest tumour; the threshold stays the argmax's, as when the docs' sweep
    # ran, so that settings are compared on the data alone
    tuning = tune_on_validation(cascade, val, crf="none", tumour_threshold=0.5)
    heads = [r.dice for r in tuning.heads.rows if r.stage == "tumour"]
    best_size = tuning.tumour_min_voxels
    record = {
        "roi": roi, "mask_dilation": dilation, "empty_fraction": empty, "preprocessing": prep,
        "context": context, "scope": scope, "batch_dice": args.batch_dice, "variant": variant,
        "lesion_reversal": args.lesion_reversal, "seed": seed,
        "train_cases": len(split["train"]), "seconds": seconds,
        "val_dice_per_head": heads,
        "head": tuning.cascade.tumour_head, "min_voxels": best_size,
        "val_dice_by_min_voxels": tuning.min_voxels_scores,
        "val_dice": tuning.min_voxels_scores[best_size],
    }  # fmt: skip
    print(f"ROI {roi}, dilation {dilation}, empty {empty}, {prep}, context {context}, {scope}, "
          f"{variant}, seed {seed}: heads "
          + ", ".join(f"{d:.3f}" for d in heads)
          + f"; X0,{tuning.cascade.tumour_head}, tumours >= {best_size} voxels: "
          f"{record['val_dice']:.3f} "
          f"({seconds:.0f} s)", flush=True)  # fmt: skip
    return record


def summary(records: list[dict], settings: list[tuple], variants: list[str],
            seeds: list[int]) -> dict:  # fmt: skip
    key = lambda r: (r["roi"], r["mask_dilation"], r["empty_fraction"],  # noqa: E731
                     r.get("preprocessing", "clahe"), r.get("context", 0),
                     r.get("scope", "liver"), r.get("variant", "UN-DS"))  # fmt: skip
    by = {(key(r), r["seed"]): r for r in records}
    rows = [(*setting, variant) for setting in settings for variant in variants]
    out = {}
    print("\nValidation tumour Dice, global (head and smallest tumour chosen), over seeds")
    print(
        "| ROI | dilation | empty share | preprocessing | context | scope | variant | mean "
        "| range | paired - first |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        values = np.array([by[row, s]["val_dice"] for s in seeds])
        diffs = values - np.array([by[rows[0], s]["val_dice"] for s in seeds])
        out[",".join(map(str, row))] = {"mean": values.mean(), "values": values.tolist(),
                                        "diffs": diffs.tolist()}  # fmt: skip
        print(f"| {' | '.join(map(str, row))} | {values.mean():.3f} | "
              f"{values.min():.3f}-{values.max():.3f} | "
              + ", ".join(f"{d:+.3f}" for d in diffs) + " |")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--example", type=Path, default=Path("outputs/lits_cascade"),
                   help="an example run's --out: phantom/, metrics.json, liver/")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("outputs/tumour_sweep"))
    p.add_argument("--settings", nargs="+", type=parse_setting,
                   default=[(128, 0, 0.3, "window", 0, "liver"),
                            (128, 0, 0.3, "window", 0, "roi")],
                   help="ROI,DILATION,EMPTY[,PREP[,CONTEXT[,SCOPE]]] per setting (PREP: clahe, "
                   "the default, or window; CONTEXT: 2.5D neighbours per side, default 0; "
                   "SCOPE: the cascade's tumour_scope, liver (default) or roi); the first is "
                   "the baseline")  # fmt: skip
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["UN-DS"],
                   help="the tumour stage's variants (default UN-DS: no teacher); BS and ES "
                   "ones use the example's own tumour teacher (its teachers/tumour.pt), so "
                   "they take the example's ROI size and context and no extra cases")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--size", type=int, default=128, help="the example's liver slice size")
    p.add_argument("--widths", type=int, nargs=5, default=[8, 16, 32, 64, 128])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--extra-train-cases", type=int, default=0,
                   help="fresh phantom cases added to the training cases (the phantom seeds "
                   "after the example's; its validation cases stay)")  # fmt: skip
    p.add_argument("--batch-dice", action="store_true", help="the Dice term pooled over the "
                   "batch (SegLoss(batch_dice=True)), not one Dice per slice")  # fmt: skip
    p.add_argument("--lesion-reversal", type=float, default=0.0, metavar="P",
                   help="reverse the training lesions' contrast with probability P "
                   "(SliceAugment(lesion_reversal_p=P); 0, the default: the stage's own "
                   "augmentation)")  # fmt: skip
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.amp = "bf16" if cpu_has_bf16_units() else None
    args.example_settings = json.loads((args.example / "metrics.json").read_text())["settings"]
    split = example_split(args.example)
    if args.extra_train_cases > 0:
        split["train"] += extra_cases(args.example, args.extra_train_cases, args.out)
    val = [fd.load_case(c) for c in split["val"]]
    liver = load_model(args.example / "liver" / "best.pt", part="student", map_location="cpu")
    print(f"validation cases {[c.case_id for c in split['val']]}; amp {args.amp}", flush=True)
    supervised = any(parse_variant(v)[0] != "UN" for v in args.variants)
    teacher = load_teacher(args) if supervised else None
    records = [
        run(st, variant, seed, split, val, liver, teacher, args)
        for seed in args.seeds
        for st in args.settings
        for variant in args.variants
    ]
    result = {"settings": vars(args), "runs": records,
              "summary": summary(records, args.settings, args.variants, args.seeds)}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
