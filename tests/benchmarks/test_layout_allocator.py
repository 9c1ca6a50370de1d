"""benchmarks/teacher_layout.py's student jobs and benchmarks/allocator.py's children."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
teacher_layout = pytest.importorskip("teacher_layout")
allocator = pytest.importorskip("allocator")

TINY = ["--widths", "2", "4", "4", "4", "4"]


def test_student_layouts_are_timed_in_2d_and_3d(tmp_path: Path) -> None:
    out = tmp_path / "layout.json"
    jobs = ["--jobs", "UN-DS student", "UN-DS student 3D", "--precisions", "fp32"]
    result = teacher_layout.main([*TINY, *jobs, "--repeats", "1", "--json", str(out)])
    rows = result["rows"]
    assert [(r["job"], r["precision"]) for r in rows] == [
        ("UN-DS student", "fp32"), ("UN-DS student 3D", "fp32")]  # fmt: skip
    assert all(r["nchw_ms"] > 0 and r["channels_last_ms"] > 0 and r["ratio"] > 0 for r in rows)
    assert json.loads(out.read_text())["rows"] == rows


def test_allocator_children_alternate_and_the_kept_one_faults_less(tmp_path: Path) -> None:
    out = tmp_path / "allocator.json"
    result = allocator.main([*TINY, "--pairs", "1", "--steps", "2", "--json", str(out)])
    default, kept = result["rows"]
    assert (default["setting"], kept["setting"]) == ("default", "kept")
    assert not default["applied"]
    if sys.platform.startswith("linux") and kept["applied"]:  # glibc took the settings
        assert kept["faults_per_step"] < default["faults_per_step"]
    assert result["ratio"] > 0 and json.loads(out.read_text())["ratio"] == result["ratio"]


def test_allocator_refuses_no_steps() -> None:
    with pytest.raises(SystemExit):
        allocator.main(["--steps", "0"])
