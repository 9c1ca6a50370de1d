"""benchmarks/tumour_gap.py: its oracles, and a tiny finished 'run' end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from _cascades import finished_phantom_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
pytest.importorskip("nibabel")
tumour_gap = pytest.importorskip("tumour_gap")

SHAPE = [8, 48, 48]
masks = arrays(bool, (3, 5, 5))


@settings(max_examples=60, deadline=None)
@given(masks, masks)
def test_removing_false_positives_keeps_every_true_positive_and_no_stray_component(
    pred: np.ndarray, truth: np.ndarray
) -> None:
    kept = tumour_gap.without_false_positives(pred, truth)
    assert not (kept & ~pred).any()  # only removes
    np.testing.assert_array_equal(kept & truth, pred & truth)  # every true positive stays
    # each component left touches the truth; each one removed touched none
    from scipy import ndimage

    components, n = ndimage.label(pred, structure=np.ones((3, 3, 3)))
    for i in range(1, n + 1):
        part = components == i
        assert kept[part].all() == (part & truth).any()
        assert kept[part].all() or not kept[part].any()


@settings(max_examples=60, deadline=None)
@given(masks, masks)
def test_lesion_records_agree_with_lesions_found(pred: np.ndarray, truth: np.ndarray) -> None:
    labels = np.where(truth, 2, 1).astype(np.uint8)
    volume = np.where(truth, 60.0, 110.0)
    mask = np.ones(truth.shape, bool)
    records = tumour_gap.lesion_records(volume, labels, mask, pred)
    assert [(r[0], r[3]) for r in records] == tumour_gap.lesions_found(pred, truth)
    for voxels, contrast, inside, _ in records:
        assert inside == 1.0 and (np.isnan(contrast) or contrast == pytest.approx(-50.0))
        assert tumour_gap.lesion_kind(voxels, contrast, inside) in tumour_gap.KINDS


@settings(max_examples=60, deadline=None)
@given(masks, masks)
def test_lesions_found_counts_every_reference_voxel_once(
    pred: np.ndarray, truth: np.ndarray
) -> None:
    lesions = tumour_gap.lesions_found(pred, truth)
    assert sum(v for v, _ in lesions) == truth.sum()
    assert any(f for _, f in lesions) == (pred & truth).any()


def test_the_oracles_on_a_finished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from featsup import data as fd
    from featsup.inference import tumour_criterion

    folder = tmp_path / "run"
    fd.write_phantom_dataset(folder / "phantom", 3, shape=SHAPE, seed=70_000)
    cascade = finished_phantom_run(folder, SHAPE)
    out = tmp_path / "gap.json"
    report = tumour_gap.main([str(folder), "--fresh", "3", "--extra", "1", "--work",
                              str(tmp_path / "work"), "--json", str(out)])  # fmt: skip
    run = report["runs"][str(folder)]
    assert run["held_out"] == ["5001", "5002"]  # the same held-out cases as validation_size's
    assert json.loads(out.read_text())["runs"][str(folder)]["held_out"] == run["held_out"]
    # "chosen" is the saved cascade as it is, scored again by hand
    fresh = fd.find_cases(tmp_path / "work" / "run" / "fresh")[1:]
    rows = []
    for case in fresh:
        loaded = fd.load_case(case)
        pred, truth = cascade(loaded.volume).labels == 2, loaded.labels == 2
        rows.append([(pred & truth).sum(), pred.sum(), truth.sum()])
    summary = run["summary"]
    assert summary["chosen"]["global"] == pytest.approx(
        float(tumour_criterion(np.array(rows), "global"))
    )
    # an oracle without false positives can only gain; every arm has the same reference
    for arm in ("no_fp", "true_liver_no_fp"):
        base = "chosen" if arm == "no_fp" else "true_liver"
        assert summary[arm]["per_case"] >= summary[base]["per_case"]
        assert summary[arm]["global"] >= summary[base]["global"]
    for case in run["cases"]:
        assert len({c[2] for c in case["counts"].values()}) == 1
        fp = case["counts"]["no_fp"]
        assert fp[0] == case["counts"]["chosen"][0]
    assert all(0.0 <= summary[k] <= 1.0 for k in ("coverage", "recall", "precision"))
    # every lesion has one kind; the kinds' lesions and found ones are the size bins'
    kinds = summary["lesion_kinds"]
    assert set(kinds) == set(tumour_gap.KINDS)
    bins = summary["lesions_chosen"].values()
    assert sum(k["lesions"] for k in kinds.values()) == sum(b["lesions"] for b in bins) > 0
    assert sum(k["found"] for k in kinds.values()) == sum(b["found"] for b in bins)
    assert sum(k["voxels"] for k in kinds.values()) == sum(r[2] for r in rows)
    assert "lesion kind" in capsys.readouterr().out


def test_extra_must_leave_held_out_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        tumour_gap.main([str(tmp_path), "--fresh", "5", "--extra", "5"])
    assert "--extra: expected between 0 and --fresh - 1 (4), got 5" in capsys.readouterr().err
