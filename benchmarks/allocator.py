"""Training-step time on CPU with glibc's default allocator settings against featsup's.

glibc hands the top of its heap back to the operating system whenever more than its trim
threshold (a few MB, adjusted as it goes) lies free there, so every training step's
activations are faulted in again, page by page, on the next step.
:func:`featsup.training.keep_freed_memory` raises the trim and mmap thresholds so that the
process keeps what it freed. The setting is process-wide and cannot be undone, so each
setting runs in its own child process; the children alternate (default, kept, default,
...), each times ``--steps`` optimizer steps of the cascade example's CPU student
(``teacher_layout.py``'s ``UN-DS student`` job: widths 8..128, 8 slices of 128 x 128,
Adam, in the layout :func:`~featsup.training.channels_last_pays` picks) after two warm-up
steps, and reports its median step, minor page faults and system CPU seconds per step.
The table gives the medians over children and the median of the per-pair ratios (this
machine is shared and noisy: compare ratios, not absolute times).

    python benchmarks/allocator.py --pairs 5 --steps 15 --json allocator.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from teacher_layout import make_step

from featsup.training import channels_last_pays, keep_freed_memory

SETTINGS = ("default", "kept")


def child(setting: str, steps: int, widths: list[int]) -> dict:
    """Time ``steps`` optimizer steps in this process under ``setting``."""
    applied = keep_freed_memory() if setting == "kept" else False
    step = make_step("UN-DS student", widths, channels_last_pays(torch.device("cpu")))
    for _ in range(2):  # warm-up
        step(False)
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = [step(False) for _ in range(steps)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "setting": setting,
        "applied": applied,
        "step_ms": 1e3 * float(np.median(times)),
        "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "sys_ms_per_step": 1e3 * (after.ru_stime - before.ru_stime) / steps,
    }


def run_child(setting: str, args: argparse.Namespace) -> dict:
    """One child process's result (its last output line, JSON)."""
    command = [sys.executable, __file__, "--child", setting, "--steps", str(args.steps),
               "--widths", *map(str, args.widths)]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=5, help="child processes per setting")
    p.add_argument("--steps", type=int, default=15, help="timed steps per child")
    p.add_argument("--widths", type=int, nargs=5, default=[8, 16, 32, 64, 128])
    p.add_argument("--json", type=Path)
    p.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pairs < 1 or args.steps < 1:
        p.error(f"--pairs and --steps: expected >= 1, got {args.pairs} and {args.steps}")
    if args.child:
        result = child(args.child, args.steps, args.widths)
        print(json.dumps(result))
        return result
    print(f"CPU: {platform.processor() or platform.machine()}; "
          f"channels-last: {channels_last_pays(torch.device('cpu'))}")  # fmt: skip
    print(f"threads {torch.get_num_threads()}, {args.pairs} pairs of children, {args.steps} steps")
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for _ in range(args.pairs):
        for setting in SETTINGS:
            runs[setting].append(run_child(setting, args))
    print("| allocator | step ms | minor faults / step | system ms / step | default / kept |")
    print("|---|---|---|---|---|")
    pairs = zip(runs["default"], runs["kept"], strict=True)
    ratio = float(np.median([d["step_ms"] / k["step_ms"] for d, k in pairs]))
    rows = []
    for setting in SETTINGS:
        row = {"setting": setting, "applied": all(r["applied"] for r in runs[setting])}
        for key in ("step_ms", "faults_per_step", "sys_ms_per_step"):
            row[key] = float(np.median([r[key] for r in runs[setting]]))
        rows.append(row)
        last = f"{ratio:.2f}x" if setting == "kept" else ""
        print(f"| {setting} | {row['step_ms']:.0f} | {row['faults_per_step']:.0f} | "
              f"{row['sys_ms_per_step']:.0f} | {last} |")  # fmt: skip
    result = {"settings": vars(args), "rows": rows, "ratio": ratio, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
