"""benchmarks/levers.py: every lever's d, read from the committed results files."""

from __future__ import annotations

import doctest
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
levers = pytest.importorskip("levers")


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(levers).failed == 0


def test_the_committed_files_give_the_readings_the_docs_quote() -> None:
    """Each rule's mean d and splits above 0, as docs/cascade-record.md states them."""
    by_rule = {r["rule"]: r for r in levers.read_all(levers.RESULTS)}
    quoted = {  # rule: (mean d, sd, above 0, splits)
        "B": (0.057, 0.065, 6, 6), "C": (-0.017, 0.022, 1, 3), "I": (-0.167, 0.084, 0, 3),
        "L": (-0.013, 0.057, 1, 3), "P": (0.009, 0.019, 4, 6), "Q1": (-0.011, 0.029, 3, 6),
        "S": (0.040, 0.062, 2, 3), "T": (0.008, 0.059, 4, 6), "U": (0.009, 0.007, 6, 6),
        "V": (0.004, 0.021, 5, 6), "W": (-0.001, 0.019, 3, 6), "X": (0.034, 0.059, 4, 6),
        "Y": (0.019, 0.038, 4, 6), "Z": (-0.004, 0.070, 5, 6),
        "AA": (0.005, 0.069, 3, 6), "AB": (-0.009, 0.029, 1, 6), "AC": (-0.005, 0.031, 3, 6),
        "AD": (0.018, 0.014, 5, 6), "AE1": (0.017, 0.011, 3, 3), "AE2": (0.048, 0.023, 3, 3),
        "AF": (0.111, 0.040, 2, 2), "AG": (-0.003, 0.073, 3, 6),
        "AH": (-0.025, 0.081, 4, 6), "AI": (0.004, 0.035, 2, 6), "AJ": (0.012, 0.048, 3, 6),
        "AK": (0.003, 0.020, 2, 6), "AL": (0.016, 0.010, 6, 6),
        "AM": (0.063, 0.018, 6, 6), "AN": (0.053, 0.031, 6, 6), "AO": (0.014, 0.022, 5, 6),
    }  # fmt: skip
    for rule, (mean, sd, above, splits) in quoted.items():
        r = by_rule[rule]
        assert (round(r["mean_d"], 3), round(r["sd_d"], 3)) == (mean, sd), rule
        assert (r["above_0"], r["splits"]) == (above, splits), rule
        lo, hi = r["ci95"]
        assert lo < r["mean_d"] < hi
    sticks = levers.yardsticks(levers.RESULTS)
    assert sticks["trainings"] == 12
    assert round(sticks["training_spread"], 3) == 0.045  # rule O
    held = sticks["held_out"]
    assert (round(held["tumour_per_case"], 3), round(held["tumour_global"], 3)) == (0.434, 0.587)
    assert sticks["goal_gap"] == pytest.approx(((0.60 - 0.434) + (0.70 - 0.587)) / 2, abs=1e-3)


def test_paired_and_stored_readings(tmp_path: Path, write_report) -> None:
    write_report("base.json", {
        "win_s40": (0.4, 0.6), "rep_s40": (0.6, 0.6), "win_s41": (0.5, 0.5)})  # fmt: skip
    write_report("arm.json", {"a_s40": (0.6, 0.7), "a_s41": (0.4, 0.5)})
    read = levers.Paired("arm.json", ("a",), "base.json", ("win", "rep"))
    d = read.split_d(tmp_path)
    assert d == pytest.approx({40: 0.1, 41: -0.05})  # 40: arm 0.6 / 0.7 against 0.5 / 0.6
    rows = {
        "list": [{"seed": 0, "d": 0.1}, {"seed": 29, "d": -0.2}],
        "named": {"t_s40": {"d": 0.3}, "tr_s40": {"d": 0.1}},
        "keyed": {"41": {"dx": 0.5}},
    }
    (tmp_path / "rule.json").write_text(json.dumps(rows))
    stored = levers.Stored("rule.json", (("list",), ("named",)))
    assert stored.split_d(tmp_path) == pytest.approx({0: 0.1, 29: -0.2, 40: 0.2})
    assert levers.Stored("rule.json", (("keyed",),), "dx").split_d(tmp_path) == {41: 0.5}
    summary = levers.summarise({0: 0.1, 29: -0.2, 40: 0.2})
    assert summary["above_0"] == 2 and summary["mean_d"] == pytest.approx(0.1 / 3)
    assert summary["ci95"][0] < -0.2 < 0.2 < summary["ci95"][1]  # 3 splits: a wide interval


def test_a_missing_file_or_folder_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(FileNotFoundError, match="no such results file"):
        levers.Paired("nowhere.json", ("a",)).split_d(tmp_path)
    with pytest.raises(SystemExit):
        levers.main(["--results", str(tmp_path / "absent")])
    assert "expected a folder" in capsys.readouterr().err


def test_table_json_and_figure(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "levers.json", tmp_path / "levers.png"
    result = levers.main(["--json", str(out), "--figure", str(png)])
    printed = capsys.readouterr().out
    assert printed.count("\n| ") == len(levers.LEVERS) + 1  # header rule and one row a lever
    assert "| Y | rule T's stage, fresh trainings of both | 5070-5109 |" in printed
    assert "gap to the goal 0.60 / 0.70: d +0.140" in printed
    assert json.loads(out.read_text())["yardsticks"] == result["yardsticks"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
