"""Grid search of the dense-CRF presets on tuning phantoms, then a check on held-out ones.

Choose on validation, report on test: the "liver" and "tumour" presets of
``featsup.postprocess.CRF_PRESETS`` are chosen by mean Dice on phantom seeds 5000-5003
and then measured, against no CRF, on seeds 6000-6005. Neither range meets the cascade
example's cases (seeds 0-19) or the variants benchmark's (1000-1011). Phantoms have the
example's CPU shape (48, 256, 256), about 5.2 x 1.4 x 1.4 mm, so thetas are in 1.4 mm
pixels. Predictions and slices are those of ``make_crf_figure.py``: a simulated network
output (boundary shifted, blurred and noisy; models "liver A", "liver B", "tumour") on
six liver slices and up to five tumour slices per case; the tumour stage runs inside the
true liver (``mask``), as the cascade runs it inside its liver ROI.

The search is a coordinate search in two steps per stage: (1) the appearance kernel,
theta_alpha x theta_beta x w1, with the smoothness kernel and iterations of the previous
preset; (2) at the best appearance kernel, theta_gamma x w2 x iterations. No CRF is
scored alongside. It runs on pydensecrf (``--backend``): with one thread per process on
the 2-core machine a 256 x 256 slice took 85-88 ms there (two settings timed), against
53-85 ms (theta_alpha >= 5, theta_beta 10) to 311-666 ms (theta_alpha 2-3, theta_beta 3)
on torch, whose grid gets finer as the widths shrink; a masked tumour slice took 9-12
against 30-41 ms. The chosen presets are then run with both backends on the held-out
seeds.

Usage:
    python scripts/tune_crf_presets.py [--workers 2] [--json crf_tuning.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from make_crf_figure import (
    HELD_OUT_SEEDS,
    MODELS,
    SHAPE,
    backends,
    degrade,
    dice,
    liver_slices,
    one_thread,
    tumour_slices,
)
from tqdm import tqdm

from featsup.data import hu_window, make_phantom
from featsup.postprocess import CRF_PRESETS, dense_crf

TUNE_SEEDS = list(range(5000, 5004))
#: the presets before this search (chosen on the previous phantom): the starting point.
PREVIOUS = {
    "liver": {"theta_alpha": 10.0, "theta_beta": 10.0, "theta_gamma": 3.0, "w1": 10.0,
              "w2": 3.0, "iterations": 10},
    "tumour": {"theta_alpha": 5.0, "theta_beta": 5.0, "theta_gamma": 3.0, "w1": 3.0,
               "w2": 0.0, "iterations": 10},
}  # fmt: skip
#: step 1 (appearance kernel) per stage. Small widths are the slow ones (a finer grid):
#: the liver starts at theta_alpha 3, the tumours, a few pixels across, at 2.
APPEARANCE = {
    "liver": {
        "theta_alpha": [3.0, 5.0, 10.0, 20.0],
        "theta_beta": [3.0, 5.0, 10.0, 20.0],
        "w1": [3.0, 10.0, 30.0],
    },
    "tumour": {
        "theta_alpha": [2.0, 3.0, 5.0, 10.0],
        "theta_beta": [3.0, 5.0, 10.0, 20.0],
        "w1": [1.0, 3.0, 10.0],
    },
}
#: step 2 (smoothness kernel and iterations), both stages.
SMOOTHNESS = {"theta_gamma": [1.0, 3.0, 5.0], "w2": [0.0, 1.0, 3.0], "iterations": [5, 10, 20, 40]}
Config = dict[str, float | int]
PARAMS = ("theta_alpha", "theta_beta", "theta_gamma", "w1", "w2", "iterations")


@dataclass
class Field:
    """One slice of one stage: prediction, image, truth and (tumour stage) the liver."""

    seed: int
    z: int
    model: str
    probs: np.ndarray
    image: np.ndarray
    truth: np.ndarray
    mask: np.ndarray | None


def make_fields(seeds: list[int], stage: str) -> list[Field]:
    """The sampled slices of ``seeds`` with their simulated predictions for one stage."""
    fields = []
    for seed in seeds:
        volume, labels, _ = make_phantom(seed, SHAPE)
        image = hu_window(volume).astype(np.float32)
        liver = labels >= 1
        if stage == "liver":
            for z, model in itertools.product(liver_slices(liver), ("liver A", "liver B")):
                probs = degrade(liver[z], 1000 * seed + z, *MODELS[model])
                fields.append(Field(seed, z, model, probs, image[z], liver[z], None))
        else:
            for z in tumour_slices(labels):
                tumour = labels[z] == 2
                probs = degrade(tumour, 1000 * seed + z, *MODELS["tumour"])
                fields.append(Field(seed, z, "tumour", probs, image[z], tumour, liver[z]))
    return fields


def is_crf(config: Config) -> bool:
    """Whether a configuration has a kernel on (both weights 0: no CRF)."""
    return config["w1"] != 0 or config["w2"] != 0


def canonical(config: Config) -> Config:
    """A kernel of weight 0 has no width: fix its widths so duplicates collapse."""
    out = dict(config)
    if out["w1"] == 0:
        out["theta_alpha"], out["theta_beta"] = 0.0, 0.0
    if out["w2"] == 0:
        out["theta_gamma"] = 0.0
    return out


def run(field: Field, config: Config, backend: str = "torch") -> np.ndarray:
    """Label map of the stage's class (inside the mask) after the CRF (both weights 0: no CRF)."""
    if config["w1"] == 0 and config["w2"] == 0:
        labels = field.probs.argmax(0) == 1
    else:
        kwargs = dict(config)
        # a kernel of weight 0 is unused but its widths must be > 0; the torch backend
        # still builds the appearance grid, and wide cells keep it tiny
        if kwargs["w1"] == 0:
            kwargs["theta_alpha"], kwargs["theta_beta"] = 1000.0, 1000.0
        if kwargs["w2"] == 0:
            kwargs["theta_gamma"] = 1.0
        out = dense_crf(field.probs, field.image, mask=field.mask, backend=backend, **kwargs)
        labels = out.argmax(0) == 1
    return labels if field.mask is None else labels & field.mask


