"""The cascade with a 3D tumour model: the masked liver box, window by window, put back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")

from _cascades import threshold_cascade, threshold_unetpp
from featsup.data import make_phantom
from featsup.inference import Cascade, choose_heads, read_cascade_info
from featsup.inference._tumour_input import predict_box
from featsup.models import UNetPlusPlus

TUMOUR = 0.45  # the tumour model's threshold: tumour where the preprocessed image is darker


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return make_phantom(5, (16, 64, 64)).volume


def _cascade_3d(patch: tuple[int, int, int] = (8, 32, 32), **options: object) -> Cascade:
    """As ``threshold_cascade()``, its tumour model 3D."""
    tumour = threshold_unetpp(TUMOUR, bright=False, spatial_dims=3)
    settings = {"liver_size": 32, "device": "cpu", "batch_size": 8, **options}
    return Cascade(threshold_unetpp(0.35), tumour, tumour_patch=patch, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("patch", [(8, 32, 32), (32, 96, 96)])  # windows; one padded window
def test_3d_tumour_stage_labels_the_liver_box_on_the_volume_grid(
    volume: np.ndarray, patch: tuple[int, int, int]
) -> None:
    cascade = _cascade_3d(patch)
    liver = cascade.liver_stage(volume)
    result = cascade.tumour_stage(liver)
    assert result.labels.shape == volume.shape and result.labels.dtype == np.uint8
    # the box is predicted at the volume's resolution: the voxel-wise threshold model
    # gives exactly the thresholded image inside the liver (no resize moves a boundary)
    expected = liver.mask.astype(np.uint8)
    expected[liver.mask & (liver.image < TUMOUR)] = 2
    assert (expected == 2).sum() > 50 and (expected == 1).sum() > 50  # the check can fail
    clear = np.abs(liver.image - TUMOUR) > 1e-4  # blending may round the ties either way
    np.testing.assert_array_equal(result.labels[clear], expected[clear])
    assert result.tumour_probability.shape == volume.shape
    assert result.tumour_probability[~liver.mask].max() == 0.0
    slices = np.flatnonzero(liver.mask.any(axis=(1, 2)))
    assert result.roi.size is None  # not resized in-plane
    assert result.roi.bbox[0] == (slices[0], slices[-1] + 1)  # no margin along D
    assert set(result.timings) >= {"liver_model", "tumour_model", "total"}


def test_3d_tumour_stage_with_tta_and_both_classes_for_the_crf(volume: np.ndarray) -> None:
    plain = _cascade_3d()(volume)
    for tta in (True, "flips"):  # a voxel-wise model is symmetric under every flip
        mirrored = _cascade_3d(tumour_tta=tta)(volume)
        np.testing.assert_allclose(mirrored.tumour_probability, plain.tumour_probability,
                                   atol=1e-5)  # fmt: skip
    model = _cascade_3d().prepared("tumour", None)
    box = np.random.default_rng(0).random((6, 20, 28), dtype=np.float32)
    options = {"patch": (4, 16, 16), "overlap": 0.5, "batch_size": 3, "tta": False}
    both = predict_box(model, box, classes=None, **options)  # what the tumour CRF gets
    tumour = predict_box(model, box, classes=[1], **options)
    assert both.shape == (2, 6, 20, 28) and tumour.shape == (1, 6, 20, 28)
    np.testing.assert_allclose(both.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(both[1:], tumour)
    np.testing.assert_array_equal(tumour[0] > 0.5, box < TUMOUR)


def test_round_trip_of_a_cascade_with_a_3d_tumour_model(tmp_path: Path, volume: np.ndarray) -> None:
    cascade = _cascade_3d(tumour_overlap=0.25, tumour_head=1)
    before = cascade(volume)
    assert set(np.unique(before.labels)) == {0, 1, 2}
    path = cascade.save(tmp_path / "cascade.pt")
    loaded = Cascade.load(path, device="cpu")
    assert loaded.tumour_patch == (8, 32, 32) and loaded.tumour_overlap == 0.25
    assert isinstance(loaded.tumour_model, UNetPlusPlus) and loaded.tumour_model.spatial_dims == 3
    after = loaded(volume)
    np.testing.assert_array_equal(after.labels, before.labels)
    np.testing.assert_array_equal(after.tumour_probability, before.tumour_probability)
    assert read_cascade_info(path)["settings"]["tumour_patch"] == (8, 32, 32)


def test_file_without_3d_settings_loads_as_2d(tmp_path: Path) -> None:
    path = threshold_cascade().save(tmp_path / "old.pt")
    state = torch.load(path, weights_only=True)
    for key in ("tumour_patch", "tumour_overlap"):  # as files written before 3D tumour models
        del state["settings"][key]
    torch.save(state, path)
    loaded = Cascade.load(path, device="cpu")
    assert loaded.tumour_patch is None and loaded.tumour_overlap == 0.5


def test_heads_are_chosen_for_a_3d_tumour_model(volume: np.ndarray) -> None:
    cascade = _cascade_3d()
    truth = cascade(volume).labels  # the deepest heads' labels as the truth
    choice = choose_heads(cascade, [(volume, truth)])
    rows = [(r.stage, r.head) for r in choice.rows]
    assert rows == [("liver", 1), ("liver", 2), ("tumour", 1), ("tumour", 2)]
    assert choice.cascade is not None and choice.cascade.tumour_patch == (8, 32, 32)
    assert [r.dice for r in choice.rows if r.stage == "tumour"] == [1.0, 1.0]


def test_patch_must_match_the_tumour_model() -> None:
    liver = threshold_unetpp(0.35)
    with pytest.raises(ValueError, match=r"tumour_patch: expected a \(D, H, W\) window"):
        Cascade(liver, threshold_unetpp(TUMOUR, spatial_dims=3), device="cpu")
    with pytest.raises(ValueError, match="tumour_patch: expected None for a 2D"):
        Cascade(liver, threshold_unetpp(TUMOUR), tumour_patch=(8, 32, 32), device="cpu")
    with pytest.raises(ValueError, match="patch: expected 3 ints"):
        _cascade_3d((8, 32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tumour_overlap"):
        _cascade_3d(tumour_overlap=1.0)
