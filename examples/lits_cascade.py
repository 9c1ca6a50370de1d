"""Train and evaluate the paper's liver -> tumour cascade (ES-UNet++, sections 3.2.3, 4.2.5).

With no arguments: write a synthetic CT phantom in LiTS layout; train the UN-DS liver model
and the UN-DS tumour model (from the liver model); choose heads and CRF stages on the
validation cases; run the cascade once on the test cases. Both stages' variants were chosen
on validation (docs/cascade.md): the paper's ES-DS, with its encoding teacher (label ->
label), scored no better on either stage and cost the teacher's minutes; ``--variant
ES-DS`` (and ``--tumour-variant ES-DS``) trains it. Under --out: cascade.pt (for `featsup
predict`), predictions/segmentation-N.nii.gz, figures/ (Fig. 15-18 per test case, Fig.
11-14 curves) and metrics.json (per case, per head, the split and every choice made on
validation). --dims 3 trains the tumour stage as a 3D UNet++ on liver-ROI patches
(docs/cascade.md); the liver stage stays 2D.

    python examples/lits_cascade.py                       # phantom, CPU defaults
    python examples/lits_cascade.py --dims 3              # the tumour stage in 3D
    python examples/lits_cascade.py --variant ES-DS       # the paper's ES-UNet++ liver stage
    python examples/lits_cascade.py --data /data/LiTS --device cuda --size 512
    python examples/lits_cascade.py --device cuda --preset cpu --validation-only  # settings
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from featsup import data as fd
from featsup.inference import (
    LIVER_MASKS,
    TUMOUR_CRITERIA,
    TUMOUR_FILTER_LIVER,
    TUMOUR_FILTER_STEPS,
    TUMOUR_FILTER_THRESHOLD,
    TUMOUR_FILTER_TUMOUR_CRF,
    Cascade,
    Tuning,
    ValidationPass,
    add_lesion_filter,
    evaluate_cases,
    parse_head,
    resolve_device,
    score_heads,
    tune_on_validation,
)
from featsup.losses import DeepSupervisionLoss, SegLoss
from featsup.metrics import head_table, json_safe, summary_table
from featsup.models import Ensemble, UNetPlusPlus, pooling_for_spacing, transfer_weights
from featsup.postprocess import CRF_PRESETS, TUMOUR_FILTER_KEEP, TUMOUR_FILTER_KEEPS
from featsup.supervision import matching_teacher
from featsup.supervision.variants import VARIANTS, build_variant, parse_variant, variant_trainer
from featsup.training import (
    channels_last_pays,
    cpu_has_bf16_units,
    keep_freed_memory,
    load_model,
)
from featsup.viz import plot_training_curves

# A 2-core CPU default (2046 s on an Intel Xeon with AMX, run 15 of docs/cascade.md), and
# the paper-scale recipe for CUDA.
PRESETS = {
    "cpu": {"size": 128, "tumour_size": 128, "widths": [8, 16, 32, 64, 128], "steps": 1000,
            "tumour_steps": 1250, "teacher_steps": 2000, "batch_size": 8, "lr": 3e-3,
            "tumour_context": 0, "phantom_shape": [48, 256, 256], "cases": 30, "val_cases": 5,
            "extra_train_cases": 100, "extra_val_cases": 0},
    "cuda": {"size": 512, "tumour_size": 256, "widths": [32, 64, 128, 256, 512], "steps": 30000,
             "tumour_steps": 30000, "teacher_steps": 3000, "batch_size": 16, "lr": 1e-3,
             "tumour_context": 0, "phantom_shape": [100, 512, 512], "cases": 40, "val_cases": 5,
             "extra_train_cases": 40, "extra_val_cases": 0},
}  # fmt: skip
# extra_train_cases was chosen on validation with the CPU preset (docs/cascade.md): 40 over
# none, then 100 over 40 (tumour Dice +0.147 per case, +0.003 global, three splits). The
# CUDA preset keeps 40 (its 512-px cases cost more to write), not measured on a GPU.
# --dims 3: the tumour stage's patch (D, H, W), patches per step and steps; on the CPU, steps
# that take about the 2D tumour stage's time (estimated from step timings, docs/cascade.md).
PRESETS_3D = {
    "cpu": {"patch": [16, 64, 64], "patch_batch_size": 2, "tumour_steps": 950},
    "cuda": {"patch": [32, 128, 128], "patch_batch_size": 4, "tumour_steps": 30000},
}  # fmt: skip
# The paper's HU window, CLAHE and normalisation for the liver; the tumour stage without
# CLAHE, which cut the lesions' contrast to the liver and scored lower on validation
# (docs/cascade.md, benchmarks/tumour_sweep.py and lesion_contrast.py). The cascade feeds
# each model the preprocessing its checkpoint recorded. The 2D tumour stage reads the CT
# through a narrower window, [-50, 250] HU, which stretches the lesions' contrast to the
# liver 1.67 times (ahead on fresh held-out cases of six splits of six by a rule fixed
# before the runs, docs/cascade.md); the 3D stage keeps the paper's window (untested).
TUMOUR_HU_WINDOW = {2: (-50.0, 250.0), 3: fd.HU_WINDOW}
PREPROCESSING = {
    "liver": fd.Preprocessing(),
    "tumour": fd.Preprocessing(clahe=False, hu_window=TUMOUR_HU_WINDOW[2]),
    "tumour3d": fd.Preprocessing(clahe=False),
}
CRF = {stage: {**CRF_PRESETS[stage], "workers": 2} for stage in ("liver", "tumour")}

# --tumour-tta: the tumour stage's test-time augmentation (Cascade's tumour_tta)
TUMOUR_TTA: dict[str, Any] = {"none": False, "mirror": True, "flips": "flips", "auto": "auto"}
#: With the tumour filter on, the tuning keeps its validation outputs for it up to this size
#: (ValidationPass.estimate_bytes: 150 MiB for the phantom's five cases); above it (LiTS
#: volumes: gigabytes) the filter runs the cascade over the validation cases again instead.
KEEP_OUTPUTS_BYTES = 2**30


def cpu_bf16_is_safe(dims: int) -> bool:
    """Whether ``--amp auto`` trains in bfloat16 on this CPU.

    2D: wherever the CPU has bfloat16 units (AMX or AVX-512 BF16). With ``--dims 3``, only
    with AMX: on a 2-core AMD EPYC with AVX-512 BF16 the tiny 3D test run's tumour stage
    hit a NaN loss at step 2 in 3 of 13 runs under bfloat16, never in 8 in float32
    (nondeterministic: the same seed passed and failed; docs/cascade.md).
    """
    if dims == 3:
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx and amx())
    return cpu_has_bf16_units()


def stage_loss(stage: str, args: argparse.Namespace) -> SegLoss:
    """Seg-Loss (eq. 13) for a stage.

    The tumour stage's Dice leaves the background out (tumours are small). The liver
    stage's Dice takes the lesion weight's pixel map (``--liver-lesion-weight``); with
    ``--liver-lesion-terms both`` its CE term does too. A three-class liver stage
    (``--liver-classes 3``) pools its Dice over the batch and weighs no pixel. The tumour
    stage's CE term is focal with ``--tumour-focal-gamma`` above 0, and its Dice term the
    Tversky loss with ``--tumour-tversky-beta``, pooled over the batch with
    ``--tumour-batch-dice``; ``--tumour-blob-weight`` adds one Dice per lesion.
    """
    if stage == "liver" and args.liver_classes == 3:  # a tumour class: Dice over the batch
        return SegLoss(batch_dice=True)  # (per slice, a tumour-free slice's term costs ~1)
    if stage == "liver":
        return SegLoss(weight_ce=args.liver_lesion_terms == "both")
    return SegLoss(include_background=False, focal_gamma=args.tumour_focal_gamma,
                   tversky_beta=args.tumour_tversky_beta,
                   batch_dice=args.tumour_batch_dice,
                   blob_weight=args.tumour_blob_weight)  # fmt: skip


def filter_keep(text: str) -> float | str:
    """--tumour-filter-keep: a share in [0, 1], or "auto"."""
    return _number_or(text, "auto", lambda v: 0.0 <= v <= 1.0, "[0, 1]")


def filter_threshold(text: str) -> float | str:
    """--tumour-filter-threshold: a probability in (0, 1), or "tuned"."""
    return _number_or(text, "tuned", lambda v: 0.0 < v < 1.0, "(0, 1)")


def filter_spots(text: str) -> float | str:
    """--tumour-filter-spots: a darkness threshold in HU above 0, or "none"."""
    return _number_or(text, "none", lambda v: 0.0 < v < float("inf"), "(0, inf) HU")


def _number_or(text: str, word: str, within: Callable[[float], bool], bounds: str) -> float | str:
    """``text`` as ``word`` or as a number ``within`` ``bounds`` (an argparse type)."""
    if text == word:
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")  # within nothing
    if not within(value):
        raise argparse.ArgumentTypeError(f"expected a number in {bounds} or {word}, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add = p.add_argument
    add("--data", type=Path, help="LiTS folder (volume-N / segmentation-N .nii[.gz])")
    add("--out", type=Path, default=Path("outputs/lits_cascade"))
    add("--variant", default="UN-DS", type=str.upper, choices=VARIANTS, help="the liver "
        "stage's (chosen on validation: with ES-DS the tumour Dice per case was 0.060 +- 0.048 "
        "lower over six splits, the liver level, and its teacher cost about 3 minutes; "
        "docs/cascade.md)")  # fmt: skip
    add("--tumour-variant", default="UN-DS", type=str.upper, choices=VARIANTS, help="the tumour "
        "stage's (chosen on validation: ES-DS was level with UN-DS, -0.007 +- 0.017 over three "
        "splits, and its teacher cost 4-5 minutes; docs/cascade.md)")  # fmt: skip
    add("--head", type=int, choices=(1, 2, 3, 4), help="both stages' head (default: validation)")
    add("--tumour-head", type=parse_head, help="the tumour stage's head: 1-4, or mean (every "
        "head's probabilities averaged from one pass, UNet++'s accurate mode); default: "
        "--head, else chosen on validation")  # fmt: skip
    add("--head-tolerance", type=float, default=0.005, help="smallest head within this Dice")
    add("--tumour-criterion", choices=TUMOUR_CRITERIA, default="global",
        help="how validation cases are pooled to choose the tumour threshold and smallest "
        "tumour: global Dice (default), Dice per case, or their mean")  # fmt: skip
    add("--steps", type=int, help="optimizer steps of the liver model (and tumour, if unset)")
    add("--tumour-steps", type=int)
    add("--teacher-steps", type=int, help="max steps per encoding teacher")
    add("--size", type=int, help="liver-stage slice size")
    add("--tumour-size", type=int, help="tumour-stage ROI size")
    add("--tumour-context", type=int, help="2D tumour stage: neighbouring slices on each side "
        "as input channels (2.5D)")  # fmt: skip
    add("--tumour-darkness", action="store_true", help="2D tumour stage: add a darkness "
        "channel, the liver's local mean below its background (featsup.data.darkness_channel,"
        " sigmas 2.5 and 8.5 pixels: 3.5 and 12 mm at the phantom's 1.4 mm), as its last "
        "input channel (rule AH, docs/cascade.md)")  # fmt: skip
    add("--widths", type=int, nargs=5, help="UNet++ widths per depth")
    add("--dims", type=int, choices=(2, 3), default=2, help="tumour stage in 2D or 3D")
    add("--patch", type=int, nargs=3, metavar=("D", "H", "W"), help="--dims 3 tumour patch")
    add("--patch-batch-size", type=int, help="--dims 3 tumour patches per step")
    add("--batch-size", type=int)
    add("--tumour-batch-size", type=int, help="the 2D tumour stage's slices per step "
        "(default: --batch-size)")  # fmt: skip
    add("--lr", type=float, help="peak learning rate (AdamW, warm-up then cosine)")
    add("--tumour-lr", type=float, help="the tumour stage's peak learning rate (default: --lr)")
    add("--mask-dilation", type=int, default=0, help="grow training liver masks (0: paper;"
        " chosen on validation, docs/cascade.md); --tumour-scope liver only")  # fmt: skip
    add("--liver-lesion-weight", type=float, default=20.0, help="Dice weight of tumour "
        "pixels in the liver stage's training slices (1: every pixel alike, the paper); larger"
        " keeps dark lesions inside the liver mask (20 chosen on validation: coverage "
        "+0.050, tumour Dice +0.030 per case and +0.025 global over six splits; "
        "docs/cascade.md)")  # fmt: skip
    add("--liver-classes", type=int, choices=(2, 3), default=2, help="the liver stage's "
        "classes: 2 (background, liver with its lesions: the paper) or 3 (background, liver, "
        "tumour; its Dice pooled over the batch, no lesion weight), whose weights then start "
        "the tumour stage knowing lesions; the cascade's liver is 1 - p(background)")  # fmt: skip
    add("--liver-lesion-terms", choices=("dice", "both"), default="dice", help="where "
        "--liver-lesion-weight applies: the Dice term only, or the CE term too (a weighted "
        "mean over pixels); no effect with weight 1")  # fmt: skip
    add("--tumour-lesion-balance", type=float, default=0.0, help="2D tumour stage: 0 serves "
        "each tumour slice once an epoch (a small lesion, on few slices, is seen less); 1 "
        "serves each lesion equally often; between, a mix")  # fmt: skip
    add("--tumour-contrast-balance", type=float, default=0.0, help="2D tumour stage: 0 serves"
        " tumour slices as they come (dark lesions dominate); 1 serves dark, near-isodense "
        "and bright lesions equally often; between, a mix (1 learns the bright lesions but "
        "finds fewer small ones: not adopted, docs/cascade.md)")  # fmt: skip
    add("--tumour-crop", type=int, metavar="PX", help="2D tumour stage: train on random PX x "
        "PX windows of its ROI slices, half centred on tumour, with (tumour size / PX)**2 "
        "times the batch, so a step costs about what a step of whole slices does (default: "
        "whole slices)")  # fmt: skip
    add("--tumour-augment", choices=tuple(TUMOUR_AUGMENT), default="full", help="2D tumour "
        "stage's training augmentation: full (flips, rotations up to 10 degrees, intensity "
        "jitter), flips only, or none (none fits its training cases better; neither was "
        "adopted on held-out cases: docs/cascade.md)")  # fmt: skip
    add("--tumour-focal-gamma", type=float, default=0.0, help="2D and 3D tumour stage: the "
        "focal exponent of its CE term (0: plain CE, the paper's Seg-Loss; 2: pixels the "
        "model already gets right count less)")  # fmt: skip
    add("--tumour-tversky-beta", type=float, metavar="BETA", help="2D and 3D tumour stage: "
        "replace its Dice term by the Tversky loss, missed voxels weighted BETA and false "
        "ones 1 - BETA (default: Dice, which is BETA 0.5; above 0.5 favours recall)")  # fmt: skip
    add("--tumour-batch-dice", action="store_true", help="2D and 3D tumour stage: pool its "
        "Dice term over the batch (nnU-Net's batch Dice) instead of per slice, so that "
        "false tumour on tumour-free slices costs Dice too (default: per slice)")  # fmt: skip
    add("--tumour-blob-weight", type=float, default=0.0, metavar="W", help="2D and 3D tumour "
        "stage: add the blob Dice (losses.blob_dice_loss: one Dice per lesion of each slice, "
        "so a small lesion missed costs as much as a big one) weighted W (default 0: "
        "none)")  # fmt: skip
    add("--tumour-members", type=int, default=1, metavar="K", help="2D and 3D tumour stage: "
        "train K models of one recipe, each with its own training seed and "
        "--tumour-steps steps, and average their probabilities (models.Ensemble; "
        "default 1: one model)")  # fmt: skip
    add("--tumour-hu-window", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
        help="2D and 3D tumour stage: its HU window (default -50 250 in 2D, chosen on "
        "held-out validation cases, docs/cascade.md; in 3D the paper's -100 400); the "
        "liver stage and the CRFs keep the paper's")  # fmt: skip
    add("--tumour-ema-decay", type=float, metavar="DECAY", help="2D and 3D tumour stage: "
        "keep an exponential moving average of its weights (Trainer(ema_decay=)), which its "
        "validation, best checkpoint and the cascade use (default: none, the weights "
        "themselves; 0.99 held out +0.004 over six splits, not adopted: "
        "docs/cascade.md)")  # fmt: skip
    add("--tumour-init", choices=("liver", "none"), default="liver", help="2D tumour stage:"
        " start from the liver model's weights (transfer learning, paper 4.2.5) or from "
        "scratch (0.126 +- 0.122 lower validation Dice per case over three seeds; "
        "docs/cascade.md)")  # fmt: skip
    add("--tumour-scope", choices=("liver", "roi"), default="roi", help="the tumour model sees"
        " the liver only (paper) or the whole ROI, keeping tumours that touch the liver whole"
        " (chosen on validation, docs/cascade.md)")  # fmt: skip
    add("--tumour-min-inside", type=float, default=0.5, help="--tumour-scope roi: keep a "
        "tumour only if this share of it lies inside the liver mask (0: a touch; 0.5 chosen "
        "on validation: held-out Dice per case +0.066 over six runs; docs/cascade.md)")  # fmt: skip
    add("--tumour-filter-cases", type=int, default=80, metavar="N", help="after the choices on "
        "validation, train a tumour filter (a small CNN that scores each tumour component) on "
        "the components the cascade leaves on the first N training cases; it drops those it "
        "scores below --tumour-filter-keep, in place of the smallest tumour; 0: none (80 "
        "adopted by rule AN on held-out cases, docs/cascade.md)")  # fmt: skip
    add("--tumour-filter-steps", type=int, default=TUMOUR_FILTER_STEPS,
        help="the tumour filter's steps")  # fmt: skip
    add("--tumour-filter-liver", choices=LIVER_MASKS, default=TUMOUR_FILTER_LIVER, help="the liver "
        "mask of the training cases' components: the cascade's liver stage (model), the same "
        "without its liver CRF (model-no-crf, the default: a third to a fifth of the time) "
        "or the reference liver")  # fmt: skip
    add("--tumour-filter-tumour-crf", choices=("on", "off"),
        default="on" if TUMOUR_FILTER_TUMOUR_CRF else "off", help="the tumour "
        "CRF on the training cases' components (off, the default: faster; the cascade keeps "
        "its own)")  # fmt: skip
    add("--tumour-filter-keep", type=filter_keep, default=TUMOUR_FILTER_KEEP, metavar="P|auto",
        help="the smallest filter score a tumour keeps; auto: chosen on validation from "
        "featsup.postprocess.TUMOUR_FILTER_KEEPS (0.9, with --tumour-filter-threshold 0.2: "
        "rule AO on held-out cases, docs/cascade.md)")  # fmt: skip
    add("--tumour-filter-threshold", type=filter_threshold, default=TUMOUR_FILTER_THRESHOLD,
        metavar="P|tuned", help="with a tumour filter, the tumour probability threshold (of "
        "its training components and at inference); tuned: the one chosen on validation "
        "without the filter (0.2, with --tumour-filter-keep 0.9: rule AO, "
        "docs/cascade.md)")  # fmt: skip
    add("--tumour-filter-spots", type=filter_spots, default="none", metavar="HU|none",
        help="with a tumour filter, the liver's dark spots of at least HU (a local mean "
        "below the liver around it; featsup.postprocess.dark_spots) join the tumour "
        "components as candidates, in the filter's training and at inference; none (the "
        "default): the tumour model's components only")  # fmt: skip
    add("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    add("--preset", choices=("auto", *PRESETS), default="auto", help="sizes and steps: auto "
        "takes the device's (cuda: paper scale); cpu runs the CPU recipe on a GPU")  # fmt: skip
    add("--amp", choices=("auto", "bf16", "none"), default="auto", help="auto: bf16 where fast")
    add("--no-keep-freed-memory", action="store_true", help="leave glibc's allocator as it is "
        "(by default the example keeps the memory it frees for reuse, "
        "featsup.training.keep_freed_memory: no page faults on every step's tensors, its "
        "resident size stays near its peak)")  # fmt: skip
    add("--crf", choices=("auto", "liver", "both", "none"), default="auto", help="auto: on val")
    add("--tumour-tta", choices=tuple(TUMOUR_TTA), default="none", help="the tumour stage's "
        "test-time flips: none, mirror (left-right), flips (every in-plane flip) or auto "
        "(chosen on validation)")  # fmt: skip
    add("--resume", action="store_true", help="continue from checkpoints in --out")
    add("--seed", type=int, default=0, help="seeds the phantom (its own cases per seed), the "
        "split and training")  # fmt: skip
    add("--train-seed", type=int, help="seeds training alone (weights, sampling, augmentation; "
        "default: --seed): a second training on the same phantom and split")  # fmt: skip
    add("--cases", type=int, help="phantom cases (train + val + test)")
    add("--extra-train-cases", type=int, help="phantom only: more cases (the phantom seeds "
        "after --cases'), for training only; validation and test stay --cases' split "
        "(chosen on validation, docs/cascade.md)")  # fmt: skip
    add("--extra-val-cases", type=int, help="phantom only: more cases (the phantom seeds after"
        " the training-only ones) for the choices on validation after training (heads, CRF, "
        "threshold, smallest tumour); training keeps its checkpoint by --val-cases' cases "
        "alone; test stays --cases' split")  # fmt: skip
    add("--phantom-shape", type=int, nargs=3, metavar=("D", "H", "W"))
    add("--test-cases", nargs="+", help="case ids to test on (default: drawn by --seed)")
    add("--test-fraction", type=float, default=0.25)
    add("--val-cases", type=int, help="validation cases (every choice is made here)")
    add("--validation-only", action="store_true", help="stop after the choices on validation:"
        " cascade.pt and metrics.json, no test case scored (for comparing settings)")  # fmt: skip
    args = p.parse_args(argv)
    args.device = str(resolve_device(args.device))
    if args.amp == "auto":
        args.amp = (
            "bf16" if args.device.startswith("cuda") or cpu_bf16_is_safe(args.dims) else "none"
        )
    if args.tumour_hu_window is None:
        args.tumour_hu_window = list(TUMOUR_HU_WINDOW[args.dims])
    if args.steps is not None and args.tumour_steps is None:
        args.tumour_steps = args.steps
    kind = args.preset
    if kind == "auto":
        kind = "cuda" if args.device.startswith("cuda") else "cpu"
    for extra in ("extra_train_cases", "extra_val_cases"):
        if args.data is not None and getattr(args, extra):
            flag = "--" + extra.replace("_", "-")
            p.error(f"{flag}: phantom cases, expected none with --data, got {getattr(args, extra)}")
        if args.data is not None:  # real data uses its own cases alone
            setattr(args, extra, 0)
    for key, value in {**PRESETS[kind], **(PRESETS_3D[kind] if args.dims == 3 else {})}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data: expected a LiTS folder, got {args.data} (not a directory)")
    dilation, val, cases = args.mask_dilation, args.val_cases, args.cases
    extras = args.extra_train_cases + args.extra_val_cases
    for wrong, message in (
        (dilation < 0, f"--mask-dilation: expected pixels >= 0, got {dilation}"),
        (not args.liver_lesion_weight > 0,
         f"--liver-lesion-weight: expected > 0, got {args.liver_lesion_weight}"),
        (dilation > 0 and args.tumour_scope == "roi",
         f"--mask-dilation: expected 0 with --tumour-scope roi (nothing is masked), got "
         f"{dilation}; fix: add --tumour-scope liver"),
        (not 0 <= args.tumour_lesion_balance <= 1,
         f"--tumour-lesion-balance: expected in [0, 1], got {args.tumour_lesion_balance}"),
        (not 0 <= args.tumour_contrast_balance <= 1,
         f"--tumour-contrast-balance: expected in [0, 1], got {args.tumour_contrast_balance}"),
        (args.tumour_crop is not None and (args.dims == 3 or not
                                           0 < args.tumour_crop <= args.tumour_size),
         f"--tumour-crop: expected 1..--tumour-size ({args.tumour_size}) pixels in 2D, got "
         f"{args.tumour_crop}{' with --dims 3' if args.dims == 3 else ''}"),
        (args.tumour_augment != "full" and args.dims == 3,
         f"--tumour-augment: expected full with --dims 3 (3D patches are only flipped), got "
         f"{args.tumour_augment}"),
        (not 0 <= args.tumour_min_inside <= 1,
         f"--tumour-min-inside: expected a share in [0, 1], got {args.tumour_min_inside}"),
        (args.tumour_context < 0, f"--tumour-context: expected >= 0, got {args.tumour_context}"),
        (args.tumour_darkness and args.dims == 3,
         "--tumour-darkness: expected --dims 2 (only the 2D tumour stage takes it)"),
        (not args.tumour_hu_window[0] < args.tumour_hu_window[1],
         f"--tumour-hu-window: expected LOW < HIGH, got {args.tumour_hu_window}"),
        (not args.tumour_focal_gamma >= 0,
         f"--tumour-focal-gamma: expected >= 0, got {args.tumour_focal_gamma}"),
        (args.tumour_tversky_beta is not None and not 0 <= args.tumour_tversky_beta <= 1,
         f"--tumour-tversky-beta: expected in [0, 1], got {args.tumour_tversky_beta}"),
        (not args.tumour_blob_weight >= 0,
         f"--tumour-blob-weight: expected >= 0, got {args.tumour_blob_weight}"),
        (args.tumour_members < 1, f"--tumour-members: expected >= 1, got {args.tumour_members}"),
        (args.tumour_filter_cases < 0,
         f"--tumour-filter-cases: expected >= 0, got {args.tumour_filter_cases}"),
        (args.tumour_filter_steps < 1,
         f"--tumour-filter-steps: expected >= 1, got {args.tumour_filter_steps}"),
        (args.tumour_filter_threshold not in ("tuned", TUMOUR_FILTER_THRESHOLD)
         and args.tumour_filter_cases == 0,
         "--tumour-filter-threshold: needs a tumour filter (--tumour-filter-cases > 0)"),
        (args.tumour_filter_spots != "none" and args.tumour_filter_cases == 0,
         "--tumour-filter-spots: needs a tumour filter (--tumour-filter-cases > 0)"),
        (args.tumour_ema_decay is not None and not 0 < args.tumour_ema_decay < 1,
         f"--tumour-ema-decay: expected in (0, 1), got {args.tumour_ema_decay}"),
        (args.tumour_batch_size is not None and args.tumour_batch_size < 1,
         f"--tumour-batch-size: expected >= 1, got {args.tumour_batch_size}"),
        (not (args.lr > 0 and (args.tumour_lr is None or args.tumour_lr > 0)),
         f"--lr, --tumour-lr: expected > 0, got {args.lr}, {args.tumour_lr}"),
        (val < 1, f"--val-cases: expected at least 1, got {val}"),
        (cases < val + 2, f"--cases: expected at least {val + 2}, got {cases}"),
        (args.seed < 0, f"--seed: expected >= 0, got {args.seed}"),
        (args.train_seed is not None and args.train_seed < 0,
         f"--train-seed: expected >= 0, got {args.train_seed}"),
        (args.extra_train_cases < 0,
         f"--extra-train-cases: expected >= 0, got {args.extra_train_cases}"),
        (args.extra_val_cases < 0, f"--extra-val-cases: expected >= 0, got {args.extra_val_cases}"),
        (args.data is None and cases + extras > PHANTOM_SEED_STRIDE,
         f"--cases + --extra-train-cases + --extra-val-cases: expected at most "
         f"{PHANTOM_SEED_STRIDE} phantom cases, got {cases + extras}"),
    ):  # fmt: skip
        if wrong:
            p.error(message)
    return args


# --tumour-augment: the 2D tumour stage's training augmentation (None: stage_datasets' own,
# SliceAugment's defaults)
TUMOUR_AUGMENT = {
    "full": None,
    "flips": fd.SliceAugment(rotation_p=0.0, intensity_scale=0.0, intensity_shift=0.0),
    "none": fd.SliceAugment(flip_p=0.0, rotation_p=0.0, intensity_scale=0.0, intensity_shift=0.0),
}


# --seed S writes phantom cases S * 10000, S * 10000 + 1, ...: each seed its own phantom.
# (It once wrote cases S, S + 1, ...: --seed 1 repeated 19 of --seed 0's 20 cases.)
PHANTOM_SEED_STRIDE = 10_000


# Phantom cases are written by this many processes (the same files: each case is its seed's;
# on a 2-core AMD EPYC, 10 cases at 48 x 256 x 256 in 1.8-2.0 s against 3.4-4.0 s in one).
PHANTOM_WORKERS = min(8, os.cpu_count() or 1)


def train_seed(args: argparse.Namespace) -> int:
    """The seed of training (``--train-seed``, else ``--seed``); the phantom and split keep
    ``--seed``."""
    return args.seed if args.train_seed is None else args.train_seed


def phantom_seed(seed: int) -> int:
    """The phantom seed of case 0 for ``--seed``; the cases of two seeds never overlap."""
    return seed * PHANTOM_SEED_STRIDE


def split_cases(args: argparse.Namespace) -> dict[str, list[fd.LitsCase]]:
    """Train / validation / test cases (the phantom is written first when no --data).

    On the phantom, ``--extra-train-cases`` more cases (case ids ``--cases`` onwards, in
    ``OUT/phantom_train``) join the training cases only: the phantom has no limit, and
    validation and test stay the split of ``--cases``. ``--extra-val-cases`` more (the
    case ids after those, in ``OUT/phantom_val``) are ``"val_extra"``: validation cases
    for the choices after training only.
    """
    source = args.data or args.out / "phantom"
    if args.data is None:  # kept when the same settings wrote it before
        fd.write_phantom_dataset(source, args.cases, shape=args.phantom_shape,
                                 seed=phantom_seed(args.seed), reuse=True,
                                 num_workers=PHANTOM_WORKERS)  # fmt: skip
    try:
        cases = fd.split_cases(
            fd.find_cases(source), val_cases=args.val_cases, test_fraction=args.test_fraction,
            test_ids=args.test_cases, seed=args.seed,
        )  # fmt: skip
    except ValueError as error:
        sys.exit(f"--data / --test-cases / --val-cases: {error}")
    if args.data is None and args.extra_train_cases:
        folder = args.out / "phantom_train"
        fd.write_phantom_dataset(folder, args.extra_train_cases, shape=args.phantom_shape,
                                 seed=phantom_seed(args.seed) + args.cases,
                                 start_index=args.cases, reuse=True,
                                 num_workers=PHANTOM_WORKERS)  # fmt: skip
        cases["train"] += fd.find_cases(folder)
    if args.data is None and args.extra_val_cases:
        start = args.cases + args.extra_train_cases
        folder = args.out / "phantom_val"
        fd.write_phantom_dataset(folder, args.extra_val_cases, shape=args.phantom_shape,
                                 seed=phantom_seed(args.seed) + start, start_index=start,
                                 reuse=True, num_workers=PHANTOM_WORKERS)  # fmt: skip
        cases["val_extra"] = fd.find_cases(folder)
    return cases


def stage_preprocessing(stage: str, args: argparse.Namespace) -> fd.Preprocessing:
    """The stage's preprocessing: PREPROCESSING's (the tumour stage's by ``--dims``), its
    HU window from ``--tumour-hu-window`` (default TUMOUR_HU_WINDOW by ``--dims``)."""
    if stage == "tumour" and args.dims == 3:
        stage = "tumour3d"
    default, window = PREPROCESSING[stage], args.tumour_hu_window
    if stage == "liver" or tuple(window) == tuple(default.hu_window):
        return default  # the very object: the cache keys of earlier runs stay valid
    return replace(default, hu_window=tuple(window))


def datasets(stage: str, cases: dict, args: argparse.Namespace) -> tuple[Any, Any]:
    liver, patch = stage == "liver", args.patch if stage == "tumour" and args.dims == 3 else None
    context = 0 if liver or patch else args.tumour_context
    patches = args.tumour_steps * (args.patch_batch_size or 1)  # 3D: no patch seen twice
    return fd.stage_datasets(  # liver validation: a fifth liver-free; tumour: every ROI slice
        stage, cases["train"], cases["val"], size=args.size if liver else args.tumour_size,
        context=context, seed=train_seed(args), mask_dilation=args.mask_dilation, patch=patch,
        mask_outside=args.tumour_scope == "liver",
        patches_per_case=-(-patches // len(cases["train"])),
        val_empty_fraction=fd.STAGE_EMPTY_FRACTION["liver"] if liver else None,
        cache_dir=args.out / "cache", preprocessing=stage_preprocessing(stage, args),
        lesion_weight=args.liver_lesion_weight
        if liver and args.liver_lesion_weight != 1 and args.liver_classes == 2 else None,
        classes="all" if liver and args.liver_classes == 3 else "liver",
        lesion_balance=0.0 if liver or patch else args.tumour_lesion_balance,
        contrast_balance=0.0 if liver or patch else args.tumour_contrast_balance,
        augment=None if liver or patch else TUMOUR_AUGMENT[args.tumour_augment],
        crop=None if liver or patch else args.tumour_crop,
        darkness=fd.DARKNESS_SIGMAS if args.tumour_darkness and not (liver or patch) else None,
    )  # fmt: skip


def teacher(stage: str, variant: str, train: Any, val: Any, args: argparse.Namespace,
            student: UNetPlusPlus) -> UNetPlusPlus | None:  # fmt: skip
    """The stage's encoding teacher (none for UN variants), reused when the same label maps
    trained it before."""
    if parse_variant(variant)[0] == "UN":
        return None
    # whole maps for the liver (crops cut it, and cost it 2 points at 600 steps), 8 a
    # step (0.97 at step 700 in 60 % of the time 16 took to reach it at step 600, on
    # --seed 11's maps); 64 x 64 crops for the tumours, two in three centred on a lesion
    # throughout (held out: 0.964 against 0.962, 0.946 against 0.919 at step 1000);
    # evaluations every 100 steps, not 25: at 25 they were half the teachers' time in
    # run 4; channels-last like the student: a step 1.25-1.5x faster (docs/supervision.md)
    recipe: dict[str, Any] = (
        {"crop": None, "batch_size": 8} if stage == "liver"
        else {"crop": 64, "foreground_fraction": 0.67}
    )  # fmt: skip
    if student.spatial_dims == 3:  # 16 patches per case; crops half the patch in-plane
        (d, h, w), first = args.patch, range(min(len(train), 16 * len(train.volumes)))
        train, recipe = Subset(train, first), {"crop": (d, h // 2, w // 2), "probe_size": (d, h, w)}
        recipe["batch_size"] = 2 * args.patch_batch_size
    model = matching_teacher(
        student, train, val_labels=val, num_classes=student.num_classes, steps=args.teacher_steps,
        dice_threshold=0.97, eval_every=100, amp="bf16" if args.amp == "bf16" else None,
        channels_last=student.channels_last, device=args.device,
        seed=train_seed(args), path=args.out / "teachers" / f"{stage}.pt", **recipe,
    )  # fmt: skip
    if model.training_report["reused"]:
        print(f"reusing the {stage} teacher (same label maps and recipe)")
    return model


def stage_variant(stage: str, args: argparse.Namespace) -> str:
    """The variant a stage trains as: ``--variant`` (liver) or ``--tumour-variant``."""
    return args.variant if stage == "liver" else args.tumour_variant


def make_student(stage: str, train: Any, args: argparse.Namespace, init: Any) -> UNetPlusPlus:
    """A 2D UNet++ (the tumour one from the liver model), or the 3D tumour UNet++."""
    if stage == "tumour" and args.dims == 3:  # from scratch: 2D weights do not fit 3D kernels
        pooling = pooling_for_spacing(train.spacing, depth=len(args.widths) - 1)
        student = UNetPlusPlus(1, 2, widths=args.widths, spatial_dims=3, pooling=pooling)
    else:
        extra = int(stage == "tumour" and args.tumour_darkness)  # the darkness channel
        channels = 2 * args.tumour_context + 1 + extra if stage == "tumour" else 1
        classes = args.liver_classes if stage == "liver" else 2
        student = UNetPlusPlus(channels, classes, widths=args.widths)
        if init is not None:  # transfer learning (paper 4.2.5): start from the liver model,
            # its kernel on the centre slice (2.5D), the darkness channel's at zero; from a
            # three-class one, the tumour head its tumour head and the rest the mean of its
            # background and liver heads
            groups = [(0, 1), (2,)] if init.num_classes == 3 else None
            transfer_weights(init, student, classes=groups, extra_inputs=extra)
    if channels_last_pays(args.device, spatial_dims=student.spatial_dims):
        student.use_channels_last()  # weights and inputs: faster convolutions there
    return student


def stage_batch(stage: str, args: argparse.Namespace) -> int:
    """A stage's training batch: 3D patches, or 2D slices (the tumour stage's
    ``--tumour-batch-size``); with ``--tumour-crop``, as many pixels a step as whole slices."""
    if stage == "liver":
        return int(args.batch_size)
    if args.dims == 3:
        return int(args.patch_batch_size)
    slices = args.tumour_batch_size or args.batch_size
    if args.tumour_crop:
        return round(slices * (args.tumour_size / args.tumour_crop) ** 2)
    return int(slices)


def member_args(args: argparse.Namespace, member: int) -> argparse.Namespace:
    """``args`` for the tumour stage's ensemble member ``member`` (0: the first, as one
    model): its own training seed, 1000 apart."""
    if member == 0:
        return args
    return argparse.Namespace(**{**vars(args), "train_seed": train_seed(args) + 1000 * member})


def train_tumour(cases: dict, args: argparse.Namespace, init: Any = None) -> Any:
    """The tumour stage: one model, or an Ensemble of ``--tumour-members`` trainings (an ES
    or BS stage's members share the first member's teacher)."""
    teachers: dict[str, Any] = {}
    members = [
        train_stage("tumour", cases, member_args(args, k), init=init, teachers=teachers,
                    folder=args.out / ("tumour" if k == 0 else f"tumour_{k + 1}"))
        for k in range(args.tumour_members)
    ]  # fmt: skip
    return members[0] if len(members) == 1 else Ensemble(members).eval()


def train_stage(
    stage: str, cases: dict, args: argparse.Namespace, init: Any = None,
    folder: Path | None = None, teachers: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    """Train one stage's model (teacher first) in ``folder`` (default: ``--out``/stage);
    return its best student in eval mode. ``teachers``: the stage's teacher is taken from
    it when there, and left in it."""
    train, val = datasets(stage, cases, args)
    student, variant = make_student(stage, train, args, init), stage_variant(stage, args)
    unit = "patches" if student.spatial_dims == 3 else "slices"
    print(f"\n== {stage} stage: {variant}, {len(train)} training {unit} ==")
    if teachers is not None and stage in teachers:
        encoding_teacher = teachers[stage]
        print(f"the {stage} teacher of the first member")
    else:
        encoding_teacher = teacher(stage, variant, train, val, args, student)
    if teachers is not None:
        teachers[stage] = encoding_teacher
    model = build_variant(
        variant,
        in_channels=student.in_channels,
        num_classes=student.num_classes,
        widths=args.widths,
        teacher=encoding_teacher,
        student=student,
    )
    folder = folder or args.out / stage
    steps = args.steps if stage == "liver" else args.tumour_steps
    batch = stage_batch(stage, args)
    lr = args.lr if stage == "liver" else args.tumour_lr or args.lr
    trainer = variant_trainer(
        model, train, val, num_classes=student.num_classes,
        loss=DeepSupervisionLoss(stage_loss(stage, args)),
        lr=lr, max_steps=steps, batch_size=batch, val_every=max(25, steps // 8),
        checkpoint_dir=folder, warmup_steps=min(50, steps // 10), device=args.device,
        seed=train_seed(args), amp="bf16" if args.amp == "bf16" else None,
        ema_decay=None if stage == "liver" else args.tumour_ema_decay, name=f"{stage} {variant}",
    )  # fmt: skip
    last = folder / "last.pt"
    trainer.fit(resume_from=last if args.resume and last.exists() else None)
    if hasattr(model, "close"):
        model.close()
    part = "model" if parse_variant(variant)[0] == "UN" else "student"
    return load_model(folder / "best.pt", part=part, map_location=args.device)


def make_cascade(liver: Any, tumour: Any, args: argparse.Namespace, **options: Any) -> Cascade:
    flat = {
        "tumour_context": args.tumour_context,  # 3D patches have no 2.5D context
        "tumour_darkness": fd.DARKNESS_SIGMAS if args.tumour_darkness else None,
    }
    patch = {"tumour_patch": args.patch} if args.dims == 3 else flat
    return Cascade(liver, tumour, liver_size=args.size, tumour_size=args.tumour_size,
                   tumour_scope=args.tumour_scope, tumour_min_inside=args.tumour_min_inside,
                   liver_classes=(1, 2) if args.liver_classes == 3 else (1,),
                   device=args.device, **patch, **options)  # fmt: skip


def fixed_heads(args: argparse.Namespace) -> tuple[Any, Any] | None:
    """(liver, tumour) heads fixed by --head and --tumour-head, None where validation chooses."""
    heads = (args.head, args.tumour_head or args.head)
    return None if heads == (None, None) else heads


def head_name(head: Any) -> str:
    """X0,k, or "heads averaged"."""
    return "heads averaged" if head == "mean" else f"X0,{head}"


def tune(liver: Any, tumour: Any, cases: list, args: argparse.Namespace) -> Tuning:
    """On validation (loaded cases): heads (within --head-tolerance), CRF stages, tumour
    threshold, smallest tumour."""
    tuning = tune_on_validation(
        make_cascade(liver, tumour, args), cases,
        tolerance=args.head_tolerance, heads=fixed_heads(args), crf=args.crf,
        liver_crf=CRF["liver"], tumour_crf=CRF["tumour"], criterion=args.tumour_criterion,
        tumour_tta=TUMOUR_TTA[args.tumour_tta], keep_outputs=args.tumour_filter_cases > 0
        and ValidationPass.estimate_bytes(cases) <= KEEP_OUTPUTS_BYTES,
    )  # fmt: skip
    print(f"\nheads on validation cases {[c.case_id for c in cases]}:\n{tuning.heads.table()}")
    heads = tuning.cascade.liver_head, tuning.cascade.tumour_head
    print(f"chosen on validation: heads {head_name(heads[0])} (liver), {head_name(heads[1])}, "
          f"CRF {tuning.crf}, "
          f"tumour probability > {tuning.tumour_threshold:g}, tumours of >= "
          f"{tuning.tumour_min_voxels} voxels, tumour TTA {tuning.cascade.tumour_tta}")  # fmt: skip
    if tuning.tta_scores:
        print("validation tumour Dice (best of the threshold grid) per tumour TTA: "
              + ", ".join(f"{k} {v:.4f}" for k, v in tuning.tta_scores.items()))  # fmt: skip
    return tuning


def add_filter(
    tuning: Tuning, train_cases: list, val: list, args: argparse.Namespace
) -> tuple[Tuning, dict]:
    """--tumour-filter-cases: a tumour filter on the tuned cascade (its keep fixed or chosen
    on the loaded validation cases ``val``)."""
    train = fd.LazyCases(train_cases[: args.tumour_filter_cases])  # one in memory at a time
    keep = args.tumour_filter_keep
    keeps = TUMOUR_FILTER_KEEPS if keep == "auto" else keep
    try:
        tuning, info = add_lesion_filter(
            tuning, train, val, steps=args.tumour_filter_steps, seed=train_seed(args),
            keeps=keeps, liver=args.tumour_filter_liver,
            tumour_crf=args.tumour_filter_tumour_crf == "on", progress=True,
            threshold=None if args.tumour_filter_threshold == "tuned"
            else args.tumour_filter_threshold,
            spots=None if args.tumour_filter_spots == "none" else args.tumour_filter_spots,
        )  # fmt: skip
    except ValueError as error:  # all components true or all false: nothing to learn
        print(f"tumour filter: none ({error})")
        return tuning, {"error": str(error)}
    by_keep = ", ".join(f"{k:g} {v:.4f}" for k, v in tuning.filter_keep_scores.items())
    hu = tuning.cascade.tumour_spots
    spots = "" if hu is None else f" and dark spots of >= {hu:g} HU"
    print(f"tumour filter: {info['candidates']} components on {info['cases']} training cases "
          f"({info['true']} on a tumour), {info['steps']} steps; tumour probability > "
          f"{tuning.tumour_threshold:g}{spots}, keeps scores >= {tuning.tumour_filter_keep:g} "
          f"(validation Dice: {by_keep})")  # fmt: skip
    return tuning, info


def evaluate(cascade: Cascade, cases: list, args: argparse.Namespace) -> dict:
    """Score the test cases once, with the choices made on validation."""
    done = evaluate_cases(cascade, cases, out=args.out)
    # Table 2 on the test cases: reported, never chosen on; read again one at a time, not
    # all held (a LiTS test split would be tens of GB)
    plain = make_cascade(cascade.liver_model, cascade.tumour_model, args)
    table = {
        s: score_heads(plain, fd.LazyCases(cases), stage=s, timed=False)[0]
        for s in ("liver", "tumour")
    }
    return {
        "cases": done.records, **done.summary, "seconds_per_case": done.seconds_per_case,
        "dice_per_head": {s: {f"x0_{k + 1}": v for k, v in enumerate(d)} for s, d in table.items()},
    }  # fmt: skip


def report(metrics: dict, seconds: dict[str, float], args: argparse.Namespace) -> None:
    runs = {s: args.out / s / "history.jsonl" for s in ("liver", "tumour")}
    plot_training_curves(args.out / "figures" / "curves", runs)
    heads = {s: list(v.values()) for s, v in metrics["dice_per_head"].items()}
    stages = {s: metrics[s] for s in ("liver", "tumour")}
    name = args.variant if args.variant == args.tumour_variant else "/".join(
        (args.variant, args.tumour_variant)
    )  # fmt: skip
    print(f"\nTable 2 layout: test Dice per case of each head\n{head_table(heads, name)}")
    print(f"\nCascade (chosen heads and CRF), over the test cases\n{summary_table(stages)}")
    print("\nTimings: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
          + f"; cascade {metrics['seconds_per_case']:.1f} s per test case")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # no page faults on every step's tensors (docs/benchmarks.md, glibc's allocator)
    args.kept_freed_memory = not args.no_keep_freed_memory and keep_freed_memory()
    torch.manual_seed(train_seed(args))
    args.out.mkdir(parents=True, exist_ok=True)
    start, seconds = time.perf_counter(), {}

    def lap(name: str) -> None:
        seconds[name] = time.perf_counter() - start - sum(seconds.values())

    cases = split_cases(args)
    lap("data")
    liver = train_stage("liver", cases, args)
    lap("liver training")
    tumour = train_tumour(cases, args, init=liver if args.tumour_init == "liver" else None)
    lap("tumour training")
    val = [fd.load_case(case) for case in cases["val"] + cases.get("val_extra", [])]
    tuning = tune(liver, tumour, val, args)  # loaded once: the tumour filter reuses them
    lap("validation choices")
    lesion_filter = None
    if args.tumour_filter_cases:
        tuning, lesion_filter = add_filter(tuning, cases["train"], val, args)
        lap("tumour filter")
    split = {k: [c.case_id for c in v] for k, v in cases.items()}
    metrics = {} if args.validation_only else evaluate(tuning.cascade, cases["test"], args)
    tuning.cascade.save(args.out / "cascade.pt", training={
        "data": str(args.data or "phantom"), "split": split, "variant": args.variant,
        "tumour_variant": args.tumour_variant,
    })  # fmt: skip
    if not args.validation_only:
        lap("test evaluation")
    seconds["total"] = time.perf_counter() - start
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    metrics.update(variant=args.variant, tumour_variant=args.tumour_variant, settings=settings,
                   seconds=seconds, split=split,
                   chosen_on_validation=tuning.to_dict())  # fmt: skip
    if lesion_filter is not None:
        metrics["tumour_filter"] = lesion_filter
    if args.data is None:  # which phantom: case N is make_phantom(phantom_seed + N)
        metrics["phantom_seed"] = phantom_seed(args.seed)
    (args.out / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2, default=str))
    if args.validation_only:
        print("\n--validation-only: no test case scored; timings: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))  # fmt: skip
        print(f"wrote {args.out}/cascade.pt, metrics.json")
        return metrics
    report(metrics, seconds, args)
    print(f"\nwrote {args.out}/cascade.pt, metrics.json, predictions/, figures/")
    return metrics


if __name__ == "__main__":
    main()
