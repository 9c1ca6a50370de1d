"""The paper's six variants UN/BS/ES x NS/DS, over seeds, with paired differences.

For each stage (liver on whole slices, tumour on liver-ROI crops) of a phantom data set
split into training, validation and test cases, one encoding UNet++ teacher is trained to
convergence (and, for the ablation, one stopped early at a reconstruction Dice of about
0.8); then every configuration trains for the same number of steps from each seed. A
configuration is a variant, optionally with a feature-loss remedy:

    ES-DS            the paper's method
    ES-DS@early      ES-DS with the early-stopped teacher (ablation)
    ES-DS@w=0.3      feature weight w2 = 0.3 instead of 1 (any w=<number>: a grid)
    ES-DS@norm       features standardised per channel before the Smooth-L1 loss

Printed (and written with --json): Table 2 (test Dice per head, mean +- sd over seeds),
the paired per-seed differences of every configuration minus UN-DS per head (mean, sd,
and how many seeds were above 0; NS ones also minus UN-NS on X0,4, and a remedy also
minus its variant when that ran too), the validation Dice per head (where remedies are
chosen), convergence (steps until the validation Dice of X0,4 first reaches --reach) and
cost (teacher and student wall time). Every run is tested twice: its last step's model
(Table 2) and its checkpoint of best validation Dice of X0,4 (the model a user who stops
on validation would keep), with paired differences for both.

    python benchmarks/variants.py --seeds 0 1 2 --json variants.json
    python benchmarks/variants.py --tables variants.json    # its tables again, no training
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from featsup import data as fd
from featsup.losses import FeatureLoss
from featsup.supervision import train_encoding_teacher
from featsup.supervision.variants import VARIANTS, build_variant, parse_variant, variant_trainer
from featsup.training import cpu_has_bf16_units, dice_per_head, load_model
from featsup.viz import plot_training_curves

# per remedy: (options of build_variant, options of segmentation_step); w=<number> too
REMEDIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "early": ({}, {}),
    "norm": ({"loss": FeatureLoss(feature_norm="channel")}, {}),
}
BASELINE = "UN-DS"
NS_BASELINE = "UN-NS"  # NS configs are also paired with it, on X0,4 (their only trained head)


def parse_config(config: str) -> tuple[str, str | None]:
    variant, _, remedy = config.partition("@")
    parse_variant(variant)
    if remedy and _remedy(remedy) is None:
        raise SystemExit(
            f"--configs: unknown remedy {remedy!r}; choose from {list(REMEDIES)} or w=<number>"
        )
    return variant.upper(), remedy or None


def _remedy(remedy: str) -> tuple[dict, dict] | None:
    """(options of build_variant, options of segmentation_step) of a remedy, or None."""
    if remedy in REMEDIES:
        return REMEDIES[remedy]
    if not remedy.startswith("w="):
        return None
    try:
        weight = float(remedy[2:])
    except ValueError:
        return None
    return ({}, {"feature_weight": weight}) if weight > 0 else None


def stage_data(
    stage: Literal["liver", "tumour"], folder: Path, ids: dict[str, list[str]], size: int
) -> dict:
    cases = {c.case_id: c for c in fd.find_cases(folder)}
    # validation keeps every slice, as the test set and the example's tumour stage do
    # (it once kept a fixed share of empty slices: 0.2 liver-free, 0.3 tumour-free)
    train, val = fd.stage_datasets(
        stage, [cases[i] for i in ids["train"]], [cases[i] for i in ids["val"]], size=size,
        cache_dir=folder / "cache",
    )  # fmt: skip
    make = fd.LiverSliceDataset if stage == "liver" else fd.TumourSliceDataset
    test = make([cases[i] for i in ids["test"]], size=(size, size), empty_fraction=None,
                cache_dir=folder / "cache")  # fmt: skip
    return {"train": train, "val": val, "test": test}


def train_teachers(stage: str, sets: dict, args: argparse.Namespace) -> dict[str, Any]:
    """The converged teacher and, for @early configs, the early-stopped one, with their cost."""
    labels = torch.stack([sets["train"][i]["target"] for i in range(len(sets["train"]))])
    val = torch.stack([sets["val"][i]["target"] for i in range(len(sets["val"]))])
    teachers = {}
    # the example's recipe: whole maps for the liver (crops cut the organ), 64 x 64 crops
    # for the tumours; the early teacher is checked often, to stop near its 0.8
    crop = None if stage == "liver" else 64
    recipes = [("converged", 0.97, 50), ("early", 0.8, 10)]
    if not any(parse_config(c)[1] == "early" for c in args.configs):
        recipes = recipes[:1]  # no ablation asked for: no early teacher to pay for
    for name, threshold, every in recipes:
        start = time.perf_counter()
        # saved: a later run on the same maps and recipe reuses it
        model = train_encoding_teacher(
            labels, val_labels=val, num_classes=2, widths=args.widths, steps=args.teacher_steps,
            dice_threshold=threshold, eval_every=every, crop=crop, amp=args.amp,
            device=args.device, progress=False, path=args.out / stage / f"teacher_{name}.pt",
        )  # fmt: skip
        report = dict(cast(dict[str, Any], model.training_report))
        # a reused teacher reports the time it took when it was trained
        seconds = report["seconds"] if report["reused"] else time.perf_counter() - start
        teachers[name] = {"model": model, **report, "seconds": seconds}
        print(f"teacher {name}: reconstruction Dice {report['dice']:.3f} after "
              f"{report['steps']} steps, {seconds:.0f} s"
              + (" (reused)" if report["reused"] else ""), flush=True)  # fmt: skip
    return teachers


def run_config(config: str, stage: str, sets: dict, teachers: dict, seed: int, args) -> dict:
    variant, remedy = parse_config(config)
    teacher = teachers["early" if remedy == "early" else "converged"]["model"]
    torch.manual_seed(seed)
    options = _remedy(remedy) if remedy else None  # parse_config rejected unknown ones
    model_options, step_options = options if options is not None else ({}, {})
    model = build_variant(
        variant, in_channels=1, num_classes=2, widths=args.widths,
        teacher=None if variant.startswith("UN") else teacher, **model_options,
    )  # fmt: skip
    folder = args.out / stage / f"{config.replace('@', '_').replace('=', '')}-seed{seed}"
    # the Trainer keeps best.pt: the checkpoint of best validation Dice of X0,4
    trainer = variant_trainer(
        model, sets["train"], sets["val"], num_classes=2, **step_options,
        lr=args.lr, max_steps=args.steps, batch_size=args.batch_size, seed=seed,
        val_every=args.val_every, log_every=max(5, args.steps // 30), checkpoint_dir=folder,
        warmup_steps=min(50, args.steps // 10), device=args.device, amp=args.amp, progress=False,
    )  # fmt: skip
    start = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - start
    loader = torch.utils.data.DataLoader(sets["test"], batch_size=16)
    test = dice_per_head(model, loader, num_classes=2)  # the last step's model
    close = getattr(model, "close", None)
    if callable(close):
        close()
    part: Literal["model", "student"] = "model" if variant.startswith("UN") else "student"
    best = load_model(folder / "best.pt", part=part, map_location=args.device)
    test_best = dice_per_head(best, loader, num_classes=2)
    val = [r for r in history if "val/dice_x0_4" in r]
    reach = args.reach[0 if stage == "liver" else 1]
    reached = next((r["step"] for r in val if r["val/dice_x0_4"] >= reach), None)
    return {
        "test": test,
        "test_best": test_best,
        "best_step": max(val, key=lambda r: r["val/dice_x0_4"])["step"],
        "val": {k[4:]: v for k, v in val[-1].items() if k.startswith("val/dice")},
        "seconds": seconds,
        "steps_to_reach": reached,
        "history": str(folder / "history.jsonl"),
    }


def summarize(results: dict, configs: list[str], partial: dict[str, list[int]]) -> dict:
    """Mean and sd per head, and paired differences against UN-DS, per stage.

    A stage in ``partial`` is summarised over the seeds listed there (those finished).
    """
    summary: dict[str, Any] = {}
    for stage, runs in results.items():
        seeds = partial.get(stage) or sorted(runs[BASELINE])
        summary[stage] = {}
        for config in configs:
            by_seed = runs[config]
            heads, best = {}, {}
            for k in range(1, 5):
                key = f"dice_x0_{k}"
                heads[key] = _versus(runs, seeds, config, BASELINE, key)
                heads[key]["val_mean"] = float(np.mean([by_seed[s]["val"][key] for s in seeds]))
                # the same, for each run's best-by-validation checkpoint
                best[key] = _versus(runs, seeds, config, BASELINE, key, "test_best")
            reached = [by_seed[s]["steps_to_reach"] for s in seeds]
            if config.endswith("-NS") and config != NS_BASELINE and NS_BASELINE in runs:
                # an NS model trains X0,4 only: judge it against the plain NS UNet++ too
                heads["dice_x0_4"]["minus_un_ns"] = _versus(
                    runs, seeds, config, NS_BASELINE, "dice_x0_4"
                )
            base = parse_config(config)[0]
            if base != config and base in runs:
                # a remedy (@early, @w=...) against the same variant as the paper has it
                for key in heads:
                    heads[key]["minus_base"] = _versus(runs, seeds, config, base, key)
            summary[stage][config] = {
                "heads": heads,
                "best": best,
                "best_steps": [by_seed[s]["best_step"] for s in seeds],
                "steps_to_reach": reached,
                "student_seconds": float(np.mean([by_seed[s]["seconds"] for s in seeds])),
            }
    return summary


def _versus(runs: dict, seeds: list, config: str, other: str, key: str, part: str = "test") -> dict:
    """``config`` against ``other`` on one head (``key``) of ``part``, paired per seed."""
    return _stats([runs[config][s][part][key] for s in seeds],
                  [runs[other][s][part][key] for s in seeds])  # fmt: skip


def _stats(test: list[float], base: list[float]) -> dict:
    """Mean and sd of ``test``, and of its paired differences to ``base`` (per seed)."""
    test_, diff = np.array(test), np.array(test) - np.array(base)
    sd = (lambda x: float(x.std(ddof=1))) if len(test) > 1 else (lambda x: 0.0)
    return {
        "test_mean": float(test_.mean()), "test_sd": sd(test_), "diff_mean": float(diff.mean()),
        "diff_sd": sd(diff), "diff_positive": int((diff > 0).sum()), "diffs": diff.tolist(),
    }  # fmt: skip


def _paired(d: dict, n: int) -> str:
    """A paired difference in points: mean +- sd (seeds above 0 of n)."""
    return f"{100 * d['diff_mean']:+.1f} +- {100 * d['diff_sd']:.1f} ({d['diff_positive']}/{n})"


def print_tables(summary: dict, teachers: dict, args: argparse.Namespace) -> None:
    for stage, configs in summary.items():
        n = len(configs[BASELINE]["steps_to_reach"])
        t = teachers[stage]
        made = "; ".join(f"{k} {v['dice']:.3f} in {v['seconds']:.0f} s" for k, v in t.items())
        print(f"\n## {stage}: test Dice per head, mean +- sd over {n} seeds "
              f"(teachers: {made})")  # fmt: skip
        print("| config | X0,1 | X0,2 | X0,3 | X0,4 | val X0,4 | steps to "
              f"{args.reach[0 if stage == 'liver' else 1]} | student s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for config, row in configs.items():
            h = row["heads"]
            cells = [f"{100 * h[k]['test_mean']:.1f} +- {100 * h[k]['test_sd']:.1f}" for k in h]
            reach = ",".join("-" if r is None else str(r) for r in row["steps_to_reach"])
            print(f"| {config} | " + " | ".join(cells)
                  + f" | {100 * h['dice_x0_4']['val_mean']:.1f} | {reach} | "
                  f"{row['student_seconds']:.0f} |")  # fmt: skip
        print(f"\n{stage}: paired test differences minus {BASELINE}, points (mean +- sd; "
              "seeds above 0)")  # fmt: skip
        print("| config | X0,1 | X0,2 | X0,3 | X0,4 |")
        print("|---|---|---|---|---|")
        for config, row in configs.items():
            if config == BASELINE:
                continue
            cells = [_paired(d, n) for d in row["heads"].values()]
            print(f"| {config} | " + " | ".join(cells) + " |")
        ns = {c: r["heads"]["dice_x0_4"]["minus_un_ns"] for c, r in configs.items()
              if "minus_un_ns" in r["heads"]["dice_x0_4"]}  # fmt: skip
        if ns:
            print(f"\n{stage}: NS configs, paired test X0,4 difference minus {NS_BASELINE}")
            print("| config | X0,4 minus UN-NS | per seed |")
            print("|---|---|---|")
            for config, d in ns.items():
                seeds = ", ".join(f"{100 * x:+.1f}" for x in d["diffs"])
                print(f"| {config} | {_paired(d, n)} | {seeds} |")
        remedies = {
            c: r["heads"] for c, r in configs.items() if "minus_base" in r["heads"]["dice_x0_4"]
        }
        if remedies:
            print(f"\n{stage}: remedies minus their variant as the paper has it, paired test "
                  "differences, points (mean +- sd; seeds above 0)")  # fmt: skip
            print("| config | X0,1 | X0,2 | X0,3 | X0,4 |")
            print("|---|---|---|---|---|")
            for config, h in remedies.items():
                cells = [_paired(d["minus_base"], n) for d in h.values()]
                print(f"| {config} minus {parse_config(config)[0]} | " + " | ".join(cells) + " |")
        print(f"\n{stage}: the checkpoint of best validation Dice of X0,4, test Dice per head "
              f"(mean +- sd) and paired X0,4 difference minus {BASELINE}")  # fmt: skip
        print("| config | X0,1 | X0,2 | X0,3 | X0,4 | best steps | X0,4 minus UN-DS |")
        print("|---|---|---|---|---|---|---|")
        for config, row in configs.items():
            b = row["best"]
            cells = [f"{100 * b[k]['test_mean']:.1f} +- {100 * b[k]['test_sd']:.1f}" for k in b]
            diff = "" if config == BASELINE else _paired(b["dice_x0_4"], n)
            steps = ",".join(str(s) for s in row["best_steps"])
            print(f"| {config} | " + " | ".join(cells) + f" | {steps} | {diff} |")


def draw(results: dict, args: argparse.Namespace) -> None:
    seed = args.seeds[0]
    for stage, runs in results.items():
        histories = {c: r[seed]["history"] for c, r in runs.items()}
        plot_training_curves(args.out / f"curves_{stage}", histories, title=f"{stage}, seed {seed}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/variants"))
    p.add_argument("--configs", nargs="+",
                   default=[*VARIANTS, "ES-DS@early", "ES-DS@w=0.3", "ES-DS@norm"])  # fmt: skip
    p.add_argument("--stages", nargs="+", default=["liver", "tumour"], choices=["liver", "tumour"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--val-every", type=int, default=25)
    p.add_argument("--teacher-steps", type=int, default=1500)
    p.add_argument(
        "--reach",
        type=float,
        nargs=2,
        default=[0.9, 0.5],
        metavar=("LIVER", "TUMOUR"),
        help="validation Dice of X0,4 for convergence",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--phantom-shape", type=int, nargs=3, default=[40, 192, 192])
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--amp", choices=("auto", "bf16", "none"), default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--tables", type=Path, default=None, metavar="JSON",
        help="print the tables of a finished run's --json file; train nothing",
    )  # fmt: skip
    args = p.parse_args(argv)
    if BASELINE not in args.configs:
        p.error(f"--configs: expected {BASELINE} among them (differences are paired with it)")
    for config in args.configs:
        parse_config(config)
    if args.amp == "auto":
        fast = args.device.startswith("cuda") or cpu_has_bf16_units()
        args.amp = "bf16" if fast else "none"
    args.amp = None if args.amp == "none" else args.amp
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.tables:
        record = json.loads(args.tables.read_text())
        args.reach = record["settings"]["reach"]
        summary = summarize(record["runs"], record["settings"]["configs"], {})
        print_tables(summary, record["teachers"], args)
        return summary
    folder = args.out / "phantom"
    if not sorted(folder.glob("volume-*.nii.gz")):
        # phantom seeds 1000+: none of them is a case of the cascade example (seeds 0..)
        fd.write_phantom_dataset(folder, args.cases, shape=tuple(args.phantom_shape), seed=1000)
    ids = [c.case_id for c in fd.find_cases(folder)]
    n_test = max(2, len(ids) // 4)
    split = {"test": ids[:n_test], "val": ids[n_test : n_test + 2], "train": ids[n_test + 2 :]}
    print(f"split: {split}; amp {args.amp}", flush=True)
    results: dict[str, Any] = {}
    teachers: dict[str, Any] = {}
    for stage in args.stages:
        sets = stage_data(stage, folder, split, args.size)
        teachers[stage] = train_teachers(stage, sets, args)
        results[stage] = {c: {} for c in args.configs}
        for seed in args.seeds:  # seeds outermost: an interrupted run still has pairs
            for config in args.configs:
                run = run_config(config, stage, sets, teachers[stage], seed, args)
                results[stage][config][seed] = run
                print(f"{stage} {config} seed {seed}: "
                      + ", ".join(f"{k[5:]} {v:.3f}" for k, v in run["test"].items())
                      + f" (val x0_4 {run['val']['dice_x0_4']:.3f}; {run['seconds']:.0f} s)",
                      flush=True)  # fmt: skip
            # after every seed: tables so far, so that a stopped run still has its pairs
            summary = summarize(results, args.configs, {stage: sorted(results[stage]["UN-DS"])})
            print_tables(summary, teachers, args)
            if args.json:
                record = {
                    "settings": vars(args), "split": split, "runs": results, "summary": summary,
                    "teachers": {s: {n: {k: v for k, v in t.items() if k != "model"}
                                     for n, t in ts.items()} for s, ts in teachers.items()},
                }  # fmt: skip
                args.json.write_text(json.dumps(record, indent=2, default=str))
    draw(results, args)
    return summary


if __name__ == "__main__":
    main()
