"""A cascade's tumour filter: applied, saved, chosen on validation, trained on its components."""

from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("cv2")

from _cascades import spot_case, threshold_cascade
from featsup.data import make_phantom
from featsup.inference import (
    TUMOUR_FILTER_THRESHOLD,
    Cascade,
    ValidationPass,
    add_lesion_filter,
    lesion_candidates,
    load_cascade,
    train_lesion_filter,
    tumour_criterion,
    tune_on_validation,
)
from featsup.inference.bundle import cascade_arguments
from featsup.postprocess import TUMOUR_FILTER_KEEP, LesionFilter, tumour_components


class ByPeak(LesionFilter):
    """Scores a component by its peak probability (feature 1), or a constant."""

    def __init__(self, constant: float | None = None) -> None:
        super().__init__(width=2)
        self.constant = constant

    def score(self, patches: np.ndarray, features: np.ndarray, batch_size: int = 256) -> np.ndarray:
        if self.constant is not None:
            return np.full(len(features), self.constant, np.float32)
        return features[:, 1].astype(np.float32)


@pytest.fixture(scope="module")
def cases() -> list[tuple[np.ndarray, np.ndarray]]:
    return [tuple(make_phantom(seed, (16, 64, 64))[:2]) for seed in (5, 6, 7)]  # type: ignore[misc]


def _with(cascade: Cascade, **options: object) -> Cascade:
    return Cascade(
        cascade.liver_model, cascade.tumour_model, **{**cascade_arguments(cascade), **options}
    )


def _whole_counts(cascade: Cascade, cases: list) -> list[list[int]]:
    """[both, predicted, reference] tumour voxels of each case, the cascade run whole."""
    out = []
    for volume, truth in cases:
        pred, true = cascade(volume).labels == 2, truth == 2
        out.append([int((pred & true).sum()), int(pred.sum()), int(true.sum())])
    return out


def test_the_filter_drops_what_it_scores_below_keep(cases: list) -> None:
    base = threshold_cascade(liver=(0.9, 0.35), tumour=0.45)
    volume = cases[0][0]
    plain = base(volume)
    assert (plain.labels == 2).any()
    low = _with(base, tumour_filter=ByPeak(0.2), tumour_filter_keep=0.5)(volume)
    assert not (low.labels == 2).any() and (low.labels == 1).sum() >= (plain.labels == 1).sum()
    assert "tumour_filter" in low.timings
    kept = _with(base, tumour_filter=ByPeak(0.2), tumour_filter_keep=0.1)(volume)
    np.testing.assert_array_equal(kept.labels, plain.labels)
    off = _with(base, tumour_filter=ByPeak(0.2), tumour_filter_keep=0.0)(volume)
    np.testing.assert_array_equal(off.labels, plain.labels)
    with pytest.raises(TypeError, match="tumour_filter"):
        _with(base, tumour_filter="not a filter")
    with pytest.raises(ValueError, match="tumour_filter_keep"):
        _with(base, tumour_filter_keep=2.0)


def test_a_saved_filter_loads_and_scores_the_same(cases: list, tmp_path) -> None:
    base = threshold_cascade(liver=(0.9, 0.35), tumour=0.45)
    lesion_filter, _ = train_lesion_filter(base, cases[:2], steps=20, width=4)
    cascade = _with(base, tumour_filter=lesion_filter, tumour_filter_keep=0.3)
    loaded = load_cascade(cascade.save(tmp_path / "c.pt"), device="cpu")
    assert loaded.tumour_filter_keep == 0.3 and isinstance(loaded.tumour_filter, LesionFilter)
    for name, value in lesion_filter.state_dict().items():
        np.testing.assert_array_equal(loaded.tumour_filter.state_dict()[name], value)
    np.testing.assert_array_equal(loaded(cases[2][0]).labels, cascade(cases[2][0]).labels)
    plain = load_cascade(base.save(tmp_path / "plain.pt"), device="cpu")
    assert plain.tumour_filter is None
    import torch

    state = torch.load(tmp_path / "c.pt", weights_only=True)
    state["tumour_filter"]["config"] = {"width": 8}  # weights of width 4
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="expected tumour filter weights that fit its config"):
        load_cascade(tmp_path / "bad.pt", device="cpu")


