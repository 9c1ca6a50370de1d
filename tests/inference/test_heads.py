from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

pytest.importorskip("cv2")

from _cascades import threshold_cascade
from featsup.data import make_phantom
from featsup.inference import Cascade, choose_heads, smallest_head_within
from featsup.metrics import dice_score


@pytest.fixture(scope="module")
def cases() -> list[tuple[np.ndarray, np.ndarray]]:
    return [tuple(make_phantom(seed, (16, 64, 64))[:2]) for seed in (5, 6)]  # type: ignore[misc]


def test_smallest_head_within_tolerance() -> None:
    assert smallest_head_within([0.90, 0.952, 0.955, 0.956]) == 2  # 0.4 points below
    assert smallest_head_within([0.90, 0.950, 0.955, 0.956]) == 3  # 0.6 points below
    assert smallest_head_within([0.90, 0.950, 0.955, 0.956], tolerance=0.1) == 1
    assert smallest_head_within([0.7, 0.7]) == 1  # ties go to the smaller head
    with pytest.raises(ValueError, match="tolerance"):
        smallest_head_within([0.5], tolerance=-0.1)
    with pytest.raises(ValueError, match="dice"):
        smallest_head_within([])


def _liver_dice(cascade: Cascade, cases: list) -> float:
    return float(np.mean([dice_score(cascade(v).labels >= 1, t >= 1) for v, t in cases]))


def test_choice_follows_validation_dice_and_tolerance(cases: list) -> None:
    # liver head 1 thresholds far too high (a poor mask), head 2 well: head 2 must win
    cascade = threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45))
    choice = cascade.choose_heads(cases)
    rows = {(r.stage, r.head): r for r in choice.rows}
    assert [(r.stage, r.head) for r in choice.rows] == [
        ("liver", 1), ("liver", 2), ("tumour", 1), ("tumour", 2)
    ]  # fmt: skip
    expected = _liver_dice(threshold_cascade(liver=(0.9, 0.35), liver_head=2), cases)
    assert rows["liver", 2].dice == pytest.approx(expected)
    assert rows["liver", 1].dice < rows["liver", 2].dice - 0.05
    assert choice.liver_head == 2 and rows["liver", 2].chosen and not rows["liver", 1].chosen
    # the tumour heads are identical: the smaller one is chosen, with the chosen liver head
    assert rows["tumour", 1].dice == pytest.approx(rows["tumour", 2].dice)
    assert choice.tumour_head == 1
    for r in choice.rows:
        assert r.seconds_per_volume > 0
    assert rows["liver", 2].speedup == pytest.approx(1.0)
    assert choice.cascade is not None and choice.cascade is not cascade
    assert (choice.cascade.liver_head, choice.cascade.tumour_head) == (2, 1)
    assert cascade.liver_head is None  # the original is untouched
    assert choice.cascade.training_summary["heads"]["liver_head"] == 2
    assert "| liver | X0,2 |" in choice.table()
    # a loose tolerance takes the smallest head although it is worse
    assert choose_heads(cascade, cases, tolerance=1.0).liver_head == 1


def test_choose_heads_rejects_bad_cases(cases: list) -> None:
    cascade = threshold_cascade()
    with pytest.raises(ValueError, match="at least one"):
        choose_heads(cascade, [])
    with pytest.raises(ValueError, match="expected labels"):
        choose_heads(cascade, [(cases[0][0], None)])
    with pytest.raises(TypeError, match="cases\\[0\\]"):
        choose_heads(cascade, [cases[0][0]])


