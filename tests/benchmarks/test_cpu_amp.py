"""benchmarks/cpu_amp.py: several width sets timed in one run, each against the first."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
cpu_amp = pytest.importorskip("cpu_amp")


def test_width_sets_are_timed_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "amp.json"
    rows = cpu_amp.main(["--widths", "2", "4", "4", "4", "4", "--widths", "4", "4", "8", "8", "8",
                         "--variants", "UN-DS", "--size", "16", "--batch", "2", "--repeats",
                         "2", "--json", str(out)])  # fmt: skip
    assert list(rows) == ["2-4 UN-DS", "4-8 UN-DS"]
    assert rows["2-4 UN-DS"]["bf16_vs_first"] == 1.0  # the first set against itself
    assert all(row["fp32_ms"] > 0 and row["bf16_ms"] > 0 for row in rows.values())
    assert json.loads(out.read_text())["rows"] == rows


def test_no_repeats_is_refused() -> None:
    with pytest.raises(SystemExit):
        cpu_amp.main(["--repeats", "0"])


def test_width_sets_with_the_same_name_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):  # both would be "8-128" and one would hide the other
        cpu_amp.main(["--widths", "8", "16", "32", "64", "128", "--widths", "8", "32", "32", "64",
                      "128"])  # fmt: skip
    assert "differ in their first or last width" in capsys.readouterr().err


def test_compiled_students_are_timed_beside_the_eager_ones(tmp_path: Path) -> None:
    out = tmp_path / "amp.json"
    tiny = ["--widths", "2", "4", "4", "4", "4", "--size", "16", "--batch", "2", "--repeats", "1"]
    rows = cpu_amp.main([*tiny, "--variants", "UN-DS", "--compile", "--compile-backend",
                         "aot_eager", "--json", str(out)])  # fmt: skip
    assert list(rows) == ["2-4 UN-DS", "2-4 UN-DS compiled"]
    assert "first_step_s" not in rows["2-4 UN-DS"]
    compiled = rows["2-4 UN-DS compiled"]
    assert compiled["eager_bf16_vs_compiled"] > 0
    # the first step compiles: slower than a later one in both precisions
    assert compiled["first_step_s"]["bf16"] > compiled["bf16_ms"] / 1e3
    assert compiled["first_step_s"]["fp32"] > compiled["fp32_ms"] / 1e3
    assert json.loads(out.read_text())["rows"] == rows