@pytest.mark.parametrize(
    ("liver", "tumour_crf"),
    [("reference", True), ("model", True), ("model-no-crf", True), ("model-no-crf", False)],
)
def test_lesion_candidates_mark_the_components_that_touch_a_tumour(
    cases: list, liver, tumour_crf: bool
) -> None:
    crf = {"iterations": 2, "workers": 1}  # a tumour CRF only where it is to be left out
    base = threshold_cascade(liver=(0.9, 0.35), tumour=0.45, liver_crf=crf,
                             tumour_crf=None if tumour_crf else crf)  # fmt: skip
    patches, features, targets = lesion_candidates(
        base, cases[:2], liver=liver, tumour_crf=tumour_crf
    )
    count, true = 0, 0
    hand = base
    if liver == "model-no-crf":
        hand = _with(hand, liver_crf=None)
    if not tumour_crf:
        hand = _with(hand, tumour_crf=None)
    for volume, labels in cases[:2]:
        mask = labels > 0 if liver == "reference" else None
        result = hand.tumour_stage(hand.liver_stage(volume, mask=mask))
        components, n = tumour_components(result.labels)
        count += n
        true += len({int(k) for k in np.unique(components[labels == 2]) if k})
    assert len(targets) == count == len(patches) == len(features)
    assert int(targets.sum()) == true
    assert 0 < targets.sum() < len(targets)  # the threshold cascade finds both kinds
    with pytest.raises(ValueError, match="liver"):
        lesion_candidates(base, cases[:1], liver="truth")


def test_tuning_chooses_the_keep_as_a_whole_run_scores_it(cases: list) -> None:
    from featsup.inference.heads import _crf_trials

    base = threshold_cascade(liver=(0.9, 0.35), tumour=0.45)
    filtered = _with(base, tumour_filter=ByPeak())
    keeps = (0.0, 0.5, 0.9, 0.99)
    tuning = tune_on_validation(filtered, cases, crf="none", tumour_threshold=(0.5, 0.7),
                                tumour_filter_keep=keeps)  # fmt: skip
    assert tuning.tumour_filter_keep in keeps and tuning.tumour_min_voxels == 0
    assert tuning.cascade.tumour_filter_keep == tuning.tumour_filter_keep
    assert set(tuning.filter_keep_scores) == set(keeps) and tuning.min_voxels_scores == {}
    scores = tuning.filter_keep_scores  # the highest keep within the tolerance of the best
    assert tuning.tumour_filter_keep == max(
        k for k, d in scores.items() if d >= max(scores.values()) - 0.005
    )
    assert tuning.to_dict()["tumour_filter_keep"] == tuning.tumour_filter_keep
    # each cell of the grid is what the cascade scores when run whole with that keep
    trials = _crf_trials(filtered, cases, None, None, thresholds=(0.7,), sizes=(0,),
                         stages=("none",), keeps=keeps)  # fmt: skip
    for j, keep in enumerate(keeps):
        whole = _with(filtered, tumour_threshold=0.7, tumour_filter_keep=keep, tumour_min_voxels=0)
        np.testing.assert_array_equal(trials["none"]["counts"][0, j], _whole_counts(whole, cases))
    with pytest.raises(ValueError, match="keeps"):
        _crf_trials(base, cases, None, None, thresholds=(0.5,), sizes=(0,), keeps=keeps)


