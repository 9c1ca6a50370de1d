"""Every tumour-stage lever in one table and one picture, from the committed results.

Each lever the cascade's tumour stage was tested with on fresh held-out phantom cases
(rules B-AL of docs/results/rules_2026-12-05.md, and the post-hoc held-out readings of the
validation rules before them) left its scores in a file under ``docs/results/``. This
script reads those files, computes each lever's d split by split in the way its rule read
it (d: the mean of the paired differences in held-out tumour Dice per case and global, the
lever minus the recipe of its day; docs/cascade.md), and prints one markdown row per
lever: the mean d, its standard deviation over splits, the 95 % interval of the mean
(t over splits), how many splits are above 0, and the verdict its rule gave. With
``--figure`` it draws them as a forest plot against two yardsticks, both computed from the
files as well: how much two trainings of one recipe on one split differ (the root mean
square of their d, rule O), and the gap between today's recipe held out and the tumour
goal of 0.60 per case and 0.70 global.

Nothing here trains or scores a model: it reads results already committed, and its rows
are only as right as those files (the tests pin twenty-one rows to the numbers quoted in
docs/cascade-record.md).

Usage:
    python benchmarks/levers.py [--results docs/results] [--json out.json] \\
        [--figure docs/images/levers.png]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from featsup.viz import save_figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_d import METRICS, paired_d, runs_by_split, training_spread

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
#: the evidence issue's tumour goal on test: Dice per case, Dice global.
GOAL = (0.60, 0.70)
#: today's recipe trained twice on each of six splits, each scored on 20 held-out cases.
BASELINES = ("baselines_held_out.json", ("win", "rep"))
_SPLIT = re.compile(r"_s(?P<seed>\d+)$")
#: the six splits, in the order the rules ran them (stage 1 first).
SPLITS = (40, 41, 42, 0, 29, 30)


@dataclass(frozen=True)
class Paired:
    """Held-out scores of arm runs and baseline runs, matched by split (paired_d.py)."""

    arm: str
    arm_prefixes: tuple[str, ...]
    baseline: str = BASELINES[0]
    baseline_prefixes: tuple[str, ...] = ("win",)
    arm_choice: str = "base/grid"
    """validation_size.py's choice the arm is read from."""
    baseline_choice: str = "base/grid"
    """the choice the baseline is read from (``filter/grid``: today's filter, rule AO on)."""

    def split_d(self, results: Path) -> dict[int, float]:
        """{split seed: d}."""
        base = runs_by_split([_read(results, self.baseline)], list(self.baseline_prefixes),
                             self.baseline_choice)  # fmt: skip
        arm = runs_by_split([_read(results, self.arm)], list(self.arm_prefixes), self.arm_choice)
        return {row["seed"]: row["d"] for row in paired_d(base, arm)}


@dataclass(frozen=True)
class Stored:
    """d per split as the rule's reading stored it: the rows under each of ``paths`` in ``file``.

    The rows are a list of objects with ``"seed"`` and ``key``, or an object keyed by split
    seed or by run name (``t_s40``); several rows of one split (two trainings) are averaged.
    """

    file: str
    paths: tuple[tuple[str, ...], ...]
    key: str = "d"

    def split_d(self, results: Path) -> dict[int, float]:
        """{split seed: d}."""
        found: dict[int, list[float]] = {}
        data = _read(results, self.file)
        for path in self.paths:
            rows: Any = data
            for part in path:
                rows = rows[part]
            items = ((r["seed"], r) for r in rows) if isinstance(rows, list) else rows.items()
            for name, row in items:
                found.setdefault(_seed(name), []).append(float(row[self.key]))
        return {seed: float(np.mean(ds)) for seed, ds in sorted(found.items())}


@dataclass(frozen=True)
class Lever:
    """One lever: its rule, what it changed, where it was read, and the verdict given."""

    rule: str
    what: str
    read: Paired | Stored
    cases: str
    verdict: str


