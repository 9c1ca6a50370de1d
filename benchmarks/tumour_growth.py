"""Growing the cascade's dark tumours by HU, on held-out phantom cases, with no retraining.

For each finished example run on the phantom (its ``--out``), the baseline is the
example's default cascade: the saved one when it holds a tumour filter, else the saved
cascade with today's default filter added (``add_lesion_filter`` with its defaults, on
the run's first ``--cases`` training cases, as ``examples/lits_cascade.py`` does). The
arm is the same cascade's labels passed through
:func:`featsup.postprocess.grow_dark_tumours` (its defaults, or ``--contrast``,
``--iterations``, ``--min-voxels``). Both are scored on the same held-out fresh cases
(``validation_size.py``'s: the fresh cases after the first ``--extra``, never a test or
validation case), each case through one run of the cascade.

It writes ``tumour_filter.py``'s layout (``runs[RUN]["filter/grid"]`` and
``["grown/grid"]``, each with per-case ``counts``), so ``paired_d.py`` and ``levers.py``
read it::

    python benchmarks/tumour_growth.py outputs/s56/b_s40 outputs/s56/b_s41 \\
        --fresh 670 --extra 630 --work outputs/s56/vsa --json growth.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from _example_run import write_json
from tumour_filter import retune, run_cases, training_seed
from validation_size import check_held_out_arguments, held_out_arguments, held_out_cases

from featsup import data as fd
from featsup.inference import (
    TUMOUR_FILTER_STEPS,
    Cascade,
    add_lesion_filter,
    load_cascade,
    tumour_criterion,
)
from featsup.postprocess import (
    GROW_CONTRAST_HU,
    GROW_ITERATIONS,
    GROW_MIN_VOXELS,
    grow_dark_tumours,
)


def default_cascade(
    run: Path, cases: int, steps: int = TUMOUR_FILTER_STEPS
) -> tuple[Cascade, dict[str, Any]]:
    """The run's cascade as the example's default keeps it: with a tumour filter (its
    saved one, else one added with the defaults and ``steps``; none where the training
    cases leave the filter nothing to learn, as in the example)."""
    saved = load_cascade(run / "cascade.pt", device="cpu")
    if saved.tumour_filter is not None:
        return saved, {"filter": "saved"}
    split = run_cases(run)
    val = [fd.load_case(c) for c in split["val"]]
    tuning = retune(run, saved, val)
    try:
        filtered, info = add_lesion_filter(tuning, fd.LazyCases(split["train"][:cases]), val,
                                           steps=steps, seed=training_seed(run))  # fmt: skip
    except ValueError as error:  # nothing to learn: the example keeps no filter either
        if "targets" not in str(error):
            raise
        return tuning.cascade, {"filter": "none", "error": str(error)}
    return filtered.cascade, {"filter": "added", **info}


def _summary(rows: list[tuple[int, int, int]]) -> dict[str, Any]:
    counts = np.asarray(rows, dtype=np.int64)
    return {"tumour_per_case": float(tumour_criterion(counts, "per_case")),
            "tumour_global": float(tumour_criterion(counts, "global")),
            "counts": counts.tolist()}  # fmt: skip


def evaluate_run(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    cascade, info = default_cascade(run, args.cases, args.steps)
    window = cascade.tumour_preprocessing.hu_window
    options = {"contrast_hu": args.contrast, "iterations": args.iterations,
               "min_voxels": args.min_voxels}  # fmt: skip
    held = held_out_cases(run, args)
    base: list[tuple[int, int, int]] = []
    grown: list[tuple[int, int, int]] = []
    for case in held:
        loaded = fd.load_case(case)
        true = np.asarray(loaded.labels) == 2
        stage = cascade.liver_stage(np.asarray(loaded.volume))
        labels = cascade.tumour_stage(stage).labels
        more = grow_dark_tumours(labels, stage.image, window=window, **options)
        for rows, pred in ((base, labels == 2), (grown, more == 2)):
            rows.append((int((pred & true).sum()), int(pred.sum()), int(true.sum())))
    chosen = {"liver_head": cascade.liver_head, "tumour_head": cascade.tumour_head,
              "threshold": cascade.tumour_threshold,
              "keep": cascade.tumour_filter_keep}  # fmt: skip
    return {"held_out": [c.case_id for c in held], "filter": info,
            "filter/grid": {**chosen, **_summary(base)},
            "grown/grid": {**chosen, "grow": options, **_summary(grown)},
            "seconds": time.perf_counter() - start}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="examples/lits_cascade.py --out folders")
    held_out_arguments(p)
    p.add_argument("--cases", type=int, default=80,
                   help="training cases a filter learns from, when the run has none (the "
                   "example's --tumour-filter-cases)")  # fmt: skip
    p.add_argument("--steps", type=int, default=TUMOUR_FILTER_STEPS,
                   help="that filter's optimizer steps (the example's default)")  # fmt: skip
    p.add_argument("--contrast", type=float, default=GROW_CONTRAST_HU, help="grow_dark_tumours' "
                   "contrast_hu")  # fmt: skip
    p.add_argument("--iterations", type=int, default=GROW_ITERATIONS,
                   help="grow_dark_tumours' iterations")  # fmt: skip
    p.add_argument("--min-voxels", type=int, default=GROW_MIN_VOXELS,
                   help="grow_dark_tumours' min_voxels")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the records here")
    args = p.parse_args(argv)
    check_held_out_arguments(p, args)
    for name in ("cases", "steps", "iterations", "min_voxels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if not args.contrast > 0:
        p.error(f"--contrast: expected > 0, got {args.contrast}")
    names = ("cases", "steps", "contrast", "iterations", "min_voxels", "fresh", "extra")
    report: dict[str, Any] = {"settings": {k: getattr(args, k) for k in names}, "runs": {}}
    print("| run | filter | tumour per case / global | grown | d per case / global | s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        r = evaluate_run(run, args)
        report["runs"][str(run)] = r
        b, g = r["filter/grid"], r["grown/grid"]
        d = [g[k] - b[k] for k in ("tumour_per_case", "tumour_global")]
        print(f"| {run.name} | {r['filter']['filter']} | {b['tumour_per_case']:.3f} / "
              f"{b['tumour_global']:.3f} | {g['tumour_per_case']:.3f} / "
              f"{g['tumour_global']:.3f} | {d[0]:+.3f} / {d[1]:+.3f} | {r['seconds']:.0f} |",
              flush=True)  # fmt: skip
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