_WORK: tuple[list[Field], str] = ([], "torch")  # fields and backend; the pool inherits them


def _score(config: Config) -> tuple[Config, list[float]]:
    fields, backend = _WORK
    return config, [dice(run(f, config, backend), f.truth) for f in fields]


def evaluate(
    configs: list[Config], fields: list[Field], backend: str, workers: int, desc: str
) -> list[dict]:
    """Mean Dice of each configuration over ``fields`` (``workers`` forked processes)."""
    global _WORK
    _WORK = (fields, backend)
    unique = list(
        {json.dumps(canonical(c), sort_keys=True): canonical(c) for c in configs}.values()
    )
    rows = []
    with mp.get_context("fork").Pool(workers, initializer=one_thread) as pool:
        for config, scores in tqdm(pool.imap(_score, unique), total=len(unique), desc=desc):
            rows.append({**config, "dice": statistics.mean(scores), "per_field": scores})
    return sorted(rows, key=lambda r: -r["dice"])  # stable: ties keep the grid order


def search(
    stage: str, fields: list[Field], backend: str, workers: int
) -> tuple[Config, list[dict]]:
    """Two-step coordinate search; returns the chosen configuration and every row."""
    start = PREVIOUS[stage]
    step1 = [{**start, "w1": 0.0, "w2": 0.0}] + [  # no CRF, for reference
        {**start, **dict(zip(APPEARANCE[stage], values, strict=True))}
        for values in itertools.product(*APPEARANCE[stage].values())
    ]
    rows1 = evaluate(step1, fields, backend, workers, f"{stage} 1/2 appearance")
    best = {k: next(r for r in rows1 if is_crf(r))[k] for k in start}
    step2 = [
        {**best, **dict(zip(SMOOTHNESS, values, strict=True))}
        for values in itertools.product(*SMOOTHNESS.values())
    ]
    rows2 = evaluate(step2, fields, backend, workers, f"{stage} 2/2 smoothness, iterations")
    # the best CRF (a preset must have a kernel on, even where no CRF is better); a kernel
    # switched off keeps the previous widths, so that the preset stays valid
    top = next(r for r in rows2 if is_crf(r))
    chosen = {k: top[k] or start[k] if k.startswith("theta") else top[k] for k in start}
    for step, rows in ((1, rows1), (2, rows2)):
        for r in rows:
            r["step"] = step
    return chosen, rows1 + rows2


