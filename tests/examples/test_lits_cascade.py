"""End-to-end: the cascade example on a tiny phantom, and its error messages."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lits_cascade.py"
TINY = [
    "--cases", "4", "--phantom-shape", "12", "64", "64", "--size", "32", "--tumour-size", "32",
    "--steps", "3", "--teacher-steps", "2", "--widths", "4", "8", "8", "16", "16",
    "--batch-size", "2", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def example() -> ModuleType:
    pytest.importorskip("nibabel")
    pytest.importorskip("cv2")
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("lits_cascade", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lits_cascade"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_cascade_runs_end_to_end(example: ModuleType, tmp_path: Path) -> None:
    import nibabel as nib

    out = tmp_path / "run"
    metrics = example.main([*TINY, "--out", str(out), "--crf", "both"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["variant"] == "ES-DS"
    assert set(saved["dice_per_head"]["liver"]) == {"x0_1", "x0_2", "x0_3", "x0_4"}
    for key in ("dice_per_case", "dice_global", "voe", "rvd", "assd", "msd"):
        assert key in saved["liver"] and key in saved["tumour"]
    test_ids = saved["split"]["test"]
    assert test_ids and not set(test_ids) & set(saved["split"]["train"])
    assert metrics["seconds"]["total"] > 0
    for case_id in test_ids:
        pred = nib.load(out / "predictions" / f"segmentation-{case_id}.nii.gz")
        source = nib.load(out / "phantom" / f"volume-{case_id}.nii.gz")
        np.testing.assert_allclose(pred.affine, source.affine)
        assert pred.shape == source.shape
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
        assert (out / "figures" / f"case-{case_id}.png").stat().st_size > 0
    assert (out / "figures" / "curves_dice.png").exists()
    assert (out / "liver" / "best.pt").exists() and (out / "teachers" / "tumour.pt").exists()


def test_bad_flags_give_clear_messages(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        example.parse_args(["--cases", "2"])
    assert "--cases: expected at least 4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(["--data", str(tmp_path / "missing")])
    assert "expected a LiTS folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(["--variant", "XX-DS"])
    with pytest.raises(SystemExit):
        example.parse_args(["--mask-dilation", "-1"])
    assert "--mask-dilation: expected pixels >= 0" in capsys.readouterr().err
    args = example.parse_args(["--steps", "7"])
    assert (args.steps, args.tumour_steps) == (7, 7)  # --steps sets both stages
    assert example.parse_args(["--tumour-steps", "9"]).tumour_steps == 9


def test_folder_without_pairs_is_reported(example: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no volumes here")
    args = example.parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as info:
        example.split_cases(args)
    assert "--data" in str(info.value)
