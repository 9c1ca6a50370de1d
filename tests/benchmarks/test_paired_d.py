"""benchmarks/paired_d.py: runs matched by split, baselines averaged, d and the spread."""

from __future__ import annotations

import doctest
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
paired_d = pytest.importorskip("paired_d")


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(paired_d).failed == 0


def test_d_against_the_mean_of_two_trainings(tmp_path: Path, capsys, write_report) -> None:
    base = write_report("base.json", {
        "win_s1": (0.5, 0.6), "rep_s1": (0.3, 0.4),  # mean 0.4 / 0.5
        "win_s2": (0.5, 0.5), "rep_s2": (0.5, 0.7),  # mean 0.5 / 0.6
        "win_s3": (0.9, 0.9),  # no arm run: left out
    })  # fmt: skip
    arm = write_report("arm.json", {"x_s1": (0.5, 0.5), "x_s2": (0.4, 0.6), "y_s2": (0, 0)})
    out = tmp_path / "d.json"
    flags = ["--baseline-prefix", "win", "rep", "--arm-prefix", "x", "--json", str(out)]
    result = paired_d.main(["--baseline", str(base), "--arm", str(arm), *flags])
    rows = {r["seed"]: r for r in result["rows"]}
    assert sorted(rows) == [1, 2] and rows[1]["baseline_trainings"] == 2
    assert rows[1]["d"] == pytest.approx(0.05) and rows[2]["d"] == pytest.approx(-0.05)
    summary = result["summary"]
    assert (summary["above_0"], summary["splits"]) == (1, 2)
    assert summary["mean_d"] == pytest.approx(0.0)
    # two trainings of split 1 differ by d -0.2, of split 2 by +0.1: rms sqrt(0.025)
    assert summary["baseline_training_spread"] == pytest.approx(0.025**0.5)
    assert json.loads(out.read_text())["summary"] == pytest.approx(summary)
    assert "| 1 | 0.400 / 0.500 (2) | 0.500 / 0.500 (1) |" in capsys.readouterr().out


def test_no_common_split_or_missing_choice_is_refused(write_report, capsys) -> None:
    base = write_report("base.json", {"win_s1": (0.5, 0.6)})
    arm = write_report("arm.json", {"x_s2": (0.5, 0.6)})
    with pytest.raises(SystemExit):
        paired_d.main(["--baseline", str(base), "--arm", str(arm), "--arm-prefix", "x"])
    assert "no split holds both" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no 'more/grid' scores"):
        paired_d.main(["--baseline", str(base), "--arm", str(base), "--arm-prefix", "win",
                       "--choice", "more/grid"])  # fmt: skip


def test_a_rules_results_file_is_read_too(tmp_path: Path) -> None:
    held = {"held_out_stage1": {
        "arm": {"m_s1": {"tumour_per_case": 0.6, "tumour_global": 0.8}},
        "baseline": {"win_s1": {"tumour_per_case": 0.5, "tumour_global": 0.6}},
    }}  # fmt: skip
    (tmp_path / "rule.json").write_text(json.dumps(held))
    files = ["--baseline", str(tmp_path / "rule.json"), "--arm", str(tmp_path / "rule.json")]
    result = paired_d.main([*files, "--arm-prefix", "m"])
    assert result["rows"][0]["d"] == pytest.approx(0.15)


def test_the_arm_can_be_another_choice_of_the_same_runs(tmp_path: Path) -> None:
    runs = {"out/b_s1": {"base/grid": {"tumour_per_case": 0.4, "tumour_global": 0.6},
                         "base/wide": {"tumour_per_case": 0.5, "tumour_global": 0.6}}}  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps({"runs": runs}))
    both = ["--baseline", str(tmp_path / "r.json"), "--arm", str(tmp_path / "r.json"),
            "--baseline-prefix", "b", "--arm-prefix", "b"]  # fmt: skip
    same = paired_d.main(both)
    assert same["rows"][0]["d"] == 0 and same["arm_choice"] == "base/grid"
    wide = paired_d.main([*both, "--arm-choice", "base/wide"])
    assert wide["rows"][0]["d"] == pytest.approx(0.05) and wide["arm_choice"] == "base/wide"
