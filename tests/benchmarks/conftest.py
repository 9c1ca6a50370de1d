"""Shared helpers of the benchmark scripts' tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

Scores = dict[str, tuple[float, float]]
"""{run name: (tumour Dice per case, global)}."""


@pytest.fixture
def write_report(tmp_path: Path) -> Callable[[str, Scores], Path]:
    """``write(file name, scores) -> path``: a ``validation_size.py --json`` report in
    ``tmp_path`` whose runs ``out/NAME`` hold the scores of the example's choice."""

    def write(name: str, scores: Scores) -> Path:
        runs = {f"out/{run}": {"base/grid": {"tumour_per_case": a, "tumour_global": b}}
                for run, (a, b) in scores.items()}  # fmt: skip
        path = tmp_path / name
        path.write_text(json.dumps({"runs": runs}))
        return path

    return write
