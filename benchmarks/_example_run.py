"""What the benchmarks read from a finished ``examples/lits_cascade.py`` run (its ``--out``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from featsup import data as fd


def example_split(
    folder: Path, parts: tuple[str, ...] = ("train", "val")
) -> dict[str, list[fd.LitsCase]]:
    """The run's training and validation cases, from its metrics.json (never its test cases).

    Training cases include those the run wrote for training only (``--extra-train-cases``);
    ``"val_extra"`` (in ``parts`` when asked for) are those it wrote for its choices after
    training (``--extra-val-cases``), an empty list for a run without them.
    ``parts=("val",)`` needs only the validation cases' files (a run scored elsewhere, on
    its phantom rebuilt without the training-only cases).
    """
    if not (folder / "metrics.json").exists():
        raise SystemExit(f"expected a finished example run, found no {folder}/metrics.json")
    split = json.loads((folder / "metrics.json").read_text())["split"]
    # the split's phantom, the cases it trained on only (--extra-train-cases) and those it
    # made its choices after training on too ("val_extra", --extra-val-cases)
    folders = [folder / "phantom", folder / "phantom_train", folder / "phantom_val"]
    cases = {c.case_id: c for part in folders if part.is_dir() for c in fd.find_cases(part)}
    return {k: [cases[i] for i in split.get(k, [])] for k in parts}


def write_json(path: Path | None, report: Any, indent: int = 2) -> None:
    """Write a benchmark's report to ``path`` (its folder made), when a path is given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=indent))
