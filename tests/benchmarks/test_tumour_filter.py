"""benchmarks/tumour_filter.py: a tiny finished 'run' end to end, both sides scored by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from _cascades import finished_phantom_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
pytest.importorskip("nibabel")
pytest.importorskip("cv2")
tumour_filter = pytest.importorskip("tumour_filter")

SHAPE = [8, 48, 48]


def _spot_cases(folder: Path) -> list:
    """``_cascades.spot_case`` 0 and 1 written as LiTS NIfTI files in ``folder``."""
    from _cascades import spot_case
    from featsup import data as fd
    from featsup.data._orient import nibabel, processing_affine

    nib = nibabel()
    folder.mkdir(parents=True)
    for seed in (0, 1):
        arrays = spot_case(seed)
        affine, ornt = processing_affine((5.0, 1.4, 1.4), arrays[0].shape, "LPS")
        for name, array in zip(("volume", "segmentation"), arrays, strict=True):
            disk = nib.orientations.apply_orientation(np.transpose(array, (2, 1, 0)), ornt)
            nib.save(nib.Nifti1Image(np.ascontiguousarray(disk), affine),
                     str(folder / f"{name}-{seed}.nii"))  # fmt: skip
    return fd.find_cases(folder)


def test_a_finished_run_scored_with_and_without_its_filter(tmp_path: Path) -> None:
    from featsup import data as fd
    from featsup.inference import Cascade, tumour_criterion
    from featsup.inference.bundle import cascade_arguments

    folder = tmp_path / "run"
    fd.write_phantom_dataset(folder / "phantom", 3, shape=SHAPE, seed=70_001)
    saved = finished_phantom_run(folder, SHAPE, seed=70_001)  # case 0: true and false components
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["settings"].update(tumour_criterion="global", seed=0, train_seed=None)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "filter.json"
    report = tumour_filter.main([str(folder), "--fresh", "3", "--extra", "1", "--work",
                                 str(tmp_path / "work"), "--cases", "1", "--steps", "5",
                                 "--keeps", "0", "0.5", "--report-keeps", "0", "0.5",
                                 "--json", str(out)])  # fmt: skip
    run = report["runs"][str(folder)]
    assert run["held_out"] == ["5001", "5002"]  # validation_size.py's held-out cases
    assert run["validation"]["base"] == ["1", "2"]
    assert json.loads(out.read_text())["runs"][str(folder)]["held_out"] == run["held_out"]
    arm = run["filter/grid"]
    assert arm["keep"] in (0.0, 0.5) and arm["min_voxels"] == 0 and arm["filter"]["cases"] == 1
    fresh = fd.find_cases(tmp_path / "work" / "run" / "fresh")[1:]
    assert len(fresh) == 2
    # every keep reported; the chosen one's scores are the arm's own, run whole
    assert set(arm["by_keep"]) == {"0.0", "0.5"}
    for name in ("tumour_per_case", "tumour_global"):
        assert arm["by_keep"][str(arm["keep"])][name] == pytest.approx(arm[name])
    # the baseline is the saved cascade as it is, scored again by hand
    rows = []
    for case in fresh:
        loaded = fd.load_case(case)
        pred, truth = saved(loaded.volume).labels == 2, loaded.labels == 2
        rows.append([(pred & truth).sum(), pred.sum(), truth.sum()])
    assert run["base/grid"]["counts"] == np.asarray(rows).tolist()
    for name in ("per_case", "global"):
        expected = float(tumour_criterion(np.array(rows), name))
        assert run["base/grid"][f"tumour_{name}"] == pytest.approx(expected)
    # with keep 0 the filter keeps every component: the arm is the saved cascade's at size 0
    if arm["keep"] == 0.0:
        plain = Cascade(saved.liver_model, saved.tumour_model,
                        **{**cascade_arguments(saved), "tumour_min_voxels": 0})  # fmt: skip
        again = [int((plain(fd.load_case(c).volume).labels == 2).sum()) for c in fresh]
        assert [r[1] for r in arm["counts"]] == again
    with pytest.raises(SystemExit):
        tumour_filter.main([str(folder), "--fresh", "3", "--extra", "3"])
    # another filter seed: another filter, the same baseline
    other = tumour_filter.main([str(folder), "--fresh", "3", "--extra", "1", "--work",
                                str(tmp_path / "work"), "--cases", "1", "--steps", "5",
                                "--keeps", "0", "0.5", "--report-keeps", "0", "0.5",
                                "--filter-seed", "7"])["runs"][str(folder)]  # fmt: skip
    assert other["base/grid"] == run["base/grid"]
    assert other["filter/grid"]["filter"]["final_loss"] != arm["filter"]["final_loss"]


def test_a_run_whose_training_components_are_all_false_keeps_no_filter(tmp_path: Path) -> None:
    from featsup import data as fd

    folder = tmp_path / "run"
    fd.write_phantom_dataset(folder / "phantom", 3, shape=SHAPE, seed=70_000)
    finished_phantom_run(folder, SHAPE)  # case 0 of seed 70 000: no component on a tumour
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["settings"].update(tumour_criterion="global", seed=0)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    work = str(tmp_path / "work")
    flags = ["--fresh", "2", "--extra", "1", "--work", work, "--cases", "1", "--steps", "5"]
    report = tumour_filter.main([str(folder), *flags])
    run = report["runs"][str(folder)]
    assert "0 true" in run["filter/grid"]["filter"]["error"] and run["filter/grid"]["keep"] is None
    assert run["filter/grid"]["counts"] == run["base/grid"]["counts"]  # the arm is the baseline


def test_one_arm_per_threshold_each_labelling_at_its_own(tmp_path: Path) -> None:
    from featsup import data as fd
    from featsup.inference import Cascade
    from featsup.inference.bundle import cascade_arguments

    folder = tmp_path / "run"
    fd.write_phantom_dataset(folder / "phantom", 3, shape=SHAPE, seed=70_001)
    saved = finished_phantom_run(folder, SHAPE, seed=70_001)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["settings"].update(tumour_criterion="global", seed=0, train_seed=None)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    flags = ["--fresh", "3", "--extra", "1", "--work", str(tmp_path / "work"), "--cases", "1",
             "--steps", "5", "--keeps", "0", "--report-keeps", "0"]  # fmt: skip
    report = tumour_filter.main([str(folder), *flags, "--thresholds", "tuned", "0.3", "0.3:0.9",
                                 "tuned:0.9"])  # fmt: skip
    run = report["runs"][str(folder)]
    assert run["filter/grid"]["threshold"] == saved.tumour_threshold != 0.3
    low = run["filter@0.3/grid"]
    assert low["threshold"] == 0.3 and low["keep"] == 0.0
    # ':K' fixes the arm's keep; its scores are the same filter's at that keep
    kept = run["filter@0.3,0.9/grid"]
    assert kept["threshold"] == 0.3 and kept["keep"] == 0.9
    assert run["filter@tuned,0.9/grid"]["threshold"] == saved.tumour_threshold
    assert run["filter@tuned,0.9/grid"]["keep"] == 0.9
    assert tumour_filter.parse_arm("0.3::20") == (0.3, None, 20.0)
    assert tumour_filter.arm_name("0.3:0.9:20") == "filter@0.3,0.9,spots20/grid"
    with pytest.raises(ValueError, match="tumour_spots"):  # a CLAHE tumour input: refused,
        tumour_filter.main([str(folder), *flags, "--thresholds", "0.3::20"])  # not an arm
    # keep 0 keeps every component: the arm is the saved cascade at threshold 0.3, size 0
    plain = Cascade(saved.liver_model, saved.tumour_model,
                    **{**cascade_arguments(saved), "tumour_min_voxels": 0,
                       "tumour_threshold": 0.3})  # fmt: skip
    fresh = fd.find_cases(tmp_path / "work" / "run" / "fresh")[1:]
    assert [r[1] for r in low["counts"]] == [
        int((plain(fd.load_case(c).volume).labels == 2).sum()) for c in fresh
    ]
    for bad in ("1.0", "low", "0.3:1.5", "tuned:x", "0.3:0.9:0", "0.3:0.9:20:1"):
        with pytest.raises(SystemExit):
            tumour_filter.main([str(folder), *flags, "--thresholds", bad])


def test_scores_equal_each_cascade_run_whole_with_a_tumour_crf(tmp_path: Path) -> None:
    from _cascades import threshold_cascade
    from featsup import data as fd
    from featsup.data import Preprocessing
    from featsup.inference import Cascade
    from featsup.inference.bundle import cascade_arguments
    from featsup.postprocess import LesionFilter

    class ByPeak(LesionFilter):  # scores a component by its peak probability
        def score(self, patches, features, batch_size=256):  # type: ignore[no-untyped-def]
            return features[:, 1].astype(np.float32)

    crf = {"iterations": 2, "workers": 1}
    plain = Preprocessing(clahe=False, hu_window=(-50.0, 250.0))  # what spots read HU from
    base = threshold_cascade(liver=(0.9, 0.35), tumour=0.45, tumour_crf=crf,
                             tumour_min_voxels=5, tumour_preprocessing=plain)  # fmt: skip

    def variant(**options: object) -> Cascade:
        return Cascade(base.liver_model, base.tumour_model,
                       **{**cascade_arguments(base), **options})  # fmt: skip

    cascades = {
        "base/grid": base,
        "filter@0.3/grid": variant(tumour_threshold=0.3, tumour_min_voxels=0,
                                   tumour_filter=ByPeak(width=2), tumour_filter_keep=0.6),
        "filter@0.3,0/grid": variant(tumour_threshold=0.3, tumour_min_voxels=0,
                                     tumour_filter=ByPeak(width=2), tumour_filter_keep=0.0),
        "filter@0.3,0,spots10/grid": variant(
            tumour_threshold=0.3, tumour_min_voxels=0, tumour_filter=ByPeak(width=2),
            tumour_filter_keep=0.0, tumour_spots=10.0),  # shares the tumour pass above
        "other head": variant(tumour_head=1, tumour_threshold=0.4),  # its own tumour pass
    }  # fmt: skip
    cases = fd.find_cases(tmp_path) if fd.write_phantom_dataset(
        tmp_path, 2, shape=SHAPE, seed=70_001) else []  # fmt: skip
    cases += _spot_cases(tmp_path / "spots")  # where the spots change what the filter keeps
    out = tumour_filter.score(cascades, cases, [0.0, 0.6])
    spotted = out["filter@0.3,0,spots10/grid"]["counts"]
    assert spotted != out["filter@0.3,0/grid"]["counts"]  # the spots, kept at keep 0, count
    for name, cascade in cascades.items():
        whole = []
        for case in cases:
            loaded = fd.load_case(case)
            pred, true = cascade(loaded.volume).labels == 2, loaded.labels == 2
            whole.append([int((pred & true).sum()), int(pred.sum()), int(true.sum())])
        assert out[name]["counts"] == whole, name
    assert out["filter@0.3/grid"]["by_keep"]["0.6"]["tumour_global"] == pytest.approx(
        out["filter@0.3/grid"]["tumour_global"]
    )
