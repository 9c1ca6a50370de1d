"""The shared helpers of featsup._checks, pinned at the call sites they replaced."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featsup._checks import check_in_open_range, check_spacing, import_cv2, resolve_device


def test_resolve_device_auto_cpu_and_errors() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda'"):
        resolve_device("gpu0")
    with pytest.raises(TypeError, match="device"):
        resolve_device(3)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_resolve_device_rejects_absent_cuda_at_every_old_call_site() -> None:
    from featsup.inference import predict_volume
    from featsup.models import UNetPlusPlus
    from featsup.postprocess import dense_crf
    from featsup.training.device import resolve_device as training_device
    from featsup.training.distributed import DistEnv

    with pytest.raises(ValueError, match="expected an available device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="expected an available device"):
        training_device("cuda", DistEnv())
    with pytest.raises(ValueError, match="expected an available device"):
        predict_volume(UNetPlusPlus(1, 2, widths=(4, 8)), np.zeros((1, 16, 16)), device="cuda")
    probs = np.full((2, 8, 8), 0.5, np.float32)
    with pytest.raises(ValueError, match="expected an available device"):
        dense_crf(probs, np.zeros((8, 8), np.float32), device="cuda")


def test_training_device_is_the_shared_one_on_cpu() -> None:
    from featsup.training.device import resolve_device as training_device
    from featsup.training.distributed import DistEnv

    assert training_device("cpu", DistEnv()) == resolve_device("cpu")
    assert training_device("auto", DistEnv()) == resolve_device("auto", local_rank=0)


def test_check_spacing_values_and_errors() -> None:
    assert check_spacing(None, 3) == (1.0, 1.0, 1.0)
    assert check_spacing(np.array([2.5, 0.7, 0.7], np.float32), 3) == pytest.approx((2.5, 0.7, 0.7))
    assert check_spacing((1, 2), (2, 3)) == (1.0, 2.0)
    with pytest.raises(ValueError, match="expected 2 or 3 values"):
        check_spacing((1.0,), (2, 3))
    with pytest.raises(ValueError, match="positive finite"):
        check_spacing((1.0, float("nan")), 2)
    with pytest.raises(ValueError, match="positive finite"):
        check_spacing((1.0, 0.0), 2)
    with pytest.raises(TypeError, match="spacing: expected numbers"):
        check_spacing(("1", 2.0), 2)  # type: ignore[arg-type]


def test_spacing_errors_at_the_old_call_sites() -> None:
    from featsup.losses import boundary_weight_map
    from featsup.metrics import surface_distances
    from featsup.postprocess import dense_crf

    mask = np.zeros((8, 8), bool)
    with pytest.raises(ValueError, match="spacing: expected 2 values"):
        surface_distances(mask, mask, spacing=(1.0,))
    with pytest.raises(ValueError, match="spacing: expected 2 or 3 values"):
        boundary_weight_map(np.zeros((2, 8, 8), bool), slicewise=True, spacing=(1.0,))
    # slicewise weight maps keep the in-plane part of a 3-value spacing
    volume = np.stack([np.eye(8, dtype=bool)] * 2)
    weights = boundary_weight_map(volume, slicewise=True, spacing=(5.0, 1.0, 1.0))
    expected = boundary_weight_map(volume, slicewise=True, spacing=(1.0, 1.0))
    np.testing.assert_array_equal(weights, expected)
    probs = np.full((2, 8, 8), 0.5, np.float32)
    with pytest.raises(ValueError, match="spacing: expected positive finite"):
        dense_crf(probs, np.zeros((8, 8), np.float32), spacing=(1.0, -1.0))


def test_import_cv2_names_the_purpose_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cv2")
    assert import_cv2("anything").__name__ == "cv2"
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(ImportError, match=r'CLAHE needs OpenCV; .*"featsup\[data\]"'):
        import_cv2("CLAHE")


def test_opencv_errors_at_the_old_call_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    from featsup.data import SliceAugment, clahe
    from featsup.losses import boundary_weight_map

    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r"^CLAHE needs OpenCV"):
        clahe(np.zeros((8, 8), np.uint8))
    with pytest.raises(ImportError, match=r'^backend="opencv" needs OpenCV'):
        boundary_weight_map(np.eye(8, dtype=bool), backend="opencv")
    augment = SliceAugment(rotation_p=1.0, max_rotation=10.0, flip_p=0.0)
    with pytest.raises(ImportError, match=r"^rotation needs OpenCV"):
        augment(np.zeros((1, 8, 8), np.float32), np.zeros((8, 8)), np.random.default_rng(0))


@settings(max_examples=50, deadline=None)
@given(value=st.floats(-2, 3, allow_nan=False))
def test_check_in_open_range_excludes_both_ends(value: float) -> None:
    if 0 < value < 1:
        assert check_in_open_range("decay", value, 0, 1) == value
    else:
        with pytest.raises(ValueError, match=r"decay: expected a number in \(0, 1\)"):
            check_in_open_range("decay", value, 0, 1)