def test_tune_on_validation_chooses_heads_then_crf_stages(cases: list) -> None:
    from featsup.inference import tune_on_validation

    cascade = threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45))
    crf = {"iterations": 2, "workers": 1}
    tuning = tune_on_validation(cascade, cases, liver_crf=crf, tumour_crf=crf)
    assert (tuning.cascade.liver_head, tuning.cascade.tumour_head) == (2, 1)  # as choose_heads
    assert set(tuning.crf_scores) == {"none", "liver", "both"}
    scores = tuning.crf_scores
    liver_helps = scores["liver"]["liver"] > scores["none"]["liver"]
    assert (tuning.crf != "none") == liver_helps  # the CRF is kept only where it raised Dice
    assert (tuning.cascade.liver_crf is not None) == (tuning.crf != "none")
    assert (tuning.cascade.tumour_crf is not None) == (tuning.crf == "both")
    record = tuning.to_dict()
    assert record["val_dice_per_head"]["liver"] == [r.dice for r in tuning.heads.rows[:2]]
    assert len(record["head_table"]) == 4 and record["crf"] == tuning.crf
    assert cascade.liver_head is None and cascade.liver_crf is None  # the original untouched
    # fixed heads and CRF stages: the table is still measured, nothing else is tried
    fixed = tune_on_validation(cascade, cases, heads=(1, 2), crf="liver", liver_crf=crf)
    assert (fixed.cascade.liver_head, fixed.cascade.tumour_head) == (1, 2)
    assert fixed.crf_scores == {} and fixed.cascade.liver_crf == crf
    assert fixed.cascade.tumour_crf is None and len(fixed.heads.rows) == 4
    with pytest.raises(ValueError, match="crf"):
        tune_on_validation(cascade, cases, crf="tumour")  # type: ignore[arg-type]
    # one stage fixed (the tumour heads averaged), the other chosen by the table
    mean = tune_on_validation(cascade, cases, heads=(None, "mean"), crf="none")
    assert (mean.cascade.liver_head, mean.cascade.tumour_head) == (2, "mean")
    assert mean.to_dict()["tumour_head"] == "mean"
    liver = tune_on_validation(cascade, cases, heads=("mean", None), crf="none").cascade
    assert (liver.liver_head, liver.tumour_head) == ("mean", 1)
    for bad in ((None, 0), (1,), "mean"):
        with pytest.raises(ValueError, match="heads"):
            tune_on_validation(cascade, cases, heads=bad, crf="none")  # type: ignore[arg-type]


def test_tune_on_validation_chooses_the_smallest_tumour_on_the_crf_runs(cases: list) -> None:
    from featsup.inference import tune_on_validation
    from featsup.postprocess import TUMOUR_MIN_VOXELS, tumour_dice_by_min_voxels

    cascade = threshold_cascade(liver=(0.9, 0.35), tumour=(0.3, 0.3))  # noisy tumours
    tuning = tune_on_validation(cascade, cases, crf="none", tumour_threshold=0.5,
                                tumour_min_voxels=(0, 5, 10_000), criterion="per_case")  # fmt: skip
    scores = tuning.min_voxels_scores
    plain = threshold_cascade(liver=(0.9, 0.35), tumour=(0.3, 0.3), liver_head=2)
    swept = [tumour_dice_by_min_voxels(plain(v).labels, t, (0, 5, 10_000)) for v, t in cases]
    assert scores == pytest.approx(dict(zip((0, 5, 10_000), np.mean(swept, 0), strict=True)))
    best = max(scores.values())
    assert tuning.tumour_min_voxels == min(m for m, d in scores.items() if d == best)
    assert tuning.cascade.tumour_min_voxels == tuning.tumour_min_voxels
    assert tuning.to_dict()["tumour_min_voxels"] == tuning.tumour_min_voxels
    kept = tuning.cascade(cases[0][0]).labels == 2
    assert not kept.any() or tuning.tumour_min_voxels < 10_000
    # one size and fixed CRF stages: nothing to choose, nothing run
    fixed = tune_on_validation(cascade, cases, crf="none", tumour_threshold=0.6,
                               tumour_min_voxels=7)  # fmt: skip
    assert fixed.tumour_min_voxels == 7 and fixed.min_voxels_scores == {}
    assert fixed.cascade.tumour_threshold == 0.6
    assert 0 in TUMOUR_MIN_VOXELS  # keeping every tumour is always a candidate
    with pytest.raises(ValueError, match="tumour_min_voxels"):
        tune_on_validation(cascade, cases, crf="none", tumour_min_voxels=(-1, 5))


