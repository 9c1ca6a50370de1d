"""Do more validation cases make better choices? Held-out phantom cases say.

The cascade example chooses its heads, CRF stages, tumour threshold and smallest tumour
on five validation cases (``tune_on_validation``). One tumour-free case scores 1 or 0 on
a single false positive, and one lesion of a centimetre is found or dropped whole, so
five cases choose noisily (docs/cascade.md, "The validation criterion"). The phantom has
no limit on cases, so this script asks, without a test case, what more would buy.

For each finished example run on the phantom (its ``--out``), ``--fresh`` new phantom
cases are written (phantom seeds ``FRESH_OFFSET`` on from the run's: never a training,
validation or test case of any run of the example). The first ``--extra`` of them join
the run's validation cases; the others are held out. The run's saved models are tuned as
the example tunes them (its tolerance, CRF presets and criterion) on

- ``base``: the run's own validation cases (what the example does),
- ``more``: those and the ``--extra`` fresh ones,

each with the example's grid of thresholds and smallest tumours and with a wider one
(``wide``: thresholds from 0.1, smallest tumours up to 1600 voxels; the example's grid
was often chosen at its edge, 0.3 or 800). Each tuned cascade is scored on the held-out
cases: tumour Dice per case and global, liver Dice per case. The held-out cases run once
per distinct pair of heads and CRF stages, and every threshold and smallest tumour is
read from that one run.

    python benchmarks/validation_size.py outputs/run55 outputs/s27/x100_s40 \\
        --fresh 30 --extra 10 --json docs/results/validation_size.json

``--tumour-head mean`` tunes with the tumour stage's heads averaged (the liver head still
chosen), to compare that with the example's choice on the same held-out cases (rule AI,
docs/results/rules_2026-12-05.md).

Only the runs' validation cases and the fresh ones are loaded, never a run's test cases.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _example_run import example_split, write_json

from featsup import data as fd
from featsup.inference import Cascade, parse_head, tumour_criterion, tune_on_validation
from featsup.inference.bundle import cascade_arguments
from featsup.inference.heads import _best_postprocessing, _case_arrays, _crf_trials
from featsup.postprocess import CRF_PRESETS, TUMOUR_MIN_VOXELS, TUMOUR_THRESHOLDS

FRESH_OFFSET = 5000
"""Fresh cases are phantom seeds ``run's phantom seed + 5000 + i`` (case ids 5000 on); the
example writes at most a few hundred cases per seed (``--cases`` + ``--extra-train-cases``)."""

WIDE_THRESHOLDS = (0.1, 0.2, *TUMOUR_THRESHOLDS)
WIDE_MIN_VOXELS = (*TUMOUR_MIN_VOXELS, 1600)
GRIDS = {"grid": (TUMOUR_THRESHOLDS, TUMOUR_MIN_VOXELS), "wide": (WIDE_THRESHOLDS, WIDE_MIN_VOXELS)}
CRF = {stage: {**CRF_PRESETS[stage], "workers": 2} for stage in ("liver", "tumour")}


def fresh_cases(folder: Path, out: Path, n: int) -> list[fd.LitsCase]:
    """``n`` fresh phantom cases at the run's phantom shape, written once into ``out``."""
    metrics = json.loads((folder / "metrics.json").read_text())
    if "phantom_seed" not in metrics:
        raise SystemExit(f"{folder}: expected a phantom run (metrics.json has no phantom_seed)")
    settings = metrics["settings"]
    extras = ("extra_train_cases", "extra_val_cases")
    used = settings["cases"] + sum(settings.get(key) or 0 for key in extras)
    if used > FRESH_OFFSET:
        raise SystemExit(f"{folder}: its {used} cases reach the fresh seeds ({FRESH_OFFSET} on)")
    fd.write_phantom_dataset(out, n, shape=settings["phantom_shape"],
                             seed=metrics["phantom_seed"] + FRESH_OFFSET,
                             start_index=FRESH_OFFSET, reuse=True, num_workers=2)  # fmt: skip
    return fd.find_cases(out)


