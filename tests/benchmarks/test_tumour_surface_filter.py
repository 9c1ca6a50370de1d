"""benchmarks/tumour_surface_filter.py: the filter, the choice of a cell, and a tiny
finished 'run' on its validation and held-out fresh cases."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _cascades import finished_phantom_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
surface = pytest.importorskip("tumour_surface_filter")


def test_a_component_on_the_surface_is_dropped_and_one_inside_kept() -> None:
    labels = np.zeros((7, 12, 12), np.uint8)
    labels[1:6, 1:11, 1:11] = 1
    labels[3, 1, 4:7] = 2  # 3 voxels, all in the outer layer
    labels[2:5, 5:8, 5:8] = 2  # 27 voxels, none in it
    labels[1:3, 8:10, 1:3] = 2  # 8 voxels, 6 in the outer layer (75 %)
    kept = surface.surface_filter(labels, 1, 0.95)
    assert (kept == 2).sum() == 35 and (kept[3, 1, 4:7] == 1).all()
    assert (surface.surface_filter(labels, 1, 0.75) == 2).sum() == 27  # 6 of 8 reach 0.75
    assert (surface.surface_filter(labels, 1, 0.76) == 2).sum() == 35
    assert ((kept > 0) == (labels > 0)).all()  # the liver mask is unchanged
    with pytest.raises(ValueError, match="depth, fraction"):
        surface.surface_filter(labels, 0, 0.9)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**31 - 1), st.sampled_from(surface.DEPTHS), st.sampled_from(surface.FRACTIONS)
)
def test_the_filter_only_removes_tumour_and_deeper_or_laxer_removes_more(
    seed: int, depth: int, fraction: float
) -> None:
    rng = np.random.default_rng(seed)
    labels = np.zeros((6, 14, 14), np.uint8)
    labels[1:5, 2:12, 2:12] = 1
    labels[(rng.random(labels.shape) < 0.15) & (labels == 1)] = 2
    tumour = labels == 2
    kept = surface.surface_filter(labels, depth, fraction) == 2
    assert not (kept & ~tumour).any()
    assert ((surface.surface_filter(labels, depth, fraction) > 0) == (labels > 0)).all()
    laxer = surface.surface_filter(labels, depth, fraction / 2) == 2
    deeper = surface.surface_filter(labels, depth + 1, fraction) == 2
    assert not (laxer & ~kept).any() and not (deeper & ~kept).any()


def rows(none: list[int], *cells: list[int]) -> dict:
    return {"none": none, "cells": list(cells)}


def test_the_best_cell_needs_a_gain_and_ties_keep_the_earlier() -> None:
    runs = {
        "a": {"cases": [rows([5, 10, 10], [5, 5, 10], [5, 5, 10], [0, 0, 10])]},
        "b": {"cases": [rows([0, 4, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0])]},
    }
    cells = ((1, 0.95), (1, 0.9), (2, 0.95))
    # cells 0 and 1 drop 5 false voxels in a and the false positive of tumour-free b
    assert surface.paired_d(runs["a"]["cases"], 0) == pytest.approx(2 / 3 - 0.5)
    assert surface.paired_d(runs["b"]["cases"], 0) == pytest.approx(1.0)  # 0 -> 1, both ways
    assert surface.best_cell(runs, cells) == {
        "cell": [1, 0.95],
        "d": pytest.approx((1 / 6 + 1) / 2),
    }
    worse = {"a": {"cases": [rows([5, 10, 10], [0, 0, 10], [5, 10, 10], [0, 0, 10])]}}
    assert surface.best_cell(worse, cells) == {"cell": None, "d": 0.0}


def test_a_finished_run_on_validation_and_held_out_cases(tmp_path: Path) -> None:
    from featsup import data as fd

    folder = tmp_path / "run"
    cascade = finished_phantom_run(folder, [8, 48, 48])
    work = ["--fresh", "3", "--extra", "1", "--work", str(tmp_path / "work")]
    out = tmp_path / "fresh.json"
    report = surface.main([str(folder), "--split", "fresh", *work, "--rule", "1", "0.4",
                           "--json", str(out)])  # fmt: skip
    cases = report["runs"]["run"]["cases"]
    assert [c["case"] for c in cases] == ["5001", "5002"]  # validation_size's held-out cases
    for row, case in zip(
        cases, fd.find_cases(tmp_path / "work" / "run" / "fresh")[1:], strict=True
    ):
        loaded = fd.load_case(case)  # the saved cascade, scored again by hand
        labels, truth = cascade(loaded.volume).labels, np.asarray(loaded.labels) == 2
        pred = labels == 2
        assert row["none"] == [int((pred & truth).sum()), int(pred.sum()), int(truth.sum())]
        rule = surface.surface_filter(labels, 1, 0.4) == 2
        assert row["cells"][-1] == [int((rule & truth).sum()), int(rule.sum()), int(truth.sum())]
    assert report["cells"][-1] == [1, 0.4] and len(report["cells"]) == len(surface.GRID) + 1
    assert list(report["rule"]["splits"]) == ["70000"]  # one phantom seed, one split
    assert report["rule"]["runs"]["run"]["d"] == pytest.approx(
        surface.paired_d(cases, len(surface.GRID))
    )
    assert json.loads(out.read_text())["rule"]["mean_d"] == pytest.approx(report["rule"]["mean_d"])
    fd.write_phantom_dataset(folder / "phantom", 3, shape=(8, 48, 48), seed=70_000)
    inside = surface.main([str(folder), "--split", "fresh", *work, "--rule", "2", "0.9"])
    assert len(inside["cells"]) == len(surface.GRID)  # a cell of the grid: not added twice
    assert inside["rule"]["cell"] == [2, 0.9]  # not the grid's last cell
    assert inside["rule"]["runs"]["run"]["d"] == pytest.approx(
        surface.paired_d(cases, surface.GRID.index((2, 0.9)))
    )
    both = surface.main([str(folder), "--split", "val+extra", *work])
    assert [c["case"] for c in both["runs"]["run"]["cases"]] == ["1", "2", "5000"]


def test_bad_arguments_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):  # every run is checked before the first is scored
        surface.main([str(tmp_path / "missing")])
    assert (
        "missing: expected a finished examples/lits_cascade.py run, found no metrics.json "
        "or cascade.pt" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        surface.main(["outputs/run", "--split", "test"])  # never the test cases
    assert "invalid choice: 'test'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        surface.main(["outputs/run", "--split", "extra", "--extra", "0"])
    assert "--extra: expected at least 1 with --split extra" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        surface.main(["outputs/run", "--rule", "1.5", "0.9"])
    assert "--rule: expected an integer K >= 1 and F in (0, 1]" in capsys.readouterr().err
