"""benchmarks/steps_curve.py: runs grouped by split and steps, gains per doubling."""

from __future__ import annotations

import doctest
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
steps_curve = pytest.importorskip("steps_curve")


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(steps_curve).failed == 0


def test_curve_averages_trainings_and_pairs_splits(tmp_path: Path, capsys, write_report) -> None:
    report = write_report("r.json", {
        "b_s1": (0.40, 0.50), "base_s1": (0.30, 0.40),  # 1250: mean 0.35 / 0.45
        "g25_s1": (0.40, 0.55), "g50_s1": (0.43, 0.61),
        "b_s2": (0.50, 0.60), "g25_s2": (0.54, 0.60), "g50_s2": (0.55, 0.61),
        "b_s3": (0.90, 0.90), "g25_s3": (0.90, 0.90),  # no 5000-step run: left out
    })  # fmt: skip
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    summary = steps_curve.main(
        [
            str(report),
            "--points",
            "b=1250",
            "base=1250",
            "g25=2500",
            "g50=5000",
            "--json",
            str(out),
            "--figure",
            str(png),
        ]
    )
    assert summary["steps"] == [1250, 2500, 5000] and summary["splits"] == [1, 2]
    assert summary["missing"][5000] == [] and summary["missing"][1250] == [3]
    s1 = summary["per_split"]["1"]["tumour_per_case"]
    assert s1["dice"] == pytest.approx([0.35, 0.40, 0.43])
    assert s1["gain_per_doubling"] == pytest.approx([0.05, 0.03])
    mean = summary["mean"]["tumour_per_case"]
    assert mean["dice"] == pytest.approx([0.425, 0.47, 0.49])
    # (0.60 - 0.49) / 0.02 = 5.5 more doublings at the last gain
    assert mean["doublings_to_target"] == pytest.approx(5.5)
    assert summary["mean"]["tumour_global"]["target"] == 0.70
    assert json.loads(out.read_text())["mean"]["tumour_per_case"]["dice"] == pytest.approx(
        mean["dice"]
    )
    assert png.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| **mean** | 0.425 / 0.525 | 0.470 / 0.575 | 0.490 / 0.610 |" in printed
    assert "left out of the mean" in printed and "5.5 more doublings" in printed


def test_no_gain_means_no_extrapolation(write_report, capsys) -> None:
    report = write_report("r.json", {"a_s1": (0.5, 0.6), "c_s1": (0.45, 0.6)})
    summary = steps_curve.main([str(report), "--points", "a=100", "c=400"])
    assert summary["mean"]["tumour_per_case"]["gain_per_doubling"] == pytest.approx([-0.025])
    assert summary["mean"]["tumour_per_case"]["doublings_to_target"] is None
    assert "the last gain is not above 0" in capsys.readouterr().out


@pytest.mark.parametrize(("points", "message"), [
    (["a=100"], "at least two step counts"),
    (["a=100", "a=200"], "given twice"),
    (["a=-5", "c=10"], "PREFIX=STEPS"),
    (["a100", "c=10"], "PREFIX=STEPS"),
    (["x=100", "y=200"], "no split holds every step count"),
])  # fmt: skip
def test_bad_points_are_refused(write_report, capsys, points, message) -> None:
    report = write_report("r.json", {"a_s1": (0.5, 0.6), "c_s1": (0.45, 0.6)})
    with pytest.raises(SystemExit):
        steps_curve.main([str(report), "--points", *points])
    assert message in capsys.readouterr().err


def test_missing_report_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        steps_curve.main([str(tmp_path / "none.json"), "--points", "a=1", "c=2"])
    assert "no such file" in capsys.readouterr().err


def test_blocks_are_read_apart_and_against_the_first_blocks_line(
    tmp_path: Path, capsys, write_report
) -> None:
    # block one: d 0, +0.02, +0.05 on split 1 and 0, +0.02, +0.03 on split 2
    one = write_report("one.json", {
        "b_s1": (0.40, 0.50), "g25_s1": (0.42, 0.52), "g50_s1": (0.45, 0.55),
        "b_s2": (0.60, 0.60), "g25_s2": (0.62, 0.62), "g50_s2": (0.63, 0.63),
    })  # fmt: skip
    # block two, harder: the same split names, a baseline far below block one's
    two = write_report("two.json", {"b_s1": (0.10, 0.20), "h_s1": (0.20, 0.24)})
    png, out = tmp_path / "blocks.png", tmp_path / "blocks.json"
    result = steps_curve.main([
        str(one), str(two), "--by-block", "--points", "b=1250", "g25=2500", "g50=5000",
        "h=10000", "--figure", str(png), "--json", str(out),
    ])  # fmt: skip
    first, second = result["blocks"]
    assert first["block"] == "one" and first["steps"] == [1250, 2500, 5000]
    assert first["d"]["1"] == pytest.approx([0.0, 0.02, 0.05])
    assert first["mean_d"] == pytest.approx([0.0, 0.02, 0.04])
    # block two's d is against its own baseline, not pooled with block one's b_s1
    assert second["steps"] == [1250, 10000] and second["d"]["1"] == pytest.approx([0.0, 0.07])
    assert second["mean_dice"][0] == pytest.approx([0.10, 0.20])
    a, slope = steps_curve.line_fit(first["steps"], first["mean_d"])
    assert slope == pytest.approx(0.02) and a == pytest.approx(0.0, abs=1e-12)
    printed = capsys.readouterr().out
    guess = a + 3 * slope  # 10000 steps: three doublings past 1250
    assert f"two at 10000 steps: d +0.070, the line predicts {guess:+.3f}" in printed
    assert json.loads(out.read_text())["blocks"][1]["mean_d"] == pytest.approx([0.0, 0.07])
    assert png.stat().st_size > 0


def test_a_block_with_one_step_count_is_refused(write_report, capsys) -> None:
    one = write_report("one.json", {"b_s1": (0.4, 0.5), "g25_s1": (0.42, 0.52)})
    two = write_report("two.json", {"b_s1": (0.1, 0.2)})
    with pytest.raises(SystemExit):
        steps_curve.main([str(one), str(two), "--by-block", "--points", "b=1250", "g25=2500"])
    assert "block two: expected runs at two step counts or more" in capsys.readouterr().err


def test_blocks_need_distinct_labels(write_report, capsys) -> None:
    one = write_report("one.json", {"b_s1": (0.4, 0.5), "g25_s1": (0.42, 0.52)})
    two = write_report("two.json", {"b_s1": (0.1, 0.2), "g25_s1": (0.2, 0.2)})
    points = ["--points", "b=1250", "g25=2500"]
    with pytest.raises(SystemExit):
        steps_curve.main([str(one), str(two), "--by-block", *points, "--labels", "x", "x"])
    assert "one distinct label per report" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        steps_curve.main([str(one), str(two), *points, "--labels", "A", "B"])
    assert "only with --by-block" in capsys.readouterr().err
    result = steps_curve.main([str(one), str(two), "--by-block", *points, "--labels", "A", "B"])
    assert [b["block"] for b in result["blocks"]] == ["A", "B"]
