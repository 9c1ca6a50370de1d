"""The cascade's tumour filter on held-out phantom cases, with no retraining of the models.

For each finished example run on the phantom (its ``--out``), the saved cascade (every
choice it made on its validation cases) is the baseline. The arm adds a tumour filter
(:func:`featsup.inference.add_lesion_filter`, what ``examples/lits_cascade.py
--tumour-filter-cases N`` does): a small CNN trained on the components the saved cascade
leaves on the run's first ``--cases`` training cases, its keep threshold chosen on the
run's validation cases (the heads, CRF stages, threshold and TTA kept). With
``--thresholds``, one arm per tumour probability threshold (``tuned``: the saved one,
the arm ``filter/grid``; a number T: the arm ``filter@T/grid``, its filter trained on the
components at T and the cascade labelling at T; ``T:K`` or ``tuned:K``: the arm
``filter@T,K/grid``, the same with the keep K in place of ``--keeps``; ``T:K:S`` or
``T::S``: the arm ``filter@T,K,spotsS/grid`` or ``filter@T,spotsS/grid``, the liver's dark
spots of S HU added as candidates, ``Cascade(tumour_spots=S)``). All are scored
on the same held-out fresh cases (``validation_size.py``'s: the fresh cases after the
first ``--extra``; never a test or validation case), each case through one liver stage;
``--on extra`` scores the first ``--extra`` instead (validation-type cases, for a look
before a rule).

It writes ``validation_size.py``'s layout, so ``paired_d.py`` reads it: each run's
``base/grid`` (the saved cascade) and ``filter/grid`` (with the filter)::

    python benchmarks/tumour_filter.py outputs/s46/b_s42 --fresh 470 --extra 430 \\
        --work outputs/s46/vsa --json filter_s42.json
    python benchmarks/paired_d.py --baseline filter_s42.json --baseline-prefix b \\
        --arm filter_s42.json --arm-prefix b --arm-choice filter/grid
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _example_run import write_json
from validation_size import (
    check_held_out_arguments,
    extra_cases,
    held_out_arguments,
    held_out_cases,
)

from featsup import data as fd
from featsup.inference import (
    LIVER_MASKS,
    Cascade,
    Tuning,
    add_lesion_filter,
    load_cascade,
    tumour_criterion,
    tune_on_validation,
)
from featsup.inference.bundle import cascade_arguments
from featsup.metrics import dice_score
from featsup.postprocess import TUMOUR_FILTER_KEEPS, drop_unlikely_tumours, score_tumours


def run_cases(run: Path) -> dict[str, list[fd.LitsCase]]:
    """The run's training and validation cases, by its metrics.json split."""
    split = json.loads((run / "metrics.json").read_text())["split"]
    found = {c.case_id: c for folder in ("phantom", "phantom_train", "phantom_val")
             if (run / folder).is_dir() for c in fd.find_cases(run / folder)}  # fmt: skip
    return {"train": [found[i] for i in split["train"]],
            "val": [found[i] for i in split["val"] + split.get("val_extra", [])]}  # fmt: skip


def crf_stages(cascade: Cascade) -> str:
    """The CRF stages a tuned cascade runs: none, liver or both."""
    if cascade.liver_crf is None:
        return "none"
    return "liver" if cascade.tumour_crf is None else "both"


