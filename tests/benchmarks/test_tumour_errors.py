"""benchmarks/tumour_errors.py: the per-lesion record and its table, and a tiny finished
'run' on its held-out fresh cases."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from _cascades import finished_phantom_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
tumour_errors = pytest.importorskip("tumour_errors")


def test_lesions_are_found_in_part_by_contrast_and_size() -> None:
    volume = np.full((6, 24, 24), 100, np.int16)  # liver at 100 HU
    truth = np.ones((6, 24, 24), np.uint8)
    truth[1:3, 2:6, 2:6] = 2  # a dark lesion of 32 voxels
    volume[1:3, 2:6, 2:6] = 60
    truth[2:5, 12:20, 12:20] = 2  # a bright one of 192 voxels
    volume[2:5, 12:20, 12:20] = 140
    pred = np.zeros_like(truth, bool)
    pred[1:3, 2:6, 2:6] = True  # the dark one found whole
    pred[2:5, 12:20, 12:16] = True  # the bright one half
    found = tumour_errors.lesions(volume, truth, pred)
    assert [(x["voxels"], x["found"]) for x in found] == [(32, 32), (192, 96)]
    assert [x["contrast_hu"] for x in found] == [-40.0, 40.0]
    rows = {(r["by"], r["bin"]): r for r in tumour_errors.recall_table([{"lesions": found}])}
    assert rows["contrast", "hypodense"]["recall"] == 1.0
    assert rows["contrast", "hyperdense"]["recall"] == 0.5
    assert rows["contrast", "near-isodense"]["lesions"] == 0
    assert rows["contrast", "near-isodense"]["recall"] is None
    assert (rows["size", "< 100"]["touched"], rows["size", "100-499"]["voxels"]) == (1, 192)


def test_bad_split_or_limit_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        tumour_errors.main(["outputs/run", "--limit", "0"])
    assert "--limit: expected at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tumour_errors.main(["outputs/run", "--split", "test"])  # never the test cases
    assert "invalid choice: 'test'" in capsys.readouterr().err


def test_dice_summary_pools_the_cases_and_scores_an_empty_case_one() -> None:
    records = [
        {"overlap": 30, "tumour_pred": 40, "tumour_true": 50, "dice": 60 / 90},
        {"overlap": 0, "tumour_pred": 0, "tumour_true": 0, "dice": 1.0},  # tumour-free, none found
        {"overlap": 0, "tumour_pred": 10, "tumour_true": 0, "dice": 0.0},  # a false positive
    ]
    summary = tumour_errors.dice_summary(records)
    assert summary["cases"] == 3
    assert summary["per_case"] == pytest.approx((60 / 90 + 1.0 + 0.0) / 3)
    assert summary["global"] == pytest.approx(60 / 100)
    assert tumour_errors.dice_summary([])["per_case"] is None


def test_held_out_fresh_cases_are_those_of_tumour_gap(tmp_path: Path) -> None:
    from featsup import data as fd

    folder = tmp_path / "run"
    cascade = finished_phantom_run(folder, [8, 48, 48])
    out = tmp_path / "errors.json"
    result = tumour_errors.main([str(folder), "--split", "fresh", "--fresh", "3", "--extra", "1",
                                 "--work", str(tmp_path / "work"), "--json", str(out)])  # fmt: skip
    rows = result["runs"][str(folder)]
    assert [r["case"] for r in rows] == ["5001", "5002"]  # validation_size's held-out cases
    for row, case in zip(rows, fd.find_cases(tmp_path / "work" / "run" / "fresh")[1:], strict=True):
        loaded = fd.load_case(case)  # the saved cascade, scored again by hand
        pred, truth = cascade(loaded.volume).labels == 2, np.asarray(loaded.labels) == 2
        assert (row["overlap"], row["tumour_pred"]) == (int((pred & truth).sum()), int(pred.sum()))
        assert row["tumour_true"] == int(truth.sum()) == sum(x["voxels"] for x in row["lesions"])
    assert json.loads(out.read_text())["dice"] == result["dice"]


def test_fresh_extra_must_leave_held_out_cases(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        tumour_errors.main(["outputs/run", "--split", "fresh", "--fresh", "5", "--extra", "5"])
    assert "--extra: expected between 0 and --fresh - 1 (4), got 5" in capsys.readouterr().err
