"""The held-out tumour Dice against the tumour stage's training steps, and the gain per doubling.

Reads what ``benchmarks/validation_size.py --json`` writes (or a docs/results file that
keeps its ``runs``). Runs are grouped by split (the ``_sN`` suffix of their name, as in
``benchmarks/paired_d.py``) and by step count, given per run-name prefix as
``PREFIX=STEPS`` (``b=1250 g25=2500``): several prefixes may share a count, and their runs
of one split are averaged (several trainings of one recipe). Only splits that hold every
step count enter the mean, so each point of the mean is paired with the others.

It prints, per split and on the mean, the held-out tumour Dice per case / global at each
step count and the gain per doubling of steps between consecutive counts; and, where the
last gain is above 0, how many more doublings at that rate would reach ``--target``. That
last figure is a straight-line extrapolation on a log axis, and is printed as one: returns
usually shrink. ``--figure`` draws each split's line and the mean against the steps, with
the targets.

    python benchmarks/steps_curve.py docs/results/tumour_steps_rule_ae.json \\
        --points b=1250 base=1250 g25=2500 g50=5000 --target 0.60 0.70 \\
        --json out.json --figure docs/images/tumour_steps_rule_ae.png

``--by-block`` reads each report as its own block of held-out cases instead (blocks differ
in difficulty, so their Dice do not pool): per block, each split's d at every step count
the block holds, against the block's smallest count (d: the mean of the per-case and global
differences, as the rules read it), and the mean d over the block's splits. It prints one
row per block and count, and ``--figure`` draws every block's d against the steps with the
first block's least-squares line (d against log2 of the steps) carried on past its last
count: what that block predicts for the others, an extrapolation drawn as one.

    python benchmarks/steps_curve.py docs/results/tumour_steps_rule_ae.json \
        docs/results/tumour_steps_rule_af.json --by-block \
        --points b=1250 base=1250 g25=2500 g50=5000 h=10000 --figure steps_blocks.png

No assertions: it measures.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from paired_d import METRICS, runs_by_split

Curve = dict[int, dict[int, tuple[float, float]]]
"""{steps: {split: (tumour Dice per case, global), the mean of that split's runs}}."""


def parse_points(items: list[str]) -> dict[str, int]:
    """``["b=1250", "g25=2500"]`` -> ``{"b": 1250, "g25": 2500}``.

    Raises:
        ValueError: on an item that is not ``PREFIX=STEPS`` with STEPS a positive integer,
            a prefix given twice, or fewer than two step counts.

    Example:
        >>> parse_points(["b=1250", "base=1250", "g25=2500"])
        {'b': 1250, 'base': 1250, 'g25': 2500}
    """
    points: dict[str, int] = {}
    for item in items:
        prefix, _, steps = item.partition("=")
        if not prefix or not steps.isdigit() or int(steps) <= 0:
            raise ValueError(f"--points: expected PREFIX=STEPS with STEPS a positive "
                             f"integer, got {item!r}")  # fmt: skip
        if prefix in points:
            raise ValueError(f"--points: prefix {prefix!r} given twice")
        points[prefix] = int(steps)
    if len(set(points.values())) < 2:
        counts = sorted(set(points.values()))
        raise ValueError(f"--points: expected at least two step counts, got {counts}")
    return points


def build_curve(reports: list[dict], points: dict[str, int], choice: str = "base/grid") -> Curve:
    """Each step count's runs, by split, averaged within a split."""
    curve: Curve = {}
    for steps in sorted(set(points.values())):
        prefixes = [p for p, s in points.items() if s == steps]
        by_split = runs_by_split(reports, prefixes, choice)
        curve[steps] = {split: tuple(np.mean(runs, axis=0).tolist())
                        for split, runs in by_split.items()}  # fmt: skip
    return curve


def complete_splits(curve: Curve) -> list[int]:
    """The splits that hold every step count, sorted.

    Example:
        >>> complete_splits({1250: {40: (0.4, 0.5), 41: (0.5, 0.6)}, 2500: {40: (0.5, 0.6)}})
        [40]
    """
    sets = [set(by_split) for by_split in curve.values()]
    return sorted(set.intersection(*sets)) if sets else []


def gains_per_doubling(steps: list[int], values: list[float]) -> list[float]:
    """The change of ``values`` per doubling of ``steps`` between consecutive points.

    Example:
        >>> gains_per_doubling([1250, 2500, 5000], [0.40, 0.46, 0.49])
        [0.06, 0.03]
    """
    pairs = zip(steps[:-1], steps[1:], values[:-1], values[1:], strict=True)
    return [round((b - a) / math.log2(t / s), 12) for s, t, a, b in pairs]


def doublings_to(target: float, value: float, gain: float) -> float | None:
    """More doublings at ``gain`` each to lift ``value`` to ``target``: 0 when it is
    already there, None when ``gain`` is not above 0 (no straight line reaches it).

    Example:
        >>> doublings_to(0.60, 0.45, 0.03), doublings_to(0.60, 0.45, -0.01)
        (5.0, None)
    """
    if value >= target:
        return 0.0
    return round((target - value) / gain, 12) if gain > 0 else None


def paired_dice(curve: Curve) -> tuple[list[int], list[int], np.ndarray]:
    """The step counts, the splits that hold them all, and their Dice, shape (split, step,
    metric).

    Raises:
        ValueError: if no split holds every step count.

    Example:
        >>> steps, splits, dice = paired_dice({1: {7: (0.4, 0.5)}, 2: {7: (0.5, 0.6), 8: (0, 0)}})
        >>> steps, splits, dice.shape
        ([1, 2], [7], (1, 2, 2))
    """
    steps, splits = sorted(curve), complete_splits(curve)
    if not splits:
        raise ValueError(f"no split holds every step count {steps}: "
                         f"{ {s: sorted(curve[s]) for s in steps} }")  # fmt: skip
    return steps, splits, np.array([[curve[st][sp] for st in steps] for sp in splits])


def summarise(curve: Curve, targets: tuple[float, float]) -> dict[str, Any]:
    """Per split and on the mean of the complete splits: Dice, gains and doublings left."""
    steps, splits, dice = paired_dice(curve)  # dice: (split, step, metric)

    def entry(series: np.ndarray) -> dict[str, Any]:  # series: (steps, metrics)
        out: dict[str, Any] = {}
        for i, (metric, target) in enumerate(zip(METRICS, targets, strict=True)):
            values = series[:, i].tolist()
            gains = gains_per_doubling(steps, values)
            left = doublings_to(target, values[-1], gains[-1])
            out[metric] = {"dice": values, "gain_per_doubling": gains, "target": target,
                           "doublings_to_target": left}  # fmt: skip
        return out

    out: dict[str, Any] = {
        "steps": steps, "splits": splits,
        "missing": {s: sorted(set(curve[s]) - set(splits)) for s in steps},
        "per_split": {str(sp): entry(dice[k]) for k, sp in enumerate(splits)},
        "mean": entry(dice.mean(axis=0)),
    }  # fmt: skip
    return out


def line_fit(steps: list[int], d: list[float]) -> tuple[float, float]:
    """Least-squares ``d = a + b * log2(steps / steps[0])``: ``(a, b)``, b per doubling.

    Example:
        >>> [round(v, 4) for v in line_fit([1250, 2500, 5000], [0.0, 0.017, 0.048])]
        [-0.0023, 0.024]
    """
    x = np.log2(np.asarray(steps, dtype=float) / steps[0])
    slope, intercept = np.polyfit(x, np.asarray(d, dtype=float), 1)
    return round(float(intercept), 12) + 0.0, round(float(slope), 12) + 0.0  # no -0.0


def predicted_d(first: dict[str, Any], steps: int) -> float:
    """What a block's least-squares line (needs three counts or more) gives at ``steps``.

    Example:
        >>> block = {"steps": [1250, 2500, 5000], "mean_d": [0.0, 0.02, 0.04]}
        >>> round(predicted_d(block, 10000), 6)
        0.06
    """
    a, slope = line_fit(first["steps"], first["mean_d"])
    return a + slope * math.log2(steps / first["steps"][0])


def by_block(
    reports: dict[str, dict], points: dict[str, int], choice: str = "base/grid"
) -> list[dict[str, Any]]:
    """Each report (``{label: report}``) as one block: d per split against its smallest count.

    Raises:
        ValueError: if a block holds fewer than two of the step counts, or no split holds
            every count it does hold.
    """
    blocks = []
    for label, report in reports.items():
        curve = {st: runs for st, runs in build_curve([report], points, choice).items() if runs}
        if len(curve) < 2:
            raise ValueError(f"block {label}: expected runs at two step counts or more, "
                             f"found {sorted(curve)}")  # fmt: skip
        try:
            steps, splits, dice = paired_dice(curve)
        except ValueError as error:
            raise ValueError(f"block {label}: {error}") from None
        d = (dice - dice[:, :1]).mean(axis=2)  # (splits, steps): per case and global pooled
        blocks.append({
            "block": label, "steps": steps, "splits": splits,
            "d": {str(sp): d[k].tolist() for k, sp in enumerate(splits)},
            "mean_d": d.mean(axis=0).tolist(),
            "mean_dice": dice.mean(axis=0).tolist(),  # (steps, 2): per case, global
        })  # fmt: skip
    return blocks


def print_blocks(blocks: list[dict[str, Any]]) -> None:
    """One row per block and step count; then what the first block's line predicts."""
    print("| block | steps | d per split | mean d | mean Dice per case / global |")
    print("| --- | --- | --- | --- | --- |")
    for b in blocks:
        for i, steps in enumerate(b["steps"]):
            per = ", ".join(f"{sp}: {d[i]:+.3f}" for sp, d in b["d"].items())
            pc, gl = b["mean_dice"][i]
            print(f"| {b['block']} | {steps} | {per} | {b['mean_d'][i]:+.3f} | "
                  f"{pc:.3f} / {gl:.3f} |")  # fmt: skip
    first = blocks[0]
    if len(first["steps"]) < 3:
        return
    a, slope = line_fit(first["steps"], first["mean_d"])
    print(f"\n{first['block']}'s line: d = {a:+.3f} {slope:+.3f} per doubling")
    for b in blocks[1:]:
        for steps, d in zip(b["steps"][1:], b["mean_d"][1:], strict=True):
            print(f"{b['block']} at {steps} steps: d {d:+.3f}, the line predicts "
                  f"{predicted_d(first, steps):+.3f} (an extrapolation)")  # fmt: skip


def blocks_figure(blocks: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Every block's d against the steps (splits thin, mean thick), the first's line dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from featsup.viz import save_figure

    fig, ax = plt.subplots(figsize=(6, 3.8))
    every = sorted({s for b in blocks for s in b["steps"]})
    for k, b in enumerate(blocks):
        color = f"C{k}"
        for d in b["d"].values():
            ax.plot(b["steps"], d, "o-", lw=0.8, ms=3, alpha=0.45, color=color)
        ax.plot(b["steps"], b["mean_d"], "o-", lw=2.5, color=color,
                label=f"{b['block']} (splits {', '.join(map(str, b['splits']))})")  # fmt: skip
    first = blocks[0]
    if len(first["steps"]) >= 3:
        xs = [s for s in every if s >= first["steps"][0]]
        ax.plot(xs, [predicted_d(first, s) for s in xs], "--",
                color="grey", lw=1.2, label=f"{first['block']}'s line, carried on")  # fmt: skip
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xticks(every, [str(s) for s in every])
    ax.set_xlabel("tumour training steps")
    ax.set_ylabel("held-out d against the block's smallest count")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    save_figure(fig, path, dpi=90)


def print_table(summary: dict[str, Any]) -> None:
    """The summary as a markdown table, then the mean's gains and extrapolation."""
    steps = summary["steps"]
    print("| split | " + " | ".join(f"{s} steps" for s in steps) + " | gain per doubling |")
    print("| --- |" + " --- |" * (len(steps) + 1))
    entries = [*summary["per_split"].items(), ("mean", summary["mean"])]
    for name, e in entries:
        pc, gl = e[METRICS[0]], e[METRICS[1]]
        cells = [f"{a:.3f} / {b:.3f}" for a, b in zip(pc["dice"], gl["dice"], strict=True)]
        gains = ", ".join(f"{a:+.3f} / {b:+.3f}"
                          for a, b in zip(pc["gain_per_doubling"], gl["gain_per_doubling"],
                                          strict=True))  # fmt: skip
        label = f"**{name}**" if name == "mean" else name
        print(f"| {label} | " + " | ".join(cells) + f" | {gains} |")
    missing = {s: m for s, m in summary["missing"].items() if m}
    if missing:
        print(f"\nleft out of the mean (a step count missing): {missing}")
    for metric, what in zip(METRICS, ("per case", "global"), strict=True):
        e = summary["mean"][metric]
        left = e["doublings_to_target"]
        how = ("no: the last gain is not above 0" if left is None
               else f"{left:.1f} more doublings at the last gain (x{2 ** left:.0f} the steps; "
                    "a straight-line extrapolation)")  # fmt: skip
        print(f"mean {what}: {e['dice'][-1]:.3f} at {steps[-1]} steps against "
              f"{e['target']:.2f}: {how}")  # fmt: skip


def figure(summary: dict[str, Any], path: Path, title: str = "") -> None:
    """Each split's Dice (thin) and the mean (thick) against steps, per case and global."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from featsup.viz import save_figure

    steps = summary["steps"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for ax, metric, what in zip(axes, METRICS, ("per case", "global"), strict=True):
        for name, e in summary["per_split"].items():
            ax.plot(steps, e[metric]["dice"], "o-", lw=1, alpha=0.6, label=f"split {name}")
        mean = summary["mean"][metric]
        ax.plot(steps, mean["dice"], "o-", lw=2.5, color="black", label="mean")
        ax.axhline(mean["target"], ls="--", color="tab:red", lw=1, label="goal")
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.set_xlabel("tumour training steps")
        ax.set_ylabel(f"held-out tumour Dice {what}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=90)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the arguments, build the curve, print it, optionally save JSON and a figure."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", type=Path, nargs="+", help="validation_size.py JSON files")
    p.add_argument(
        "--points",
        nargs="+",
        required=True,
        metavar="PREFIX=STEPS",
        help="run-name prefix and its tumour steps, e.g. b=1250 g25=2500",
    )
    p.add_argument(
        "--target",
        type=float,
        nargs=2,
        default=(0.60, 0.70),
        metavar=("PER_CASE", "GLOBAL"),
        help="the goal (default 0.60 0.70)",
    )
    p.add_argument("--choice", default="base/grid", help="validation_size.py's choice key")
    p.add_argument("--json", type=Path, help="write the summary here")
    p.add_argument("--figure", type=Path, help="draw the curves to this PNG")
    p.add_argument("--title", default="", help="the figure's title")
    p.add_argument("--by-block", action="store_true",
                   help="each report its own block of held-out cases: d against its smallest "
                        "count, blocks side by side")  # fmt: skip
    p.add_argument("--labels", nargs="+", help="--by-block: one name per report (default: "
                   "the file names)")  # fmt: skip
    args = p.parse_args(argv)
    try:
        points = parse_points(args.points)
    except ValueError as error:
        p.error(str(error))
    for path in args.reports:
        if not path.is_file():
            p.error(f"{path}: no such file")
    reports = [json.loads(path.read_text()) for path in args.reports]
    if args.labels and not args.by_block:
        p.error("--labels: only with --by-block")
    if args.by_block:
        labels = args.labels or [path.stem for path in args.reports]
        if len(labels) != len(args.reports) or len(set(labels)) < len(labels):
            p.error(f"--by-block: expected one distinct label per report, got {labels}; fix: "
                    "--labels")  # fmt: skip
        try:
            blocks = by_block(dict(zip(labels, reports, strict=True)), points, args.choice)
        except ValueError as error:
            p.error(str(error))
        print_blocks(blocks)
        if args.json:
            args.json.write_text(json.dumps({"blocks": blocks}, indent=1))
        if args.figure:
            blocks_figure(blocks, args.figure, args.title)
        return {"blocks": blocks}
    try:
        summary = summarise(build_curve(reports, points, args.choice), tuple(args.target))
    except ValueError as error:
        p.error(str(error))
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.figure:
        figure(summary, args.figure, args.title)
    return summary


if __name__ == "__main__":
    main()
