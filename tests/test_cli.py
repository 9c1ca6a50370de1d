from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")
pytest.importorskip("cv2")

import nibabel as nib

from _cascades import threshold_cascade
from featsup.cli import main
from featsup.data import write_phantom_dataset
from featsup.metrics import dice_score

SHAPE = (16, 64, 64)
# LiTS variety: LPS (DICOM-like), fully flipped (RAS), and permuted and flipped axes
AXCODES = ("LPS", "RAS", "IRA")
# (D, H, W) mm: slices thinner than pixels, pixels not square (64 pixels span a LiTS field)
SPACING = (2.5, 4.5, 5.5)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    return threshold_cascade(liver=(0.9, 0.35)).save(folder / "cascade.pt")


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same phantom (seed 5) three times, stored with three orientations."""
    folder = tmp_path_factory.mktemp("scans")
    for index, codes in enumerate(AXCODES):
        write_phantom_dataset(
            folder, 1, seed=5, shape=SHAPE, spacing=SPACING, axcodes=codes, start_index=index
        )
    return folder


def _predict(model: Path, inputs: list[Path], out: Path, *extra: str) -> int:
    args = ["predict", "--model", str(model), "--input", *map(str, inputs)]
    return main([*args, "--output", str(out), "--quiet", *extra])


def test_predictions_overlay_their_scans_in_every_orientation(
    model: Path, scans: Path, tmp_path: Path
) -> None:
    assert _predict(model, [scans], tmp_path) == 0
    canonical, dice = [], []
    for index in range(len(AXCODES)):
        source = nib.load(scans / f"volume-{index}.nii.gz")
        out = nib.load(tmp_path / f"segmentation-{index}.nii.gz")
        truth = np.asarray(nib.load(scans / f"segmentation-{index}.nii.gz").dataobj)
        np.testing.assert_array_equal(out.affine, source.affine)
        assert out.shape == source.shape
        np.testing.assert_allclose(out.header.get_zooms(), source.header.get_zooms())
        labels = np.asarray(out.dataobj)
        assert set(np.unique(labels)) == {0, 1, 2}
        # on the file's own voxel grid, the liver lies where the truth has it...
        dice.append(dice_score(labels >= 1, truth >= 1))
        left_right = [code in "LR" for code in nib.aff2axcodes(source.affine)].index(True)
        mirrored = np.flip(truth, axis=left_right)
        assert dice[-1] > 2 * dice_score(labels >= 1, mirrored >= 1)
        canonical.append(np.asarray(nib.as_closest_canonical(out).dataobj))
    # ...and in world space the three outputs are one and the same segmentation
    assert dice[0] > 0.5 and dice[1] == dice[0] and dice[2] == dice[0]
    np.testing.assert_array_equal(canonical[1], canonical[0])
    np.testing.assert_array_equal(canonical[2], canonical[0])


def test_bad_inputs_are_reported_and_skipped(
    model: Path, scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "volume-7.nii.gz").write_bytes(b"not a nifti file at all")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), bad / "volume-8.nii")
    nan = np.zeros((8, 8, 8), np.float32)
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), bad / "scan-9.nii.gz")
    inputs = [bad, scans / "volume-0.nii.gz", tmp_path / "missing.nii.gz"]
    capsys.readouterr()
    assert _predict(model, inputs, tmp_path / "out") == 1
    out, err = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["segmentation-0.nii.gz"]
    assert "1 written, 0 kept (already there; --overwrite replaces them), 4 failed" in out
    for name in ("volume-7.nii.gz", "volume-8.nii", "scan-9.nii.gz", "missing.nii.gz"):
        failures = [line for line in out.splitlines() if "FAILED" in line and name in line]
        assert len(failures) == 1, out
        assert len([line for line in err.splitlines() if name in line]) == 1, err
    assert "expected a 3D volume" in out and "NaN/Inf" in out and "readable NIfTI" in out


def test_existing_outputs_are_kept_unless_overwrite(
    model: Path, scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    volume = scans / "volume-1.nii.gz"
    target = tmp_path / "segmentation-1.nii.gz"
    target.write_bytes(b"an older result")
    assert _predict(model, [volume], tmp_path) == 0
    assert target.read_bytes() == b"an older result"
    assert "0 written, 1 kept" in capsys.readouterr().out
    assert _predict(model, [volume], tmp_path, "--overwrite", "--workers", "0") == 0
    assert nib.load(target).shape == nib.load(volume).shape
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_options_change_the_prediction(model: Path, scans: Path, tmp_path: Path) -> None:
    volume = [scans / "volume-0.nii.gz"]
    assert _predict(model, volume, tmp_path / "stored") == 0
    assert _predict(model, volume, tmp_path / "head1", "--head", "1", "2", "--no-crf") == 0
    stored = np.asarray(nib.load(tmp_path / "stored/segmentation-0.nii.gz").dataobj)
    head1 = np.asarray(nib.load(tmp_path / "head1/segmentation-0.nii.gz").dataobj)
    assert (stored >= 1).sum() > 2 * (head1 >= 1).sum()  # head 1 thresholds at 0.9
    # the liver heads averaged (head 1 says liver above 0.9, head 2 above 0.35): between
    assert _predict(model, volume, tmp_path / "mean", "--head", "mean", "2", "--no-crf") == 0
    assert _predict(model, volume, tmp_path / "head2", "--head", "2", "--no-crf") == 0
    mean, head2 = (np.asarray(nib.load(tmp_path / f"{k}/segmentation-0.nii.gz").dataobj) >= 1
                   for k in ("mean", "head2"))  # fmt: skip
    assert (head1 >= 1).sum() < mean.sum() < head2.sum()


def test_usage_errors_exit_2(
    model: Path, scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _predict(tmp_path / "none.pt", [scans], tmp_path) == 2
    assert "featsup predict: error: " in capsys.readouterr().err
    assert _predict(model, [scans], tmp_path, "--head", "1", "2", "3") == 2
    with pytest.raises(SystemExit) as bad_head:  # refused by argparse, with its message
        _predict(model, [scans], tmp_path, "--head", "all")
    assert bad_head.value.code == 2 and "expected a head 1..d or 'mean'" in capsys.readouterr().err
    assert _predict(model, [scans], tmp_path, "--workers", "-1") == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0 and "example:" in capsys.readouterr().out


def _write(folder: Path, name: str, labels: np.ndarray) -> None:
    affine = np.diag([0.7, 0.7, 5.0, 1.0])
    folder.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), folder / name)


def test_evaluate_scores_cases_and_handles_tumour_free_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    liver = np.zeros((12, 12, 8), np.uint8)
    liver[2:10, 2:10, 2:6] = 1
    with_tumour = liver.copy()
    with_tumour[4:6, 4:6, 3:5] = 2
    shifted = np.zeros_like(liver)
    shifted[2:10, 2:10, 3:7] = 1  # one 5 mm slice off
    _write(truth, "segmentation-0.nii", with_tumour)
    _write(pred, "segmentation-0.nii.gz", with_tumour)  # perfect
    _write(truth, "segmentation-1.nii", liver)  # tumour-free
    _write(pred, "segmentation-1.nii.gz", shifted)  # and none predicted
    _write(truth, "segmentation-2.nii", with_tumour)
    _write(pred, "segmentation-2.nii.gz", liver)  # tumour missed
    _write(truth, "segmentation-3.nii", liver)  # no prediction at all
    report = tmp_path / "metrics.json"
    rc = main(["evaluate", "--prediction", str(pred), "--truth", str(truth), "--json", str(report)])
    assert rc == 1
    out, err = capsys.readouterr()
    assert "segmentation-3" in err and "tumour-free" in out and "1 of 3 case(s)" in out
    data = json.loads(report.read_text())
    cases = {c["case"]: c for c in data["cases"]}
    assert cases["segmentation-1"]["tumour_free"] and not cases["segmentation-0"]["tumour_free"]
    assert cases["segmentation-1"]["liver"]["dice"] == pytest.approx(0.75)
    assert cases["segmentation-1"]["liver"]["msd"] == pytest.approx(5.0)
    assert cases["segmentation-1"]["tumour"]["dice"] == 1.0
    assert cases["segmentation-2"]["tumour"]["dice"] == 0.0
    assert cases["segmentation-2"]["tumour"]["assd"] is None  # inf: undefined
    assert data["tumour"]["dice_per_case"] == pytest.approx(2 / 3)
    assert data["tumour"]["assd_undefined_cases"] == 1
    assert data["tumour"]["assd"] == 0.0  # the one case where it is defined is perfect
    assert data["liver"]["dice_per_case"] == pytest.approx((1 + 0.75 + 1) / 3)
    assert data["failed"][0]["case"] == "segmentation-3"


def test_python_m_featsup_help() -> None:
    src = str(Path(__file__).parents[1] / "src")
    done = subprocess.run(
        [sys.executable, "-m", "featsup", "--help"],
        capture_output=True, text=True, env={"PYTHONPATH": src, "PATH": ""}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "predict" in done.stdout and "evaluate" in done.stdout and "example" in done.stdout