_TWO = BASELINES[1]  # today's recipe: the mean of its two trainings (rule O on)
_ON_ITS_LIVER = ("b", "base")  # rules Z-AE: two trainings of today's recipe on the arm's liver
_H20, _NO, _VAL = "5010-5029", "not adopted", "not adopted (validation)"


def _on_aa_block(rule: str, what: str, name: str, prefix: str, verdict: str = _NO) -> Lever:
    """A lever read on rule AA's held-out block (5150-5189) against AA's baseline scorings."""
    read = Paired(name, (prefix,), "tumour_crop_rule_aa.json", _ON_ITS_LIVER)
    return Lever(rule, what, read, "5150-5189", verdict)


#: every lever, in the order it was tested. ``cases``: the fresh held-out phantom seeds.
LEVERS = (
    Lever("B", "tumour HU window [-50, 250] (today's since run 60)", Stored(
        "tumour_window.json", (("stage1", "pairs"), ("stage2", "pairs"))), _H20, "adopted"),
    Lever("-", "tumour learning rate 6e-3 (post hoc)",
          Paired("tumour_lr_focal_held_out.json", ("lr6e-3",)), _H20, _VAL),
    Lever("-", "tumour learning rate 1.5e-3 (post hoc)",
          Paired("tumour_lr_focal_held_out.json", ("lr1.5e-3",)), _H20, _VAL),
    Lever("-", "focal CE term, gamma 2 (post hoc)",
          Paired("tumour_lr_focal_held_out.json", ("focal2",)), _H20, _VAL),
    Lever("-", "3125 tumour steps, older recipe (diagnostic)", Paired(
        "tumour_steps_held_out.json", ("steps3125",), "validation_size.json", ("x100",)),
        _H20, "partly the budget"),
    Lever("C", "2000 tumour steps", Paired("tumour_steps2000.json", ("c",)), _H20, _NO),
    Lever("D", "Tversky term, misses 0.7", Paired("tumour_tversky.json", ("d",)), _H20, _NO),
    Lever("E", "neighbouring slices", Paired("tumour_context_held_out.json", ("e",)), _H20, _NO),
    Lever("F", "tumour window [0, 200]", Paired("tumour_window_0_200.json", ("f",)), _H20, _NO),
    Lever("G", "widths 16-256, both stages", Paired("widths_16_256.json", ("g",)), _H20, _NO),
    Lever("H", "300 extra training cases", Paired("extra_train_cases300.json", ("h",)), _H20,
          _NO),
    Lever("I", "3D tumour stage", Paired("tumour_3d_held_out.json", ("i",)), _H20, _NO),
    Lever("J", "3x cases and 3x steps (diagnostic)", Paired("cases_steps_3x.json", ("j",)),
          _H20, "not the budget"),
    Lever("K", "three-class liver stage", Paired("liver_classes3.json", ("k",)), _H20, _NO),
    Lever("L", "contrast balance 1", Paired("tumour_contrast_balance_rule_l.json", ("cb1",),
          "tumour_contrast_balance_rule_l.json"), _H20, _NO),
    Lever("M", "no augmentation", Paired("tumour_augment_none.json", ("aug0",),
          "tumour_augment_none.json"), _H20, _NO),
    Lever("N", "flips only", Paired("tumour_augment_flips.json", ("flip",),
          "tumour_augment_flips.json"), _H20, _NO),
    Lever("P", "last checkpoint, not the best", Stored(
        "tumour_last_checkpoint_rule_p.json", (("paired_by_split", "rows"),)), _H20, _NO),
    Lever("Q1", "BatchNorm re-estimated on training batches", Paired(
        "tumour_precise_bn_rule_q1.json", ("q1w", "q1r"), baseline_prefixes=_TWO), _H20, _NO),
    Lever("Q2", "BatchNorm re-estimated on ROI slices", Paired(
        "tumour_precise_bn_rule_q2.json", ("q2w", "q2r"), baseline_prefixes=_TWO), _H20, _NO),
    Lever("R", "contrast balance 1, widths 16-256", Paired(
        "widths_contrast_balance_rule_r.json", ("gcb",), baseline_prefixes=_TWO), _H20, _NO),
    Lever("S", "contrast balance 1, 2750 steps (diagnostic)", Paired(
        "contrast_balance_steps_rule_s.json", ("cbs",), baseline_prefixes=_TWO), _H20,
        "partly"),
    Lever("T", "contrast balance 0.5, 1750 steps", Paired(
        "contrast_balance_half_rule_t.json", ("t", "tr"), baseline_prefixes=_TWO), _H20, _NO),
    Lever("U", "liver-surface filter, against rule T's stage without it", Stored(
        "tumour_surface_filter_rule_u.json", (("arm_runs",),)), "5030-5049", _NO),
    Lever("V", "weight average, decay 0.99", Stored(
        "tumour_ema_rule_v.json", (("paired", "rows"),)), "5010-5049", _NO),
    Lever("W", "liver-surface filter on today's recipe", Stored(
        "tumour_surface_filter_rules_w_x.json", (("rows",),), "d_w"), "5050-5069", _NO),
    Lever("X", "rule T's stage with the filter", Stored(
        "tumour_surface_filter_rules_w_x.json", (("rows",),), "d_x"), "5050-5069", _NO),
    Lever("Y", "rule T's stage, fresh trainings of both", Stored(
        "contrast_balance_half_rule_y.json", (("paired_rule_y", "rows"),)), "5070-5109", _NO),
    Lever("Z", "tumour ROI 160 px, today's steps", Paired(
        "tumour_size160_rule_z.json", ("z",), "tumour_size160_rule_z.json", _ON_ITS_LIVER),
        "5110-5149", _NO),
    _on_aa_block("AA", "64-px training windows, half on tumour", "tumour_crop_rule_aa.json", "c"),
    _on_aa_block("AB", "the tumour Dice pooled over the batch", "tumour_batch_dice_rule_ab.json",
                 "d"),
    _on_aa_block("AC", "two 625-step trainings averaged", "tumour_members_rule_ac.json", "e"),
    _on_aa_block("AD", "two full trainings averaged (diagnostic)",
                 "ensemble_two_trainings_rule_ad.json", "f", "level (diagnostic)"),
    Lever("AE1", "2500 tumour steps (diagnostic)", Paired(
        "tumour_steps_rule_ae.json", ("g25",), "tumour_steps_rule_ae.json", _ON_ITS_LIVER),
        "5190-5229", "see AE2"),
    Lever("AE2", "5000 tumour steps (diagnostic)", Paired(
        "tumour_steps_rule_ae.json", ("g50",), "tumour_steps_rule_ae.json", _ON_ITS_LIVER),
        "5190-5229", "steps help, the gap stays"),
    Lever("AF", "10 000 tumour steps (diagnostic)", Paired(
        "tumour_steps_rule_af.json", ("h",), "tumour_steps_rule_af.json", ("b",)),
        "5230-5269", "the gain per doubling holds"),
    Lever("AG", "one Dice per lesion added (blob Dice, weight 1)", Paired(
        "tumour_blob_rule_ag.json", ("g",), "tumour_blob_rule_ag.json", ("b",)),
        "5270-5309", _NO),
    Lever("AH", "a darkness channel into the tumour stage", Paired(
        "tumour_darkness_rule_ah.json", ("d",), "tumour_darkness_rule_ah.json", ("b",)),
        "5310-5349", _NO),
    Lever("AI", "the tumour heads averaged (no retraining)", Paired(
        "tumour_heads_mean_rule_ai.json", ("mean",), "tumour_heads_mean_rule_ai.json", ("b",)),
        "5350-5389", _NO),
    Lever("AJ", "4 slices a step, 2250 steps (the same time)", Paired(
        "tumour_batch4_rule_aj.json", ("j",), "tumour_batch4_rule_aj.json", ("b",)),
        "5350-5389", _NO),
    Lever("AK", "the example's grid widened (thresholds 0.1, 0.2)", Paired(
        "tumour_wide_grid_rule_ak.json", ("b",), "tumour_wide_grid_rule_ak.json", ("b",),
        arm_choice="base/wide"), "5390-5429", _NO),
    Lever("AL", "a tumour filter (false-positive reduction)", Paired(
        "tumour_filter_rule_al.json", ("b",), "tumour_filter_rule_al.json", ("b",),
        arm_choice="filter/grid"), "5430-5469", _NO),
    Lever("AM", "the filter on 80 cases, no liver CRF (over its time)", Paired(
        "tumour_filter_rule_am.json", ("b",), "tumour_filter_rule_am.json", ("b",),
        arm_choice="filter/grid"), "5510-5549", _NO),
    Lever("AN", "the filter on 80 cases, neither CRF (adopted by AN)", Paired(
        "tumour_filter_rule_an.json", ("b",), "tumour_filter_rule_an.json", ("b",),
        arm_choice="filter/grid"), "5550-5589", "adopted"),
    Lever("AO", "AN's filter at threshold 0.2, keep 0.9 (today's since AO)", Paired(
        "tumour_filter_rule_ao.json", ("b",), "tumour_filter_rule_ao.json", ("b",),
        arm_choice="filter@0.2,0.9/grid", baseline_choice="filter/grid"), "5590-5629",
        "adopted"),
)  # fmt: skip


