"""A checkpoint records the training data's preprocessing, and inference applies it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nibabel")
pytest.importorskip("cv2")

from featsup.data import (
    LiverSliceDataset,
    Preprocessing,
    find_cases,
    hu_window,
    load_case,
    preprocess_volume,
    write_phantom_dataset,
)
from featsup.inference import Cascade, predict_volume
from featsup.models import UNetPlusPlus
from featsup.supervision import segmentation_step
from featsup.training import Trainer, load_model

WINDOW = Preprocessing(hu_window=(-40.0, 260.0), clahe=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A tiny liver model trained 3 steps on data with a non-default window, and a volume."""
    folder = tmp_path_factory.mktemp("run")
    write_phantom_dataset(folder / "data", 1, shape=(12, 64, 64), seed=3)
    cases = find_cases(folder / "data")
    volume = load_case(cases[0]).volume.astype(np.float32)
    data = LiverSliceDataset(cases, size=(32, 32), empty_fraction=None, preprocessing=WINDOW)
    torch.manual_seed(0)
    Trainer(
        UNetPlusPlus(1, 2, widths=(4, 8, 16)), segmentation_step(), data, max_steps=3,
        batch_size=4, checkpoint_dir=folder, progress=False, device="cpu",
    ).fit()  # fmt: skip
    return folder / "last.pt", volume


def test_loaded_model_carries_the_training_preprocessing(trained: tuple[Path, np.ndarray]) -> None:
    model = load_model(trained[0])
    assert model.preprocessing == WINDOW


def test_predict_volume_applies_the_recorded_window(trained: tuple[Path, np.ndarray]) -> None:
    path, volume = trained
    model = load_model(path)
    kwargs = {"size": 32, "device": "cpu"}
    recorded = predict_volume(model, volume, preprocessing="model", **kwargs)
    explicit = predict_volume(model, volume, preprocessing=WINDOW, **kwargs)
    default = predict_volume(model, volume, preprocessing=Preprocessing(), **kwargs)
    np.testing.assert_array_equal(recorded, explicit)
    assert np.abs(recorded - default).max() > 1e-4  # the window matters for this model
    with pytest.raises(ValueError, match="recorded its preprocessing"):
        predict_volume(UNetPlusPlus(1, 2, widths=(4, 8)), volume, preprocessing="model")


def test_cascade_from_checkpoints_alone_equals_the_explicit_window(
    trained: tuple[Path, np.ndarray],
) -> None:
    path, volume = trained
    liver, tumour = load_model(path), load_model(path)
    options = {"liver_size": 32, "tumour_size": 32, "device": "cpu"}
    alone = Cascade(liver, tumour, **options)
    assert alone.preprocessing == WINDOW
    explicit = Cascade(liver, tumour, preprocessing=WINDOW, **options)(volume)
    default = Cascade(liver, tumour, preprocessing=Preprocessing(), **options)(volume)
    result = alone(volume)
    np.testing.assert_array_equal(result.liver_probability, explicit.liver_probability)
    np.testing.assert_array_equal(result.labels, explicit.labels)
    assert np.abs(result.liver_probability - default.liver_probability).max() > 1e-4


def test_cascade_feeds_each_model_its_own_recorded_preprocessing(
    trained: tuple[Path, np.ndarray],
) -> None:
    path, volume = trained
    liver, tumour = load_model(path), load_model(path)
    contrast = Preprocessing(hu_window=WINDOW.hu_window, clahe=True)  # the same window
    tumour.preprocessing = contrast
    options = {"liver_size": 32, "tumour_size": 32, "device": "cpu"}
    mask = load_case(find_cases(path.parent / "data")[0]).labels > 0  # the tumour stage runs

    def tumour_probability(cascade: Cascade) -> np.ndarray:
        return cascade.tumour_stage(cascade.liver_stage(volume, mask=mask)).tumour_probability

    cascade = Cascade(liver, tumour, **options)
    assert (cascade.preprocessing, cascade.tumour_preprocessing) == (WINDOW, contrast)
    expected = preprocess_volume(volume, preprocessing=contrast)  # the tumour model's input
    for stage in (cascade.liver_stage(volume), cascade.liver_stage(volume, mask=mask)):
        np.testing.assert_array_equal(stage.image, expected)
    explicit = Cascade(liver, tumour, preprocessing=WINDOW, tumour_preprocessing=contrast,
                       **options)  # fmt: skip
    same = Cascade(liver, tumour, preprocessing=WINDOW, **options)  # explicit: both stages
    assert same.tumour_preprocessing == WINDOW
    window = preprocess_volume(volume, preprocessing=WINDOW)
    assert np.abs(window - expected).max() > 0.01  # the two preprocessings differ here
    np.testing.assert_array_equal(same.liver_stage(volume).image, window)
    result = tumour_probability(cascade)
    np.testing.assert_array_equal(result, tumour_probability(explicit))
    assert np.abs(result - tumour_probability(same)).max() > 1e-4


def test_a_tumour_model_with_its_own_window_reads_the_volume_through_it(
    trained: tuple[Path, np.ndarray],
) -> None:
    path, volume = trained
    liver, tumour = load_model(path), load_model(path)
    wide = Preprocessing(clahe=False)  # the paper's window, not the liver model's
    tumour.preprocessing = wide
    cascade = Cascade(liver, tumour, liver_size=32, tumour_size=32, device="cpu")
    assert (cascade.preprocessing, cascade.tumour_preprocessing) == (WINDOW, wide)
    mask = load_case(find_cases(path.parent / "data")[0]).labels > 0
    expected = preprocess_volume(volume, preprocessing=wide)
    liver_u8 = hu_window(volume, low=WINDOW.hu_window[0], high=WINDOW.hu_window[1])
    assert np.abs(expected - preprocess_volume(volume, preprocessing=WINDOW)).max() > 0.05
    for stage in (cascade.liver_stage(volume), cascade.liver_stage(volume, mask=mask)):
        np.testing.assert_array_equal(stage.image, expected)  # the tumour model's window
        np.testing.assert_array_equal(stage.image_u8, liver_u8)  # the CRFs keep the liver's
    same = Cascade(liver, load_model(path), liver_size=32, tumour_size=32, device="cpu")
    np.testing.assert_array_equal(  # the liver stage does not depend on the tumour's window
        same.liver_stage(volume).probability, cascade.liver_stage(volume).probability
    )