def test_tune_on_validation_chooses_the_tumour_threshold_with_the_smallest_tumour(
    cases: list,
) -> None:
    from featsup.inference import tune_on_validation
    from featsup.postprocess import TUMOUR_THRESHOLDS, label_tumours, tumour_dice_by_min_voxels

    # tumour = image below 0.45 after preprocessing: more than the phantom's lesions, so
    # that thresholds above 0.5 (darker voxels only) score differently
    cascade = threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45))
    thresholds, sizes = (0.5, 0.9, 0.99), (0, 25)
    tuning = tune_on_validation(cascade, cases, crf="none", tumour_threshold=thresholds,
                                tumour_min_voxels=sizes, criterion="per_case")  # fmt: skip
    plain = [threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45), liver_head=2)(v)
             for v, _ in cases]  # fmt: skip
    for t in thresholds:  # each row: the labels that threshold gives, swept over the sizes
        swept = [tumour_dice_by_min_voxels(label_tumours(r.labels > 0, r.tumour_probability,
                                                         threshold=t), truth, sizes)
                 for r, (_, truth) in zip(plain, cases, strict=True)]  # fmt: skip
        expected = dict(zip(sizes, np.mean(swept, 0), strict=True))
        assert tuning.threshold_scores[t] == pytest.approx(expected)
    grid = tuning.threshold_scores
    assert len({round(row[0], 6) for row in grid.values()}) > 1  # the choice matters
    best = max(d for row in grid.values() for d in row.values())
    row = grid[tuning.tumour_threshold]
    assert max(row.values()) >= best - 0.005  # within the tolerance of the best
    nearer = [t for t in thresholds if abs(t - 0.5) < abs(tuning.tumour_threshold - 0.5)]
    assert all(max(grid[t].values()) < best - 0.005 for t in nearer)
    assert row[tuning.tumour_min_voxels] == max(row.values())
    assert tuning.min_voxels_scores == grid[tuning.tumour_threshold]
    assert tuning.cascade.tumour_threshold == tuning.tumour_threshold
    record = tuning.to_dict()
    assert record["tumour_threshold"] == tuning.tumour_threshold
    assert (
        record["val_tumour_dice_by_threshold"][str(tuning.tumour_threshold)]
        == grid[tuning.tumour_threshold]
    )
    chosen = tuning.cascade(cases[0][0])
    expected_labels = label_tumours(chosen.labels > 0, chosen.tumour_probability,
                                    threshold=tuning.tumour_threshold,
                                    min_voxels=tuning.tumour_min_voxels)  # fmt: skip
    np.testing.assert_array_equal(chosen.labels, expected_labels)
    assert 0.5 in TUMOUR_THRESHOLDS  # argmax is always a candidate
    for bad in (1.5, (0.5, -0.1), ()):
        with pytest.raises(ValueError, match="tumour_threshold"):
            tune_on_validation(cascade, cases, crf="none", tumour_threshold=bad)


def test_evaluate_cases_writes_scores_and_keeps_the_loaded_cases(tmp_path) -> None:
    from featsup.data import find_cases, load_segmentation, write_phantom_dataset
    from featsup.inference import evaluate_cases
    from featsup.metrics import LitsMetrics

    write_phantom_dataset(tmp_path / "data", 2, seed=5, shape=(16, 64, 64))
    cases = find_cases(tmp_path / "data")
    cascade = threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45), liver_head=2)
    done = evaluate_cases(cascade, cases, out=tmp_path / "out", figures=False, verbose=False,
                          keep_loaded=True)  # fmt: skip
    assert [r["case"] for r in done.records] == ["0", "1"] and len(done.loaded) == 2
    expected, from_files = LitsMetrics(), LitsMetrics(surface=False)
    for case, loaded, record in zip(cases, done.loaded, done.records, strict=True):
        assert record["timings"]["total"] > 0
        expected.update(cascade(loaded.volume).labels, loaded.labels, spacing=loaded.spacing)
        written = tmp_path / "out" / "predictions" / f"segmentation-{case.case_id}.nii.gz"
        again = from_files.update(load_segmentation(written)[0],
                                  load_segmentation(case.segmentation_path)[0])  # fmt: skip
        assert again["tumour"]["dice"] == pytest.approx(record["tumour"]["dice"])
    assert done.summary == expected.compute() and done.seconds_per_case > 0
    lean = evaluate_cases(cascade, cases[:1], figures=False, verbose=False)  # writes nothing
    assert lean.loaded == [] and lean.records[0]["tumour"] == done.records[0]["tumour"]
    with pytest.raises(ValueError, match="at least one"):
        evaluate_cases(cascade, [])


