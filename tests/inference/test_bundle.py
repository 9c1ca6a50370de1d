from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")

import featsup
from _cascades import threshold_cascade, threshold_unetpp
from featsup.data import make_phantom
from featsup.data.preprocess import Preprocessing
from featsup.inference import (
    CASCADE_FORMAT,
    Cascade,
    load_cascade,
    read_cascade_info,
    save_cascade,
)
from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return make_phantom(5, (16, 64, 64)).volume


def _saved(tmp_path: Path, **options: object) -> tuple[Cascade, Path]:
    cascade = threshold_cascade(**options)
    return cascade, cascade.save(tmp_path / "cascade.pt", training={"val_dice": {"liver": 0.9}})


def test_round_trip_gives_identical_labels_and_probabilities(
    tmp_path: Path, volume: np.ndarray
) -> None:
    cascade, path = _saved(tmp_path, liver_head=1, tumour_head=2, roi_margin=4,
                           tumour_min_voxels=20, tumour_threshold=0.7,
                           tumour_scope="roi", tumour_min_inside=0.0)  # fmt: skip
    before = cascade(volume)
    assert set(np.unique(before.labels)) == {0, 1, 2}  # every label: the check can fail
    loaded = Cascade.load(path, device="cpu")
    assert loaded.tumour_min_voxels == 20 and loaded.tumour_threshold == 0.7
    assert loaded.tumour_min_inside == 0.0
    after = loaded(volume)
    np.testing.assert_array_equal(after.labels, before.labels)
    np.testing.assert_array_equal(after.liver_probability, before.liver_probability)
    np.testing.assert_array_equal(after.tumour_probability, before.tumour_probability)
    assert (loaded.liver_head, loaded.tumour_head, loaded.roi_margin) == (1, 2, 4)
    assert loaded.tumour_scope == "roi"
    assert loaded.training_summary == {"val_dice": {"liver": 0.9}}


def test_file_restores_every_setting(tmp_path: Path) -> None:
    crf = {"theta_alpha": 5.0, "iterations": 3}
    _, path = _saved(
        tmp_path, liver_size=(48, 40), tumour_size=24, liver_crf=crf, tta=True, batch_size=3,
        preprocessing=Preprocessing(hu_window=(-50.0, 300.0), clahe=False),
    )  # fmt: skip
    loaded = load_cascade(path, device="cpu")
    assert loaded.liver_size == (48, 40) and loaded.tumour_size == (24, 24)
    assert loaded.tumour_min_voxels == 0  # the default, as for files written before it
    assert loaded.tumour_threshold == 0.5  # the same
    assert loaded.tumour_scope == "liver"  # the same
    assert loaded.liver_crf == crf and loaded.tumour_crf is None
    assert loaded.preprocessing == Preprocessing(hu_window=(-50.0, 300.0), clahe=False)
    assert loaded.predict_options == {"batch_size": 3, "device": "cpu", "tta": True}
    assert loaded.tumour_tta is True  # None when saved: the liver's


@pytest.mark.parametrize(
    ("options", "key", "kept", "older"),
    [
        ({"tumour_scope": "roi", "tumour_min_inside": 0.3}, "tumour_min_inside", 0.3, 0.0),
        ({"tumour_surface": (2, 0.9)}, "tumour_surface", (2, 0.9), None),
        ({"liver_classes": (1, 2)}, "liver_classes", (1, 2), (1,)),
        ({"tumour_head": "mean"}, "tumour_head", "mean", None),
    ],
)
def test_a_setting_is_kept_and_older_files_without_it_load_as_they_were_tuned(
    tmp_path: Path, options: dict, key: str, kept: object, older: object
) -> None:
    _, path = _saved(tmp_path, **options)
    assert getattr(load_cascade(path, device="cpu"), key) == kept
    state = torch.load(path, weights_only=False)
    del state["settings"][key]  # a file written before the key existed
    torch.save(state, path)
    assert getattr(load_cascade(path, device="cpu"), key) == older  # min_inside: a touch


def test_tumour_tta_is_kept_and_older_files_take_tta(tmp_path: Path) -> None:
    _, path = _saved(tmp_path, tta=True, tumour_tta="flips")
    assert load_cascade(path, device="cpu").tumour_tta == "flips"
    state = torch.load(path, weights_only=False)
    del state["settings"]["tumour_tta"]  # a file written before tumour_tta
    torch.save(state, path)
    assert load_cascade(path, device="cpu").tumour_tta is True
    info = read_cascade_info(path)
    assert info["format"] == CASCADE_FORMAT and info["featsup_version"] == featsup.__version__
    assert info["labels"] == {0: "background", 1: "liver", 2: "tumour"}
    assert info["liver"]["config"]["widths"] == [4, 8, 16] and "state_dict" not in info["liver"]


def test_tumour_context_is_kept_and_older_files_take_the_livers(tmp_path: Path) -> None:
    liver = threshold_unetpp(0.35)
    tumour = UNetPlusPlus(3, 2, widths=(4, 8, 16))  # 2.5D: one slice on each side
    cascade = Cascade(liver, tumour, liver_size=32, tumour_size=32, tumour_context=1,
                      device="cpu")  # fmt: skip
    path = cascade.save(tmp_path / "c.pt")
    assert load_cascade(path, device="cpu").tumour_context == 1
    state = torch.load(path, weights_only=True)
    del state["settings"]["tumour_context"]  # a file written before the key existed
    torch.save(state, path)
    loaded = load_cascade(path, device="cpu")
    assert (loaded.context, loaded.tumour_context) == (0, 0)