@functools.cache  # most levers share baselines_held_out.json: parsed once
def _read(results: Path, name: str) -> dict:
    path = results / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file; fix: --results the folder "
                                f"that holds docs/results' files")  # fmt: skip
    return json.loads(path.read_text())


def _seed(name: object) -> int:
    """A split's seed from a row's seed, a seed string, or a run name ending in ``_sN``."""
    if isinstance(name, int):
        return name
    match = _SPLIT.search(str(name))
    return int(match["seed"]) if match else int(str(name))


def summarise(split_d: dict[int, float]) -> dict:
    """Mean, sd, 95 % interval of the mean and splits above 0 of a lever's split d.

    Example:
        >>> s = summarise({1: 0.1, 2: -0.1, 3: 0.3})
        >>> round(s["mean_d"], 3), round(s["sd_d"], 3), s["above_0"], s["splits"]
        (0.1, 0.2, 2, 3)
    """
    ds = np.array(list(split_d.values()), dtype=float)
    n = len(ds)
    sd = float(ds.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    return {
        "split_d": {str(k): v for k, v in split_d.items()}, "mean_d": float(ds.mean()),
        "sd_d": sd, "ci95": [float(ds.mean() - half), float(ds.mean() + half)],
        "above_0": int((ds > 0).sum()), "splits": n,
    }  # fmt: skip


def yardsticks(results: Path) -> dict:
    """The two trainings' spread and today's recipe's gap to the goal, in units of d.

    The gap is the mean over (per case, global) of the goal minus today's recipe's held-out
    Dice, averaged over its twelve trainings (six splits, two each).
    """
    base = runs_by_split([_read(results, BASELINES[0])], list(BASELINES[1]))
    scores = np.array([s for runs in base.values() for s in runs], dtype=float)
    held_out = scores.mean(axis=0)
    return {
        "training_spread": training_spread(base), "trainings": len(scores),
        "held_out": dict(zip(METRICS, held_out.tolist(), strict=True)),
        "goal_gap": float(np.mean(np.subtract(GOAL, held_out))),
    }  # fmt: skip


def read_all(results: Path) -> list[dict]:
    """One summary per lever of :data:`LEVERS`, in order."""
    out = []
    for lever in LEVERS:
        split_d = lever.read.split_d(results)
        if not split_d:
            raise ValueError(f"rule {lever.rule} ({lever.what}): no split in its files")
        foreign = sorted(set(split_d) - set(SPLITS))
        if foreign:
            raise ValueError(f"rule {lever.rule} ({lever.what}): splits {foreign} are not "
                             f"among {SPLITS}")  # fmt: skip
        out.append({"rule": lever.rule, "what": lever.what, "cases": lever.cases,
                    "verdict": lever.verdict, **summarise(split_d)})  # fmt: skip
    return out


def table(levers: list[dict]) -> str:
    """The markdown table, one row per lever."""
    splits = " / ".join(map(str, SPLITS))
    lines = [
        f"| rule | lever | held-out cases | d, splits {splits} | mean d +- sd | 95 % interval "
        "| above 0 | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in levers:
        per = " / ".join(
            f"{r['split_d'][str(k)]:+.3f}" if str(k) in r["split_d"] else "-" for k in SPLITS
        )
        lo, hi = r["ci95"]
        lines.append(f"| {r['rule']} | {r['what']} | {r['cases']} | {per} | "
                     f"{r['mean_d']:+.3f} +- {r['sd_d']:.3f} | {lo:+.3f} to {hi:+.3f} | "
                     f"{r['above_0']} of {r['splits']} | {r['verdict']} |")  # fmt: skip
    return "\n".join(lines)


def figure(levers: list[dict], sticks: dict, path: Path) -> None:
    """A forest plot: each lever's split d (dots), mean and 95 % interval, the yardsticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(levers)
    fig, ax = plt.subplots(figsize=(8.5, 0.33 * n + 1.6))
    spread, gap = sticks["training_spread"], sticks["goal_gap"]
    ax.axvspan(
        -spread,
        spread,
        color="0.9",
        lw=0,
        label=f"two trainings of one recipe differ (rms d {spread:.3f})",
    )
    ax.axvline(0, color="0.4", lw=0.8)
    ax.axvline(
        gap, color="tab:red", ls="--", lw=1.2, label=f"gap to the goal 0.60 / 0.70 (d {gap:+.2f})"
    )
    for i, r in enumerate(levers):
        y = n - 1 - i
        ds = list(r["split_d"].values())
        ax.scatter(ds, [y] * len(ds), s=10, color="0.35", zorder=5)
        colour = "tab:green" if r["verdict"] == "adopted" else "tab:blue"
        lo, hi = r["ci95"]
        ax.plot([lo, hi], [y, y], color=colour, lw=2, zorder=3)
        ax.scatter([r["mean_d"]], [y], s=36, color=colour, zorder=4)
    ax.set_yticks(range(n))
    labels = [r["what"] if r["rule"] == "-" else f"{r['rule']}: {r['what']}" for r in levers]
    ax.set_yticklabels(labels[::-1], fontsize=8)
    ax.set_xlabel(
        "d: held-out tumour Dice, lever minus the recipe of its day (mean of per case and "
        "global)\ndots: splits; large dot and line: the mean and its 95 % interval",
        fontsize=8,
    )
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.005), fontsize=7, frameon=False)
    ax.set_ylim(-0.7, n - 0.3)
    save_figure(fig, path, dpi=90)


def main(argv: list[str] | None = None) -> dict:
    """Read every lever's files, print the table and the yardsticks, write JSON / figure."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="docs/results folder")
    p.add_argument("--json", type=Path, help="write every lever's split d and summary here")
    p.add_argument("--figure", type=Path, help="write the forest plot here (PNG)")
    args = p.parse_args(argv)
    if not args.results.is_dir():
        p.error(f"--results: expected a folder, got {args.results}")
    levers = read_all(args.results)
    sticks = yardsticks(args.results)
    print(table(levers))
    held = sticks["held_out"]
    print(f"\ntoday's recipe held out ({sticks['trainings']} trainings): "
          f"{held[METRICS[0]]:.3f} per case, {held[METRICS[1]]:.3f} global; gap to the goal "
          f"{GOAL[0]:.2f} / {GOAL[1]:.2f}: d {sticks['goal_gap']:+.3f}")  # fmt: skip
    print(f"two trainings of one split differ by d of root mean square "
          f"{sticks['training_spread']:.3f}")  # fmt: skip
    result = {"levers": levers, "yardsticks": sticks}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.figure:
        figure(levers, sticks, args.figure)
    return result


if __name__ == "__main__":
    main()