def test_the_threshold_moves_off_argmax_only_for_more_than_the_tolerance() -> None:
    from featsup.inference.heads import _best_postprocessing

    grid = {0.5: {0: 0.300, 25: 0.310}, 0.6: {0: 0.313, 25: 0.314}, 0.9: {0: 0.2, 25: 0.2}}
    assert _best_postprocessing(grid, 0.005) == (0.5, 25)  # 0.314 is within 0.005 of 0.310
    assert _best_postprocessing(grid, 0.001) == (0.6, 25)
    tied = {0.4: {0: 0.3, 25: 0.3}, 0.6: {0: 0.3, 25: 0.3}}
    assert _best_postprocessing(tied, 0.0) == (0.4, 0)  # equally near 0.5: the lower


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.int64, st.tuples(st.integers(1, 3), st.integers(1, 6), st.just(3)),
           elements=st.integers(0, 50)),
)  # fmt: skip
def test_tumour_criterion_pools_cases_as_named(raw) -> None:
    from featsup.inference import tumour_criterion
    from featsup.metrics._ops import dice

    # a valid count: both <= prediction, both <= truth
    counts = raw.copy()
    counts[..., 0] = np.minimum(counts[..., 0], np.minimum(counts[..., 1], counts[..., 2]))
    per_case = tumour_criterion(counts, "per_case")
    pooled = tumour_criterion(counts, "global")
    assert per_case.shape == pooled.shape == counts.shape[:1]
    for k, rows in enumerate(counts):
        assert per_case[k] == pytest.approx(np.mean([dice(*map(int, r)) for r in rows]))
        assert pooled[k] == pytest.approx(dice(*map(int, rows.sum(0))))
    assert tumour_criterion(counts, "mean") == pytest.approx((per_case + pooled) / 2)
    assert ((0 <= pooled) & (pooled <= 1)).all()


def test_tumour_criterion_refuses_bad_input() -> None:
    from featsup.inference import tumour_criterion

    with pytest.raises(ValueError, match="criterion"):
        tumour_criterion(np.zeros((2, 3)), "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cases, 3"):
        tumour_criterion(np.zeros((2, 4)))


def test_tune_on_validation_pools_by_the_criterion(cases: list) -> None:
    from featsup.inference import tumour_criterion, tune_on_validation
    from featsup.postprocess import label_tumours, tumour_counts_by_min_voxels

    cascade = threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45))
    thresholds, sizes = (0.5, 0.9), (0, 25)
    plain = [threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45), liver_head=2)(v)
             for v, _ in cases]  # fmt: skip
    counts = np.array([[tumour_counts_by_min_voxels(
        label_tumours(r.labels > 0, r.tumour_probability, threshold=t), truth, sizes)
        for r, (_, truth) in zip(plain, cases, strict=True)] for t in thresholds])  # fmt: skip
    counts = counts.transpose(0, 2, 1, 3)  # (thresholds, sizes, cases, 3)
    for criterion in ("global", "mean"):
        tuning = tune_on_validation(cascade, cases, crf="none", tumour_threshold=thresholds,
                                    tumour_min_voxels=sizes, criterion=criterion)  # fmt: skip
        expected = tumour_criterion(counts, criterion)
        for i, t in enumerate(thresholds):
            assert list(tuning.threshold_scores[t].values()) == pytest.approx(expected[i])
        assert tuning.criterion == criterion == tuning.to_dict()["tumour_criterion"]
    with pytest.raises(ValueError, match="criterion"):
        tune_on_validation(cascade, cases, crf="none", criterion="median")  # type: ignore[arg-type]


def test_choose_crf_stages_refuses_no_cases() -> None:
    from featsup.inference import choose_crf_stages

    cascade = threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45))
    with pytest.raises(ValueError, match="at least one case"):
        choose_crf_stages(cascade, [], liver_crf={}, tumour_crf={})