def test_each_stage_keeps_its_own_preprocessing(tmp_path: Path, volume: np.ndarray) -> None:
    window = Preprocessing(clahe=False)  # the tumour stage without CLAHE, the liver with it
    cascade, path = _saved(tmp_path, tumour_preprocessing=window)
    loaded = load_cascade(path, device="cpu")
    assert loaded.preprocessing == Preprocessing() and loaded.tumour_preprocessing == window
    np.testing.assert_array_equal(loaded(volume).labels, cascade(volume).labels)
    state = torch.load(path, weights_only=True)
    del state["tumour_preprocessing"]  # a file written before the key existed
    torch.save(state, path)
    assert load_cascade(path, device="cpu").tumour_preprocessing == Preprocessing()


def test_supervisor_is_saved_as_its_student_alone(tmp_path: Path, volume: np.ndarray) -> None:
    student = threshold_unetpp(0.35)
    supervisor = FeatureSupervisor(student, UNetPlusPlus(2, 2, widths=(4, 8, 16)), label_classes=2)
    cascade = Cascade(supervisor, threshold_unetpp(0.45, bright=False), liver_size=32,
                      tumour_size=32, device="cpu")  # fmt: skip
    path = cascade.save(tmp_path / "c.pt")
    state = torch.load(path, weights_only=True)
    assert set(state["liver"]["state_dict"]) == set(student.state_dict())
    loaded = Cascade.load(path, device="cpu")
    assert type(loaded.liver_model) is UNetPlusPlus
    np.testing.assert_array_equal(loaded(volume).labels, cascade(volume).labels)


def test_corrupt_file_gives_a_clear_error(tmp_path: Path) -> None:
    _, path = _saved(tmp_path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match=r"truncated\.pt: expected a featsup cascade file, got an"):
        Cascade.load(truncated)
    with pytest.raises(ValueError, match="found nothing"):
        Cascade.load(tmp_path / "missing.pt")


def test_other_files_and_versions_are_refused(tmp_path: Path) -> None:
    _, path = _saved(tmp_path)
    trainer = tmp_path / "best.pt"
    torch.save({"format": "featsup.trainer/1", "model": {}}, trainer)
    with pytest.raises(ValueError, match="a Trainer checkpoint"):
        Cascade.load(trainer)
    state = torch.load(path, weights_only=True)
    state["featsup_version"] = "9.9.0"
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with pytest.raises(ValueError, match=r"saved by featsup 9\.9\.0; fix: pip install"):
        Cascade.load(old)
    assert Cascade.load(old, check_version=False, device="cpu").liver_size == 32
    state["featsup_version"] = featsup.__version__
    state["tumour"]["state_dict"].pop("heads.x0_1.bias")
    torch.save(state, old)
    with pytest.raises(ValueError, match="expected tumour weights that fit its config"):
        Cascade.load(old)
    state["tumour"]["class"] = "os:system"
    torch.save(state, old)
    with pytest.raises(ValueError, match="expected a featsup model class"):
        Cascade.load(old)


def test_models_without_config_cannot_be_saved(tmp_path: Path) -> None:
    cascade = Cascade(torch.nn.Conv2d(1, 2, 1), threshold_unetpp(0.5), device="cpu")
    with pytest.raises(TypeError, match=r"liver_model: expected a model with \.config"):
        save_cascade(cascade, tmp_path / "c.pt")
    assert not list(tmp_path.iterdir())


def test_tumour_darkness_is_kept_runs_and_older_files_take_none(
    tmp_path: Path, volume: np.ndarray
) -> None:
    liver = threshold_unetpp(0.35)
    tumour = UNetPlusPlus(2, 2, widths=(4, 8, 16))  # the slice, then its darkness
    cascade = Cascade(liver, tumour, liver_size=32, tumour_size=32, tumour_darkness=[2.5, 8.5],
                      device="cpu")  # fmt: skip
    assert cascade.tumour_darkness == (2.5, 8.5)
    result = cascade(volume)  # a model of two input channels is fed two
    assert result.labels.shape == volume.shape and (result.labels > 0).any()
    path = cascade.save(tmp_path / "c.pt")
    loaded = load_cascade(path, device="cpu")
    assert loaded.tumour_darkness == (2.5, 8.5)
    np.testing.assert_array_equal(loaded(volume).tumour_probability, result.tumour_probability)
    state = torch.load(path, weights_only=True)
    del state["settings"]["tumour_darkness"]  # a file written before the key existed
    torch.save(state, path)
    assert load_cascade(path, device="cpu").tumour_darkness is None
    with pytest.raises(ValueError, match="tumour_darkness"):
        Cascade(liver, tumour, tumour_darkness=(8.5, 2.5), device="cpu")
    with pytest.raises(ValueError, match="tumour_darkness: expected None with a 3D"):
        Cascade(liver, UNetPlusPlus(1, 2, widths=(4, 8), spatial_dims=3), tumour_patch=(4, 8, 8),
                tumour_darkness=(2.5, 8.5), device="cpu")  # fmt: skip
