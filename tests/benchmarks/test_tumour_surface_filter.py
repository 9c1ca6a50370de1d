"""benchmarks/tumour_surface_filter.py: the choice of a cell, and a tiny finished 'run' on
its validation and held-out fresh cases (the filter itself: tests/postprocess)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from _cascades import finished_phantom_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
surface = pytest.importorskip("tumour_surface_filter")


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
    from featsup.postprocess import drop_surface_tumours

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
        rule = drop_surface_tumours(labels, 1, 0.4) == 2
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
