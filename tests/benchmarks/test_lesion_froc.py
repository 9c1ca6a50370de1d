"""benchmarks/lesion_froc.py: the darkness score, the spots, the FROC and a tiny finished
'run' on its validation-type fresh cases."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from _cascades import finished_phantom_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
lesion_froc = pytest.importorskip("lesion_froc")

SPACING = (5.0, 1.5, 1.5)  # about the example's phantom voxel


def _liver(shape=(11, 48, 48), border=4) -> np.ndarray:
    liver = np.zeros(shape, bool)
    liver[1:-1, border:-border, border:-border] = True
    return liver


def _ct(liver: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    ct = np.where(liver, 110.0, -100.0).astype(np.float32)  # fat around the liver
    if noise:
        ct += np.random.default_rng(seed).normal(0.0, noise, ct.shape).astype(np.float32)
    return ct


def _spots(ct, liver, threshold, **kwargs) -> np.ndarray:
    dark = lesion_froc.liver_darkness(ct, liver, SPACING)
    depth = ndimage.distance_transform_edt(liver, sampling=SPACING)
    return lesion_froc.dark_spots(dark, liver, depth, threshold, **kwargs)


def test_a_dark_spot_is_dark_and_the_liver_edge_is_not() -> None:
    liver = _liver()
    ct = _ct(liver)
    ct[5:7, 20:27, 20:27] = 60.0
    d = lesion_froc.liver_darkness(ct, liver, SPACING)
    assert d.dtype == np.float32 and d.shape == ct.shape
    assert d[5, 23, 23] > 25.0
    assert abs(d[5, 10, 36]) < 2.0
    assert abs(d[5, 5, 24]) < 2.0  # the fat next to the edge does not count
    assert (d[~liver] == 0).all()


@settings(max_examples=15, deadline=None)
@given(st.floats(-200, 200), st.integers(0, 3))
def test_darkness_ignores_the_liver_level(offset, seed) -> None:
    liver = _liver((7, 32, 32))
    ct = _ct(liver, noise=10.0, seed=seed)
    a = lesion_froc.liver_darkness(ct, liver, SPACING)
    b = lesion_froc.liver_darkness(ct + np.float32(offset), liver, SPACING)
    np.testing.assert_allclose(a, b, atol=2e-2)


def test_darkness_refuses_bad_input() -> None:
    liver = _liver((5, 16, 16), border=2)
    with pytest.raises(ValueError, match="shape"):
        lesion_froc.liver_darkness(_ct(liver), liver[:-1], SPACING)
    with pytest.raises(ValueError, match="positive mm"):
        lesion_froc.liver_darkness(_ct(liver), liver, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive mm"):
        lesion_froc.liver_darkness(_ct(liver), liver, SPACING, scale_mm=0.0)


def test_spots_need_depth_darkness_a_small_size_and_the_models_floor() -> None:
    liver = _liver()
    deep, edge = _ct(liver), _ct(liver)
    deep[5:7, 20:27, 20:27] = 60.0
    edge[5:7, 4:7, 18:29] = 30.0  # a darker spot in the outer 4.5 mm
    found = _spots(deep, liver, 20.0)
    assert found[5, 23, 23] and not (found & ~liver).any()
    assert not _spots(edge, liver, 20.0).any()
    assert _spots(edge, liver, 20.0, min_depth_mm=0.0).any()
    assert not _spots(deep, liver, 60.0).any()  # not that dark
    assert not _spots(deep, liver, 20.0, max_voxels=int(found.sum()) - 1).any()
    prob = np.zeros(liver.shape, np.float32)
    assert not _spots(deep, liver, 20.0, probability=prob, floor=0.2).any()
    prob[5, 23, 23] = 0.3
    np.testing.assert_array_equal(_spots(deep, liver, 20.0, probability=prob, floor=0.2), found)


def test_noise_alone_makes_no_spot_a_lesion_one() -> None:
    liver = _liver((13, 64, 64))
    ct = _ct(liver, noise=12.0, seed=3)
    assert not _spots(ct, liver, 25.0).any()
    ct[6:8, 28:36, 28:36] -= 50.0
    assert _spots(ct, liver, 25.0)[6:8, 28:36, 28:36].mean() > 0.5


def test_lesion_peaks_and_false_sites() -> None:
    labels = _liver((7, 32, 32), border=2).astype(np.uint8)
    labels[3, 10:13, 10:13] = 2
    score = np.zeros(labels.shape, np.float32)
    score[3, 11, 11] = 0.9  # on the lesion
    score[3, 24, 24] = 0.4  # a false site deep in the liver
    score[3, 2, 24] = 0.8  # at the surface: not a site
    score[3, 13, 14] = 0.7  # next to the lesion: not a site
    assert lesion_froc.lesion_peaks(score, labels == 2) == [(9, pytest.approx(0.9))]
    deep = lesion_froc.interior(labels, SPACING, 4.0)
    sites = lesion_froc.false_sites(score, lesion_froc.site_region(labels, deep))
    assert sites.tolist() == pytest.approx([0.4])
    # read in the interior only: a lesion at the surface is left out, one half in keeps
    # the maximum of its deep part
    assert lesion_froc.lesion_peaks(score, labels == 2, deep) == [(9, pytest.approx(0.9))]
    assert lesion_froc.lesion_peaks(score, labels == 2, np.zeros_like(deep)) == []
    half = deep.copy()
    half[3, 11, 11] = False
    score[3, 10, 10] = 0.5
    assert lesion_froc.lesion_peaks(score, labels == 2, half) == [(9, pytest.approx(0.5))]


def test_sensitivity_at_a_false_site_rate() -> None:
    peaks, sites = np.array([0.9, 0.5, 0.2]), np.array([0.8, 0.4, 0.1])
    assert lesion_froc.sensitivity(peaks, sites, cases=10, rate=0.1) == pytest.approx(2 / 3)
    assert lesion_froc.sensitivity(peaks, sites, cases=1, rate=0.1) == pytest.approx(1 / 3)
    assert lesion_froc.sensitivity(peaks, sites, cases=1, rate=3.0) == 1.0  # more than there are
    assert np.isnan(lesion_froc.sensitivity(np.zeros(0), sites, 1, 1.0))
    table = lesion_froc.froc_table([(50, 0.9), (300, 0.2), (900, 0.95)], sites, cases=10)
    assert table["< 100"]["sensitivity"]["0.1"] == 1.0
    assert table["100-499"]["sensitivity"]["0.1"] == 0.0 and table[">= 500"]["lesions"] == 1


def test_a_tiny_run_on_its_validation_type_cases(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    finished_phantom_run(folder, [8, 48, 48])
    out = tmp_path / "froc.json"
    report = lesion_froc.main([str(folder), "--cases", "1", "--fresh", "3", "--extra", "2",
                               "--work", str(tmp_path / "work"), "--json", str(out)])  # fmt: skip
    run = report["runs"]["run"]
    assert run["cases"] == 1 and len(run["counts"]) == 1
    assert set(lesion_froc.SCORES) <= set(run) and set(report["pooled"]) == set(lesion_froc.SCORES)
    assert len(run["counts"][0]) == 1 + len(lesion_froc.SPOTS)
    truth = {row[2] for row in run["counts"][0]}
    assert len(truth) == 1  # every option scored against the same reference
    alone = np.asarray(run["counts"][0][0])
    for row in run["counts"][0][1:]:  # spots only add tumour voxels
        assert row[1] >= alone[1] and row[0] >= alone[0]
    assert list(report["spots"]) == lesion_froc.spot_names()
    assert json.loads(out.read_text())["pooled"] == report["pooled"]
    picture = tmp_path / "froc.png"
    again = lesion_froc.main(["--json", str(out), "--figure", str(picture), "--replot"])
    assert again["pooled"] == report["pooled"] and picture.stat().st_size > 1000


def test_cases_must_be_validation_type(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        lesion_froc.main(["outputs/run", "--cases", "5", "--fresh", "6", "--extra", "4"])
    assert "--cases: expected 1 to --extra (4), got 5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lesion_froc.main(["--fresh", "6", "--extra", "4"])
    assert "expected at least one run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lesion_froc.main(["--replot", "--json", "x.json"])
    assert "--replot: expected --json and --figure" in capsys.readouterr().err