def test_add_lesion_filter_keeps_the_choices_and_chooses_the_keep(cases: list) -> None:
    base = threshold_cascade(liver=(0.9, 0.35), tumour=0.45)
    first = tune_on_validation(base, cases[1:], crf="none", tumour_threshold=(0.5, 0.6))
    tuning, info = add_lesion_filter(first, cases[:1], cases[1:], steps=10, keeps=(0.0, 0.5),
                                     threshold=None)  # fmt: skip
    tuned = tuning.cascade
    assert isinstance(tuned.tumour_filter, LesionFilter) and tuning.tumour_filter_keep in (0.0, 0.5)
    assert tuned.tumour_threshold == first.tumour_threshold and tuned.tumour_min_voxels == 0
    default = inspect.signature(add_lesion_filter).parameters["threshold"].default
    assert default == TUMOUR_FILTER_THRESHOLD == 0.2  # rule AO's (the example's test runs it)
    assert (tuned.liver_head, tuned.tumour_head) == (
        first.cascade.liver_head,
        first.cascade.tumour_head,
    )
    assert info["cases"] == 1 and info["steps"] == 10 and "tune_seconds" in info
    assert tuned.training_summary["tumour_filter"]["cases"] == 1
    fixed, _ = add_lesion_filter(first, cases[:1], cases[1:], steps=10, threshold=None)
    assert fixed.tumour_filter_keep == fixed.cascade.tumour_filter_keep == TUMOUR_FILTER_KEEP
    assert TUMOUR_FILTER_KEEP == 0.9  # the default keep: rule AO's, with threshold 0.2
    assert list(fixed.filter_keep_scores) == [TUMOUR_FILTER_KEEP]
    with pytest.raises(ValueError, match="without a tumour filter"):
        add_lesion_filter(tuning, cases[:1], cases[1:], steps=10)


@pytest.mark.parametrize("tta", [None, "auto"])
def test_the_tunings_validation_outputs_are_its_cascades(cases: list, tta: str | None) -> None:
    base = threshold_cascade(liver=(0.9, 0.35), tumour=0.45)
    tuning = tune_on_validation(base, cases[1:], crf="none", tumour_threshold=(0.5, 0.6),
                                tumour_tta=tta, keep_outputs=True)  # fmt: skip
    ran = tuning.validation_pass
    if tta is None:
        assert ran is not None
    if ran is None:  # a TTA other than the first was chosen: nothing kept
        assert tuning.cascade.tumour_tta is not False
        return
    assert ran.crf == tuning.crf and ran.matches(cases[1:]) and not ran.matches(cases[:2])
    held = sum(sum(a.nbytes for a in output) for output in ran.outputs)
    assert held == ValidationPass.estimate_bytes(cases[1:])  # what the estimate promises
    for (volume, _), output in zip(cases[1:], ran.outputs, strict=True):
        whole = tuning.cascade(volume)
        np.testing.assert_array_equal(output.tumour_probability, whole.tumour_probability)
        np.testing.assert_array_equal(output.liver_mask, whole.liver_mask)
    assert "validation_pass" not in tuning.to_dict()


def test_add_lesion_filter_reuses_the_tunings_run_with_the_same_scores(cases: list) -> None:
    base = threshold_cascade(liver=(0.9, 0.35), tumour=0.45)
    first = tune_on_validation(base, cases[1:], crf="none", tumour_threshold=(0.5, 0.6),
                               keep_outputs=True)  # fmt: skip
    assert tune_on_validation(base, cases[1:], crf="none").validation_pass is None  # opt-in
    reused, info = add_lesion_filter(first, cases[:1], cases[1:], steps=10, keeps=(0.0, 0.5, 0.9),
                                     threshold=None)  # fmt: skip
    assert info["validation_reused"] and reused.validation_pass is None
    bare = replace(first, validation_pass=None)
    again, info = add_lesion_filter(bare, cases[:1], cases[1:], steps=10, keeps=(0.0, 0.5, 0.9),
                                    threshold=None)  # fmt: skip
    assert not info["validation_reused"]
    assert reused.threshold_scores == again.threshold_scores
    assert reused.tumour_filter_keep == again.tumour_filter_keep
    # other validation cases than the tuning's: the cascade runs on them
    other, info = add_lesion_filter(first, cases[:1], cases[:2], steps=10, threshold=None)
    assert not info["validation_reused"] and other.filter_keep_scores