def held_out_arguments(p: argparse.ArgumentParser, note: str = "") -> None:
    """``--fresh``, ``--extra`` and ``--work`` for a tool that scores this script's held-out
    cases (the fresh ones after the first ``--extra``); ``note`` starts each help text."""
    p.add_argument("--fresh", type=int, default=30, help=f"{note}fresh phantom cases per run")
    p.add_argument("--extra", type=int, default=10, help=f"{note}of them, the first left out "
                   "(those validation_size.py adds to the validation cases)")  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("outputs/validation_size"),
                   help=f"{note}where the fresh cases are written (once)")  # fmt: skip


def check_held_out_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse an ``--extra`` that leaves no held-out case."""
    if not 0 <= args.extra < args.fresh:
        p.error(f"--extra: expected between 0 and --fresh - 1 ({args.fresh - 1}), got {args.extra}")


def held_out_cases(folder: Path, args: argparse.Namespace) -> list[fd.LitsCase]:
    """A run's held-out fresh cases: the same ones for every tool given the same arguments."""
    return fresh_cases(folder, args.work / folder.name / "fresh", args.fresh)[args.extra :]


def extra_cases(folder: Path, args: argparse.Namespace) -> list[fd.LitsCase]:
    """A run's first ``--extra`` fresh cases, those this script adds to the validation
    cases (validation-type, never held out)."""
    return fresh_cases(folder, args.work / folder.name / "fresh", args.fresh)[: args.extra]


def held_out_scores(
    tuned: Cascade, crf: str, choice: tuple[float, int],
    held: list[tuple[np.ndarray, np.ndarray]], cache: dict[tuple, Any],
) -> dict[str, float]:  # fmt: skip
    """Tumour Dice per case and global, liver Dice per case on ``held`` of ``tuned``'s heads,
    ``crf`` stages and ``choice`` (threshold, smallest tumour)."""
    key = (tuned.liver_head, tuned.tumour_head, crf)
    if key not in cache:  # every threshold and smallest tumour of the wide grid at once
        options = {**cascade_arguments(tuned), "liver_crf": None, "tumour_crf": None}
        plain = Cascade(tuned.liver_model, tuned.tumour_model, **options)
        trials = _crf_trials(plain, held, CRF["liver"], CRF["tumour"], thresholds=WIDE_THRESHOLDS,
                             sizes=WIDE_MIN_VOXELS, stages=(crf,))  # fmt: skip
        cache[key] = trials[crf]
    trial = cache[key]
    rows = trial["counts"][WIDE_THRESHOLDS.index(choice[0]), WIDE_MIN_VOXELS.index(choice[1])]
    return {"tumour_per_case": float(tumour_criterion(rows, "per_case")),
            "tumour_global": float(tumour_criterion(rows, "global")),
            "liver_per_case": trial["dice"]["liver"]}  # fmt: skip