def held_out(
    stage: str, chosen: Config, fields: list[Field], names: list[str], backend: str
) -> list[dict]:
    """No CRF, the previous preset and the chosen one (each backend) on held-out fields."""
    columns = {"no CRF": ({"w1": 0.0, "w2": 0.0}, backend), "previous": (PREVIOUS[stage], backend)}
    columns.update({f"chosen, {b}": (chosen, b) for b in names})
    maps = {
        name: [run(f, canonical({**PREVIOUS[stage], **c}), b) for f in fields]
        for name, (c, b) in tqdm(columns.items(), desc=f"{stage} held-out")
    }
    rows = []
    for model in sorted({f.model for f in fields}):
        idx = [i for i, f in enumerate(fields) if f.model == model]
        row: dict = {"model": model, "slices": len(idx)}
        for name, labels in maps.items():
            row[name] = statistics.mean(dice(labels[i], fields[i].truth) for i in idx)
        gain = [dice(maps[f"chosen, {backend}"][i], fields[i].truth) for i in idx]
        base = [dice(maps["no CRF"][i], fields[i].truth) for i in idx]
        row["better / worse slices"] = (
            f"{sum(g > b for g, b in zip(gain, base, strict=True))} / "
            f"{sum(g < b for g, b in zip(gain, base, strict=True))}"
        )
        if len(names) == 2:
            # % of the slice (liver stage) or of the liver (tumour stage), as make_crf_figure.py
            differ = []
            for i in idx:
                d = maps["chosen, torch"][i] != maps["chosen, pydensecrf"][i]
                differ.append(
                    float(d.mean() if fields[i].mask is None else d[fields[i].mask].mean())
                )
            row["backends differ, % px"] = 100.0 * statistics.mean(differ)
        rows.append(row)
    return rows


def table(rows: list[dict], keys: list[str]) -> None:
    """Print ``rows`` as a markdown table of ``keys``."""
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for r in rows:
        cells = [
            f"{r[k]:g}"
            if k in (*PARAMS, "step")
            else f"{r[k]:.4f}"
            if isinstance(r[k], float)
            else str(r[k])
            for k in keys
        ]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=TUNE_SEEDS)
    parser.add_argument("--held-out-seeds", type=int, nargs="+", default=HELD_OUT_SEEDS)
    parser.add_argument(
        "--stages", nargs="+", choices=("liver", "tumour"), default=["liver", "tumour"]
    )
    parser.add_argument(
        "--backend",
        choices=("pydensecrf", "torch"),
        default="pydensecrf",
        help="backend of the search (default pydensecrf: faster here at small widths)",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes (one thread each)")
    parser.add_argument("--json", default=None, help="write every number to this file")
    args = parser.parse_args()
    if set(args.tune_seeds) & set(args.held_out_seeds):
        parser.error(
            "--tune-seeds and --held-out-seeds overlap; choose on one, report on the other"
        )
    one_thread()
    start, names = time.perf_counter(), backends()
    if args.backend not in names:
        args.backend = "torch"
    report: dict = {
        "shape": SHAPE,
        "tune_seeds": args.tune_seeds,
        "held_out_seeds": args.held_out_seeds,
        "backend": args.backend,
        "grid": {"step 1": APPEARANCE, "step 2": SMOOTHNESS},
        "stages": {},
    }
    for stage in args.stages:
        report["stages"][stage] = tune_stage(stage, args, names)
        summarise(stage, report["stages"][stage])
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    report["wall_s"], report["cpu_s"] = time.perf_counter() - start, cpu
    print(f"\nwall {report['wall_s']:.0f} s, CPU {cpu:.0f} s (all processes)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")


def tune_stage(stage: str, args: argparse.Namespace, names: list[str]) -> dict:
    """Search on the tuning seeds, then measure on the held-out seeds; every number."""
    t0 = time.perf_counter()
    tune = make_fields(args.tune_seeds, stage)
    chosen, rows = search(stage, tune, args.backend, args.workers)
    t1 = time.perf_counter()
    held = held_out(stage, chosen, make_fields(args.held_out_seeds, stage), names, args.backend)
    return {
        "chosen": chosen,
        "previous": PREVIOUS[stage],
        "tuning_slices": [[f.seed, f.z, f.model] for f in tune],
        "search": rows,
        "held_out": held,
        "search_s": t1 - t0,
        "held_out_s": time.perf_counter() - t1,
    }


def summarise(stage: str, result: dict) -> None:
    """Print the search's best rows, the chosen preset and the held-out table."""
    keys = ["step", "theta_alpha", "theta_beta", "theta_gamma", "w1", "w2", "iterations", "dice"]
    rows = result["search"]
    none = next((r for r in rows if r["w1"] == 0 and r["w2"] == 0), None)
    print(
        f"\n{stage}: tuning, {len(rows)} configurations over {len(rows[0]['per_field'])} slices "
        f"(widths 0 = kernel off); best 5 of each step"
    )
    table([r for r in rows if r["step"] == 1][:5] + [r for r in rows if r["step"] == 2][:5], keys)
    if none is not None:
        print(f"no CRF on the tuning slices: Dice {none['dice']:.4f}")
    current = "equals" if CRF_PRESETS[stage] == result["chosen"] else "differs from"
    print(f"chosen: {result['chosen']} ({current} CRF_PRESETS[{stage!r}])")
    print(f"\n{stage}: held-out seeds, mean Dice per slice")
    held = result["held_out"]
    table(held, list(held[0]))


if __name__ == "__main__":
    main()