def score(
    cascades: dict[str, Cascade], cases: list[fd.LitsCase], keeps: list[float]
) -> dict[str, dict[str, Any]]:
    """Each cascade's tumour Dice per case and global and liver Dice per case on ``cases``.

    The liver stage runs once a case (the first cascade's), and the tumour model and CRF
    once for each set of cascades that differ only in their tumour threshold, smallest
    tumour, filter and dark spots; each cascade labels that tumour probability as it
    would have (what it returns run whole: the tests pin it). A cascade with a tumour
    filter is also scored at each of ``keeps`` (``"by_keep"``: its components scored once,
    then dropped at each keep), reported beside its own.
    """
    base = next(iter(cascades.values()))
    labellers = {name: _labeller(c) for name, c in cascades.items()}
    kinds: list[tuple[Any, Cascade]] = []  # (models and stages, a cascade that runs them)
    kind: dict[str, int] = {}
    for name, c in cascades.items():
        key = _models_and_stages(c)
        found = [i for i, (k, _) in enumerate(kinds) if k == key]
        if not found:
            kinds.append((key, _labeller(c, tumour_filter=None, tumour_crf=c.tumour_crf)))
        kind[name] = found[0] if found else len(kinds) - 1
    counts: dict[str, list] = {name: [] for name in cascades}
    liver: dict[str, list] = {name: [] for name in cascades}
    by_keep: dict[str, list] = {name: [] for name, c in cascades.items() if c.tumour_filter}
    opened = {name: _labeller(cascades[name], tumour_filter_keep=0.0) for name in by_keep}
    for case in cases:
        loaded = fd.load_case(case)
        truth = np.asarray(loaded.labels)
        true = truth == 2
        stage = base.liver_stage(np.asarray(loaded.volume))
        refined = [c.tumour_stage(stage) for _, c in kinds]  # models and tumour CRF, once
        for name, cascade in cascades.items():
            labels = _label(labellers[name], stage, refined[kind[name]]).labels
            pred = labels == 2
            counts[name].append((int((pred & true).sum()), int(pred.sum()), int(true.sum())))
            liver[name].append(dice_score(labels > 0, truth > 0))
            if name in by_keep:
                every = _label(opened[name], stage, refined[kind[name]])
                components, scores = score_tumours(
                    every.labels,
                    stage.image,
                    every.tumour_probability,
                    cascade.tumour_filter,
                    every.liver_mask,
                )
                rows = []
                for keep in keeps:
                    kept = drop_unlikely_tumours(every.labels, components, scores, keep) == 2
                    rows.append((int((kept & true).sum()), int(kept.sum()), int(true.sum())))
                by_keep[name].append(rows)
    out = {}
    for name in cascades:
        rows = np.asarray(counts[name], dtype=np.int64)
        out[name] = {"tumour_per_case": float(tumour_criterion(rows, "per_case")),
                     "tumour_global": float(tumour_criterion(rows, "global")),
                     "liver_per_case": float(np.mean(liver[name])),
                     "counts": rows.tolist()}  # fmt: skip
        if name in by_keep:
            grid = np.asarray(by_keep[name], dtype=np.int64)  # (cases, keeps, 3)
            out[name]["by_keep"] = {
                str(keep): {"tumour_per_case": float(tumour_criterion(grid[:, j], "per_case")),
                            "tumour_global": float(tumour_criterion(grid[:, j], "global"))}
                for j, keep in enumerate(keeps)
            }  # fmt: skip
    return out


def _models_and_stages(cascade: Cascade) -> tuple[Any, ...]:
    """All that sets a cascade's tumour probability: its models and every setting but the
    tumour threshold, smallest tumour, filter and dark spots."""
    labelling = ("tumour_threshold", "tumour_min_voxels", "tumour_filter", "tumour_filter_keep",
                 "tumour_spots")  # fmt: skip
    rest = {k: v for k, v in cascade_arguments(cascade).items() if k not in labelling}
    return id(cascade.liver_model), id(cascade.tumour_model), rest


def _labeller(cascade: Cascade, **options: Any) -> Cascade:
    """``cascade`` with ``options``, without its tumour CRF unless ``options`` name one."""
    return Cascade(cascade.liver_model, cascade.tumour_model,
                   **{**cascade_arguments(cascade), "tumour_crf": None, **options})  # fmt: skip


def _label(labeller: Cascade, stage: Any, refined: Any) -> Any:
    """``labeller``'s result from a tumour probability its tumour CRF (if any) has refined:
    its threshold, smallest tumour and filter, without the models."""
    return labeller._tumour_result(stage, refined.tumour_probability, refined.roi, None, {},
                                   time.perf_counter())  # fmt: skip


def training_seed(run: Path) -> int:
    """The run's training seed (its ``--train-seed``, else its ``--seed``), as the example's."""
    settings = json.loads((run / "metrics.json").read_text())["settings"]
    seed = settings.get("train_seed")
    return int(settings["seed"] if seed is None else seed)