def test_add_lesion_filter_at_a_threshold_of_its_own(cases: list) -> None:
    base = threshold_cascade(liver=(0.9, 0.35), tumour=0.45)
    first = tune_on_validation(base, cases[1:], crf="none", tumour_threshold=(0.5, 0.6),
                               keep_outputs=True)  # fmt: skip
    low, info = add_lesion_filter(first, cases[:1], cases[1:], steps=10, keeps=(0.0, 0.5),
                                  threshold=0.3)  # fmt: skip
    assert low.tumour_threshold == low.cascade.tumour_threshold == 0.3 != first.tumour_threshold
    assert list(low.threshold_scores) == [0.3] and info["validation_reused"]
    assert low.to_dict()["tumour_threshold"] == 0.3
    # the filter learnt from the components at 0.3: as many as the threshold leaves
    at = lesion_candidates(_with(first.cascade, tumour_threshold=0.3), cases[:1])[2]
    assert info["candidates"] == len(at) and info["true"] == int(at.sum())
    # its validation Dice at keep 0 is the cascade's at 0.3 with every component kept
    whole = _with(first.cascade, tumour_threshold=0.3, tumour_min_voxels=0)
    rows = np.array([[(p & t).sum(), p.sum(), t.sum()] for p, t in (
        (whole(v).labels == 2, truth == 2) for v, truth in cases[1:])])  # fmt: skip
    assert low.filter_keep_scores[0.0] == pytest.approx(
        float(tumour_criterion(rows, first.criterion))
    )
    same, _ = add_lesion_filter(first, cases[:1], cases[1:], steps=10,
                                threshold=first.tumour_threshold)  # fmt: skip
    assert same.tumour_threshold == first.tumour_threshold
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="threshold"):
            add_lesion_filter(first, cases[:1], cases[1:], steps=10, threshold=bad)


@pytest.fixture(scope="module")
def spot_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    return [spot_case(seed) for seed in (0, 1, 2)]


def _spotted(**options: object) -> Cascade:
    """The threshold cascade with a plain tumour window (what dark spots read HU from)."""
    from featsup.data import Preprocessing

    plain = Preprocessing(clahe=False, hu_window=(-50.0, 250.0))
    return threshold_cascade(liver=(0.9, 0.35), tumour=0.45, tumour_preprocessing=plain,
                             **options)  # fmt: skip


def test_dark_spots_join_the_components_before_the_filter(spot_cases: list, tmp_path) -> None:
    from featsup.postprocess import add_dark_spots, dark_spots

    base = _spotted()
    spotted = _with(base, tumour_spots=10.0, tumour_filter=ByPeak(1.0), tumour_filter_keep=0.5)
    volume = spot_cases[0][0]
    stage = base.liver_stage(volume)
    spots = dark_spots(stage.image, stage.mask, 10.0, window=(-50.0, 250.0))
    plain = base.tumour_stage(stage).labels
    assert (spots & (plain == 1)).any()  # the case has spots where the model sees liver
    result = spotted(volume)
    np.testing.assert_array_equal(result.labels, add_dark_spots(plain, spots))
    assert "tumour_spots" in result.timings
    # the filter keeps or drops them with the model's components
    dropped = _with(spotted, tumour_filter=ByPeak(0.0))(volume).labels
    assert not (dropped == 2).any()
    spotted.save(tmp_path / "c.pt")
    assert load_cascade(tmp_path / "c.pt", device="cpu").tumour_spots == 10.0
    assert base.tumour_spots is None
    with pytest.raises(ValueError, match="tumour_spots"):
        threshold_cascade(tumour_spots=5.0)  # a CLAHE tumour input: no HU to read
    with pytest.raises(ValueError, match="tumour_spots"):
        _spotted(tumour_spots=0.0)


