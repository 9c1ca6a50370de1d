"""benchmarks/validation_size.py on a tiny finished 'run' whose cascade thresholds the image."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from _cascades import threshold_cascade

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
pytest.importorskip("nibabel")
validation_size = pytest.importorskip("validation_size")

SHAPE = [8, 48, 48]


def _run_folder(root: Path) -> Path:
    """A finished example run: 3 phantom cases (two for validation), its cascade, metrics."""
    from featsup.data import write_phantom_dataset

    folder = root / "run"
    write_phantom_dataset(folder / "phantom", 3, shape=SHAPE, seed=70_000)
    threshold_cascade(liver=(0.9, 0.35)).save(folder / "cascade.pt")
    settings = {"cases": 3, "extra_train_cases": 0, "phantom_shape": SHAPE, "crf": "none",
                "head_tolerance": 0.005, "tumour_criterion": "global"}  # fmt: skip
    metrics = {"settings": settings, "phantom_seed": 70_000,
               "split": {"train": ["0"], "val": ["1", "2"], "test": []}}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_choices_on_more_cases_are_scored_on_fresh_held_out_ones(tmp_path: Path) -> None:
    from featsup import data as fd
    from featsup.inference import tumour_criterion, tune_on_validation
    from featsup.inference.heads import _case_arrays, _crf_trials

    folder = _run_folder(tmp_path)
    report = validation_size.main(
        [str(folder), "--fresh", "3", "--extra", "1", "--work", str(tmp_path / "work")]
    )  # fmt: skip
    run = report["runs"][str(folder)]
    assert run["validation"] == {"base": ["1", "2"], "more": ["1", "2", "5000"]}
    assert run["held_out"] == ["5001", "5002"]  # fresh seeds, never the run's own cases
    fresh = fd.find_cases(tmp_path / "work" / "run" / "fresh")
    expected, _, _ = fd.make_phantom(75_002, shape=tuple(SHAPE))  # the run's seed + 5000 + 2
    np.testing.assert_array_equal(fd.load_case(fresh[2]).volume, expected)
    # "base/grid" is the example's own choice, scored again by hand on the held-out cases
    cases = {c.case_id: c for c in fd.find_cases(folder / "phantom")}
    tuned = tune_on_validation(
        threshold_cascade(liver=(0.9, 0.35)), [fd.load_case(cases[i]) for i in ("1", "2")],
        crf="none", criterion="global",
    ).cascade  # fmt: skip
    row = run["base/grid"]
    assert (row["threshold"], row["min_voxels"]) == (
        tuned.tumour_threshold, tuned.tumour_min_voxels)  # fmt: skip
    held = [_case_arrays(fd.load_case(c), i) for i, c in enumerate(fresh[1:])]
    trials = _crf_trials(tuned, held, None, None, thresholds=[tuned.tumour_threshold],
                         sizes=[tuned.tumour_min_voxels], stages=("none",))  # fmt: skip
    counts = trials["none"]["counts"]
    assert row["tumour_global"] == pytest.approx(float(tumour_criterion(counts[0, 0], "global")))
    assert row["tumour_per_case"] == pytest.approx(
        float(tumour_criterion(counts[0, 0], "per_case")))  # fmt: skip
    assert set(report["paired"]) == {
        "more/grid - base/grid", "base/wide - base/grid", "more/wide - more/grid"}  # fmt: skip
    # --base-only: the run's own choice alone, on the same held-out cases
    again = validation_size.main(
        [str(folder), "--fresh", "3", "--extra", "1", "--base-only", "--work",
         str(tmp_path / "work")]
    )["runs"][str(folder)]  # fmt: skip
    assert set(again) == {"validation", "held_out", "base/grid", "base/wide"}
    assert again["held_out"] == run["held_out"]
    timeless = [
        {k: v for k, v in r.items() if k != "tuning_seconds"} for r in (again["base/grid"], row)
    ]
    assert timeless[0] == timeless[1]


def test_tumour_head_mean_tunes_and_scores_the_heads_averaged(tmp_path: Path) -> None:
    from featsup import data as fd
    from featsup.inference import tumour_criterion, tune_on_validation
    from featsup.inference.heads import _case_arrays, _crf_trials

    folder = _run_folder(tmp_path)
    args = [str(folder), "--fresh", "3", "--extra", "1", "--base-only", "--work",
            str(tmp_path / "work")]  # fmt: skip
    chosen = validation_size.main(args)["runs"][str(folder)]["base/grid"]
    row = validation_size.main([*args, "--tumour-head", "mean"])["runs"][str(folder)]["base/grid"]
    assert row["tumour_head"] == "mean" and chosen["tumour_head"] in (1, 2)
    assert row["liver_head"] == chosen["liver_head"]  # the liver head still chosen
    cases = {c.case_id: c for c in fd.find_cases(folder / "phantom")}
    tuned = tune_on_validation(
        threshold_cascade(liver=(0.9, 0.35)), [fd.load_case(cases[i]) for i in ("1", "2")],
        crf="none", criterion="global", heads=(None, "mean"),
    ).cascade  # fmt: skip
    assert (row["threshold"], row["min_voxels"]) == (
        tuned.tumour_threshold, tuned.tumour_min_voxels)  # fmt: skip
    fresh = fd.find_cases(tmp_path / "work" / "run" / "fresh")
    held = [_case_arrays(fd.load_case(c), i) for i, c in enumerate(fresh[1:])]
    trials = _crf_trials(tuned, held, None, None, thresholds=[tuned.tumour_threshold],
                         sizes=[tuned.tumour_min_voxels], stages=("none",))  # fmt: skip
    counts = trials["none"]["counts"]
    assert row["tumour_global"] == pytest.approx(float(tumour_criterion(counts[0, 0], "global")))


def test_extra_must_leave_held_out_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        validation_size.main([str(tmp_path), "--fresh", "5", "--extra", "5"])
    assert "--extra: expected between 1 and --fresh - 1 (4), got 5" in capsys.readouterr().err