def retune(run: Path, saved: Cascade, val: list[Any]) -> Tuning:
    """The saved cascade's choices, re-made on the run's validation cases ``val`` (no grid:
    one value each), as :func:`add_lesion_filter` takes them."""
    criterion = json.loads((run / "metrics.json").read_text())["settings"]["tumour_criterion"]
    return tune_on_validation(saved, val, heads=(saved.liver_head, saved.tumour_head),
                              crf=crf_stages(saved), liver_crf=saved.liver_crf,
                              tumour_crf=saved.tumour_crf,
                              tumour_threshold=saved.tumour_threshold,
                              tumour_min_voxels=saved.tumour_min_voxels, criterion=criterion,
                              tumour_tta=saved.tumour_tta)  # fmt: skip


def evaluate_run(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    seed = training_seed(run) if args.filter_seed is None else args.filter_seed
    saved = load_cascade(run / "cascade.pt", device="cpu")
    cases = run_cases(run)
    val = [fd.load_case(c) for c in cases["val"]]
    train = fd.LazyCases(cases["train"][: args.cases])  # one in memory at a time
    tuning = retune(run, saved, val)
    arms: dict[str, tuple[Any, dict[str, Any]]] = {}
    for value in args.thresholds:
        threshold, keep, spots = parse_arm(value)
        try:
            arms[arm_name(value)] = add_lesion_filter(
                tuning, train, val, steps=args.steps, seed=seed,
                keeps=args.keeps if keep is None else keep, liver=args.liver,
                tumour_crf=not args.no_tumour_crf, threshold=threshold, spots=spots,
            )  # fmt: skip
        except ValueError as error:  # nothing to learn: the example keeps no filter either
            if "targets" not in str(error):  # a setting the cascade refuses: not an arm
                raise
            arms[arm_name(value)] = tuning, {"error": str(error)}
    held = extra_cases(run, args) if args.on == "extra" else held_out_cases(run, args)
    scores = score({"base/grid": saved, **{n: f.cascade for n, (f, _) in arms.items()}},
                   held, args.report_keeps)  # fmt: skip
    chosen = {"liver_head": saved.liver_head, "tumour_head": saved.tumour_head,
              "crf": crf_stages(saved)}  # fmt: skip
    out: dict[str, Any] = {
        "validation": {"base": [c.case_id for c in cases["val"]]},
        "held_out": [c.case_id for c in held],
        "base/grid": {
            **chosen,
            "threshold": saved.tumour_threshold,
            "min_voxels": saved.tumour_min_voxels,
            **scores["base/grid"],
        },
    }
    for name, (filtered, info) in arms.items():
        out[name] = {
            **chosen,
            "threshold": filtered.tumour_threshold,
            "min_voxels": filtered.tumour_min_voxels,
            "keep": filtered.tumour_filter_keep,
            "val_dice_by_keep": filtered.filter_keep_scores,
            "filter": info,
            **scores[name],
        }
    out["seconds"] = time.perf_counter() - start
    return out


def parse_arm(value: str) -> tuple[float | None, float | None, float | None]:
    """One ``--thresholds`` value as (threshold or None for the tuned one, keep or None,
    dark spots' HU or None).

    Raises:
        ValueError: for anything but ``T``, ``T:K`` or ``T:K:S`` (``T::S``: no keep of
            its own), T ``tuned`` or in (0, 1), K in [0, 1] and S (HU) above 0.
    """
    parts = value.split(":")
    if len(parts) > 3:
        raise ValueError(f"too many parts: {value!r}")
    text, keep_text, spots_text = (*parts, "", "")[:3]
    threshold = None if text == "tuned" else float(text)
    keep = float(keep_text) if keep_text else None
    spots = float(spots_text) if spots_text else None
    if (
        (threshold is not None and not 0.0 < threshold < 1.0)
        or (keep is not None and not 0.0 <= keep <= 1.0)
        or (spots is not None and not 0.0 < spots < float("inf"))
    ):
        raise ValueError(f"out of range: {value!r}")
    return threshold, keep, spots


def arm_name(value: str) -> str:
    """The arm of one ``--thresholds`` value: ``filter/grid`` (tuned), ``filter@T/grid``,
    ``filter@T,K/grid`` (with a keep of its own); with dark spots of S HU, ``,spotsS``
    before the ``/``."""
    threshold, keep, spots = parse_arm(value)
    if threshold is None and keep is None and spots is None:
        return "filter/grid"
    t = "tuned" if threshold is None else f"{threshold:g}"
    name = f"filter@{t}" if keep is None else f"filter@{t},{keep:g}"
    return f"{name},spots{spots:g}/grid" if spots is not None else f"{name}/grid"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="examples/lits_cascade.py --out folders")
    held_out_arguments(p)
    p.add_argument("--cases", type=int, default=40, help="training cases the filter learns from")
    p.add_argument("--steps", type=int, default=400, help="the filter's optimizer steps")
    p.add_argument("--keeps", type=float, nargs="+", default=[0.8],
                   help="keep thresholds to choose from on validation (one: no choice; the "
                   "example's --tumour-filter-keep, 0.8)")  # fmt: skip
    p.add_argument("--liver", choices=LIVER_MASKS, default="model",
                   help="the liver mask of the training cases' components")  # fmt: skip
    p.add_argument("--no-tumour-crf", action="store_true",
                   help="the training cases' components without the tumour CRF")  # fmt: skip
    p.add_argument("--report-keeps", type=float, nargs="+", default=list(TUMOUR_FILTER_KEEPS),
                   help="keeps the arm is also scored at (reported, not chosen)")  # fmt: skip
    p.add_argument("--on", choices=("held-out", "extra"), default="held-out",
                   help="score the held-out fresh cases, or the first --extra (validation-"
                   "type: a look before a rule)")  # fmt: skip
    p.add_argument("--thresholds", nargs="+", default=["tuned"],
                   help="the filtered cascade's tumour threshold, one arm each: 'tuned' (the "
                   "saved cascade's) or a number in (0, 1); ':K' after it fixes that arm's "
                   "keep at K instead of --keeps; ':K:S' (or '::S') adds the liver's dark "
                   "spots of S HU as candidates (Cascade tumour_spots)")  # fmt: skip
    p.add_argument("--filter-seed", type=int, help="the filters' weights and sampling seed "
                   "(default: the run's training seed, as the example's); another seed "
                   "measures how much one filter training moves the scores")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the records here")
    args = p.parse_args(argv)
    for value in args.thresholds:
        try:
            parse_arm(value)
        except ValueError:
            p.error(f"--thresholds: expected tuned or T in (0, 1), each with an optional :K "
                    f"(a keep in [0, 1]) and :S (spots' HU > 0), got {value!r}")  # fmt: skip
    check_held_out_arguments(p, args)
    if args.cases < 1:
        p.error(f"--cases: expected >= 1, got {args.cases}")
    report: dict[str, Any] = {"settings": {"cases": args.cases, "steps": args.steps,
                                           "keeps": args.keeps, "fresh": args.fresh,
                                           "extra": args.extra, "on": args.on,
                                           "liver": args.liver,
                                           "tumour_crf": not args.no_tumour_crf,
                                           "report_keeps": args.report_keeps,
                                           "thresholds": args.thresholds,
                                           "filter_seed": args.filter_seed},
                              "runs": {}}  # fmt: skip
    print("| run | arm | threshold | tumour per case / global, saved | with the filter | keep "
          "| filter s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        r = evaluate_run(run, args)
        report["runs"][str(run)] = r
        b = r["base/grid"]
        for name in map(arm_name, args.thresholds):
            f = r[name]
            info = f["filter"]
            seconds = sum(info.get(k, 0.0) for k in ("collect_seconds", "seconds", "tune_seconds"))
            print(f"| {run.name} | {name} | {f['threshold']} | {b['tumour_per_case']:.3f} / "
                  f"{b['tumour_global']:.3f} | {f['tumour_per_case']:.3f} / "
                  f"{f['tumour_global']:.3f} | {f['keep']} | {seconds:.0f} |",
                  flush=True)  # fmt: skip
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