def test_tuning_with_spots_scores_as_a_whole_run(spot_cases: list) -> None:
    from featsup.inference.heads import _crf_trials

    cases = spot_cases
    spotted = _with(_spotted(), tumour_filter=ByPeak(), tumour_spots=10.0)
    keeps = (0.0, 0.5)
    trials = _crf_trials(spotted, cases, None, None, thresholds=(0.7,), sizes=(0,),
                         stages=("none",), keeps=keeps)  # fmt: skip
    for j, keep in enumerate(keeps):
        whole = _with(spotted, tumour_threshold=0.7, tumour_filter_keep=keep, tumour_min_voxels=0)
        np.testing.assert_array_equal(trials["none"]["counts"][0, j], _whole_counts(whole, cases))
    # without a filter, the smallest tumour applies before the spots join, as in the cascade
    bare = _with(spotted, tumour_filter=None)
    sizes = (0, 30)
    trials = _crf_trials(bare, cases, None, None, thresholds=(0.7,), sizes=sizes,
                         stages=("none",))  # fmt: skip
    for j, size in enumerate(sizes):
        whole = _with(bare, tumour_threshold=0.7, tumour_min_voxels=size)
        np.testing.assert_array_equal(trials["none"]["counts"][0, j], _whole_counts(whole, cases))


def test_add_lesion_filter_with_spots_learns_and_keeps_them(spot_cases: list) -> None:
    cases = spot_cases
    first = tune_on_validation(_spotted(), cases[1:], crf="none", tumour_threshold=(0.5, 0.6),
                               keep_outputs=True)  # fmt: skip
    spotted, info = add_lesion_filter(first, cases[:1], cases[1:], steps=10, keeps=(0.0, 0.5),
                                      spots=10.0)  # fmt: skip
    assert spotted.cascade.tumour_spots == 10.0 and info["validation_reused"]
    plain, plain_info = add_lesion_filter(first, cases[:1], cases[1:], steps=10, keeps=(0.0, 0.5))
    assert plain.cascade.tumour_spots is None
    # the filter learnt from the spots too: the candidates of the cascade with them, which
    # grow a component the model found in part
    at = {
        spots: lesion_candidates(
            _with(first.cascade, tumour_threshold=TUMOUR_FILTER_THRESHOLD, tumour_spots=spots),
            cases[:1],
        )
        for spots in (None, 10.0)
    }
    assert (info["candidates"], info["true"]) == (len(at[10.0][2]), int(at[10.0][2].sum()))
    assert plain_info["candidates"] == len(at[None][2])
    assert not np.array_equal(at[10.0][1], at[None][1])


@pytest.mark.parametrize("keeps", [None, (0.0, 0.5)])
def test_tuning_with_the_surface_rule_scores_as_a_whole_run(cases: list, keeps) -> None:
    from featsup.inference.heads import _crf_trials

    base = threshold_cascade(liver=(0.9, 0.35), tumour=0.45)
    if keeps is not None:
        base = _with(base, tumour_filter=ByPeak())
    surfaced = _with(base, tumour_surface=(2, 0.3))
    sizes = (0,) if keeps else (0, 30)
    trials = _crf_trials(surfaced, cases, None, None, thresholds=(0.5,), sizes=sizes,
                         stages=("none",), keeps=keeps)  # fmt: skip
    plain = _crf_trials(base, cases, None, None, thresholds=(0.5,), sizes=sizes,
                        stages=("none",), keeps=keeps)  # fmt: skip
    assert not np.array_equal(trials["none"]["counts"], plain["none"]["counts"])  # it drops some
    for j, column in enumerate(keeps or sizes):
        setting = {"tumour_filter_keep": column, "tumour_min_voxels": 0} if keeps else {
            "tumour_min_voxels": column}  # fmt: skip
        whole = _with(surfaced, tumour_threshold=0.5, **setting)
        np.testing.assert_array_equal(trials["none"]["counts"][0, j], _whole_counts(whole, cases))