@pytest.mark.parametrize("stages", [("none", "liver", "both"), ("both",), ("liver",)])
def test_crf_trials_share_work_and_equal_each_cascade_run_whole(cases: list, stages) -> None:
    from featsup.inference.heads import _case_trials

    crf = {"iterations": 2, "workers": 1, "backend": "torch"}
    base = threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45), liver_head=2, tumour_head=1)
    options = {"none": (None, None), "liver": (crf, None), "both": (crf, crf)}
    trial = {
        s: threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45), liver_head=2,
                             tumour_head=1, liver_crf=options[s][0], tumour_crf=options[s][1])
        for s in stages
    }  # fmt: skip
    for volume, _ in cases:
        shared, image = _case_trials(trial, base, volume)
        assert set(shared) == set(stages) and image.shape == volume.shape
        for s in stages:
            whole = trial[s](volume)
            np.testing.assert_array_equal(shared[s].labels, whole.labels)
            np.testing.assert_allclose(
                shared[s].tumour_probability, whole.tumour_probability, atol=1e-6
            )


def test_score_heads_times_each_pruned_head_only_when_asked(cases: list) -> None:
    from featsup.inference import score_heads

    cascade = threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45))
    dice, seconds = score_heads(cascade, cases, stage="tumour", timed=False)
    assert len(dice) == 2 and all(np.isnan(seconds))
    dice_timed, seconds = score_heads(cascade, cases, stage="tumour")
    assert dice_timed == dice and all(s > 0 for s in seconds)


class _Loads(Sequence):
    """Hands out a fresh copy of each case's volume when read, as a lazy loader does, and
    counts how many of those copies are alive at each read."""

    def __init__(self, cases: list) -> None:
        self.cases, self.copies, self.alive = cases, [], []

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        volume, labels = self.cases[index]  # IndexError ends the iteration
        self.alive.append(sum(ref() is not None for ref in self.copies))
        copy = volume.copy()
        self.copies.append(weakref.ref(copy))
        return copy, labels


@pytest.mark.parametrize("stage", ["liver", "tumour"])
def test_score_heads_holds_one_case_at_a_time(cases: list, stage: str) -> None:
    from featsup.inference import score_heads

    cascade = threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45))
    many = cases * 2
    lazy = _Loads(many)
    dice, _ = score_heads(cascade, lazy, stage=stage, timed=False)  # type: ignore[arg-type]
    assert len(lazy.copies) == len(many)  # each case read once
    assert max(lazy.alive) <= 1  # the last one only, as the next is read: never all of them
    assert dice == score_heads(cascade, many, stage=stage, timed=False)[0]


def test_tune_on_validation_chooses_the_cheapest_tumour_tta_within_tolerance(cases: list) -> None:
    import torch

    from featsup.inference import TUMOUR_TTAS, tune_on_validation

    cascade = threshold_cascade(liver=(0.9, 0.35), tumour=(0.45, 0.45))
    with torch.no_grad():  # the tumour model looks 2 pixels to the right: flips now matter
        for unit in cascade.tumour_model.encoder["x0_0"]:
            unit[0].weight[0, 0, 1, 1], unit[0].weight[0, 0, 1, 2] = 0.0, 1.0
    grid = {"crf": "none", "tumour_threshold": (0.3, 0.5), "tumour_min_voxels": (0, 20)}
    tuning = tune_on_validation(cascade, cases[:1], tumour_tta="auto", **grid)
    scores = tuning.tta_scores
    assert list(scores) == [repr(t) for t in TUMOUR_TTAS]
    assert len(set(scores.values())) > 1  # the check can fail: the flips change the Dice
    top = max(scores.values())
    chosen = next(t for t in TUMOUR_TTAS if scores[repr(t)] >= top - 0.005)
    assert tuning.cascade.tumour_tta == chosen == tuning.to_dict()["tumour_tta"]
    kept = max(d for row in tuning.threshold_scores.values() for d in row.values())
    assert kept == pytest.approx(scores[repr(chosen)])  # the chosen TTA's own grid
    assert cascade.tumour_tta is False  # not changed
    fixed = tune_on_validation(cascade, cases[:1], tumour_tta="flips", **grid)
    assert fixed.cascade.tumour_tta == "flips" and fixed.tta_scores == {}
    best = max(d for row in fixed.threshold_scores.values() for d in row.values())
    assert scores["'flips'"] == pytest.approx(best)  # that TTA's own tuning's best
    with pytest.raises(ValueError, match="tumour_tta"):
        tune_on_validation(cascade, cases, tumour_tta="mirror", **grid)  # type: ignore[arg-type]