def run(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Tune one run's models on each validation set and grid; score on the held-out cases.

    One tuning per validation set, on the wide grid: the heads and CRF stages do not
    depend on the grid (they are chosen on the Dice at threshold 0.5, every tumour kept),
    and the example's grid's choice is read from the wide grid's rows by the same rule.
    """
    settings = json.loads((folder / "metrics.json").read_text())["settings"]
    fresh = fresh_cases(folder, args.work / folder.name / "fresh", args.fresh)
    split = example_split(folder, ("val", "val_extra"))  # the run's own choices were made on both
    val = split["val"] + split["val_extra"]
    extra, held = fresh[: args.extra], fresh[args.extra :]
    extra = [] if args.base_only else extra  # written all the same: the held-out ids stay
    sets = {"base": val, **({"more": [*val, *extra]} if extra else {})}
    loaded = {c.case_id: fd.load_case(c) for c in [*val, *extra, *held]}
    held_arrays = [_case_arrays(loaded[c.case_id], i) for i, c in enumerate(held)]
    saved = Cascade.load(folder / "cascade.pt", device="cpu")
    cascade = Cascade(saved.liver_model, saved.tumour_model, **{
        **cascade_arguments(saved), "liver_crf": None, "tumour_crf": None,
        "tumour_threshold": 0.5, "tumour_min_voxels": 0})  # fmt: skip
    cache: dict[tuple, Any] = {}
    out: dict[str, Any] = {"validation": {k: [c.case_id for c in v] for k, v in sets.items()},
                           "held_out": [c.case_id for c in held]}  # fmt: skip
    for name, cases in sets.items():
        start = time.perf_counter()
        tuning = tune_on_validation(
            cascade, [loaded[c.case_id] for c in cases], tolerance=settings["head_tolerance"],
            crf=settings["crf"], liver_crf=CRF["liver"], tumour_crf=CRF["tumour"],
            tumour_threshold=WIDE_THRESHOLDS, tumour_min_voxels=WIDE_MIN_VOXELS,
            criterion=settings["tumour_criterion"],
            heads=None if args.tumour_head is None else (None, args.tumour_head),
        )  # fmt: skip
        seconds = time.perf_counter() - start
        t = tuning.cascade
        for grid, (thresholds, sizes) in GRIDS.items():
            rows = {th: {m: tuning.threshold_scores[th][m] for m in sizes} for th in thresholds}
            choice = _best_postprocessing(rows, settings["head_tolerance"])
            row = out[f"{name}/{grid}"] = {
                "liver_head": t.liver_head, "tumour_head": t.tumour_head, "crf": tuning.crf,
                "threshold": choice[0], "min_voxels": choice[1], "tuning_seconds": seconds,
                **held_out_scores(t, tuning.crf, choice, held_arrays, cache),
            }  # fmt: skip
            print(f"  {folder.name} {name}/{grid}: X0,{t.liver_head}/X0,{t.tumour_head} CRF "
                  f"{tuning.crf} > {choice[0]:g}, >= {choice[1]} vx; held out tumour "
                  f"{row['tumour_per_case']:.3f} / {row['tumour_global']:.3f}, liver "
                  f"{row['liver_per_case']:.3f} (tuned in {seconds:.0f} s)",
                  flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("examples", type=Path, nargs="+", help="finished example runs (their --out)")
    p.add_argument("--fresh", type=int, default=30, help="fresh phantom cases per run")
    p.add_argument("--extra", type=int, default=10, help="of them, extra validation cases")
    p.add_argument("--base-only", action="store_true", help="tune on the runs' own validation "
                   "cases only (the example's choice), to compare runs on the same held-out "
                   "cases (--fresh, --extra as for the runs they are compared with)")  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("outputs/validation_size"))
    p.add_argument("--tumour-head", type=parse_head, help="fix the tumour head: 1-4, or mean "
                   "(every head's probabilities averaged); default: chosen on validation as "
                   "the example chooses it")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if not 0 < args.extra < args.fresh:
        p.error(f"--extra: expected between 1 and --fresh - 1 ({args.fresh - 1}), got {args.extra}")

    runs = {}
    for folder in args.examples:
        runs[str(folder)] = run(folder, args)
        write_json(args.json, {"fresh": args.fresh, "extra": args.extra, "runs": runs})
    keys = [f"{s}/{g}" for s in ("base",) + ("more",) * (not args.base_only) for g in GRIDS]
    print(
        f"\nheld-out tumour Dice per case / global, liver ({args.fresh - args.extra} cases a run)"
    )
    print(f"{'run':24}" + "".join(f"{k:>26}" for k in keys))
    for folder, r in runs.items():
        print(f"{Path(folder).name:24}" + "".join(
            f"{r[k]['tumour_per_case']:>12.3f} /{r[k]['tumour_global']:.3f} "
            f"/{r[k]['liver_per_case']:.3f}" for k in keys))  # fmt: skip
    paired = {}
    for a, b in (
        ("base/grid", "more/grid"),
        ("base/grid", "base/wide"),
        ("more/grid", "more/wide"),
    ):
        if b not in keys:
            continue
        d = [np.mean([r[b][m] - r[a][m] for m in ("tumour_per_case", "tumour_global")])
             for r in runs.values()]  # fmt: skip
        liver = [r[b]["liver_per_case"] - r[a]["liver_per_case"] for r in runs.values()]
        paired[f"{b} - {a}"] = {"d": d, "liver": liver}
        sd = np.std(d, ddof=1) if len(d) > 1 else 0.0
        print(f"{b} - {a}: d mean {np.mean(d):+.4f} (sd {sd:.4f}),"
              f" > 0 in {sum(x > 0 for x in d)} of {len(d)}: {', '.join(f'{x:+.3f}' for x in d)};"
              f" liver {np.mean(liver):+.4f}")  # fmt: skip
    report = {"fresh": args.fresh, "extra": args.extra, "fresh_offset": FRESH_OFFSET,
              "runs": runs, "paired": paired}  # fmt: skip
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
