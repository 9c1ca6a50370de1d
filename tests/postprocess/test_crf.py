"""Public API of the dense CRF: shapes, kinds, dtypes, masks, input checks, module."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featsup.postprocess import CRF_PRESETS, DenseCRF, crf_labels, dense_crf

BACKENDS = [
    "torch",
    pytest.param("pydensecrf", marks=pytest.mark.crf),
]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param == "pydensecrf":
        pytest.importorskip("pydensecrf.densecrf")
    return request.param


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_shape_dtype_and_normalisation_2d(blob2d, backend, dtype):
    out = dense_crf(blob2d.probs.astype(dtype), blob2d.image, backend=backend)
    assert isinstance(out, np.ndarray)
    assert out.shape == blob2d.probs.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(
        out.astype(np.float64).sum(0), 1.0, atol=2e-3 if dtype == np.float16 else 1e-5
    )


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_shape_and_normalisation_volume(blob3d, backend, mode):
    out = dense_crf(blob3d.probs, blob3d.image, backend=backend, mode=mode, spacing=(2.0, 1.0, 1.0))
    assert out.shape == blob3d.probs.shape
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    assert not np.allclose(out, blob3d.probs, atol=1e-3)  # it did something


def test_torch_in_torch_out(blob2d):
    probs = torch.from_numpy(blob2d.probs).double()
    out = dense_crf(probs, torch.from_numpy(blob2d.image), backend="torch")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == probs.shape
    expected = dense_crf(blob2d.probs, blob2d.image, backend="torch")
    torch.testing.assert_close(out.float(), torch.from_numpy(expected))


def test_grad_and_byte_order_inputs(blob2d):
    probs = torch.from_numpy(blob2d.probs).requires_grad_()
    out = dense_crf(probs, blob2d.image, backend="torch")
    assert not out.requires_grad
    swapped = blob2d.probs.astype(blob2d.probs.dtype.newbyteorder(">"))
    image = blob2d.image.T.copy().T  # Fortran order
    np.testing.assert_array_equal(
        dense_crf(swapped, image, backend="torch"), out.numpy().astype(swapped.dtype)
    )


def test_iterations_zero_returns_input(blob2d, backend):
    out = dense_crf(blob2d.probs, blob2d.image, iterations=0, backend=backend)
    np.testing.assert_allclose(out, blob2d.probs, atol=2e-5)


def test_labels_are_argmax(blob2d):
    labels = crf_labels(blob2d.probs, blob2d.image, backend="torch")
    refined = dense_crf(blob2d.probs, blob2d.image, backend="torch")
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, refined.argmax(0))
    labels_t = crf_labels(torch.from_numpy(blob2d.probs), blob2d.image, backend="torch")
    assert labels_t.dtype == torch.int64
    np.testing.assert_array_equal(labels_t.numpy(), labels)


def test_mask_limits_the_crf(blob2d, backend):
    mask = np.zeros(blob2d.image.shape, dtype=bool)
    mask[10:40, 12:44] = True
    out = dense_crf(blob2d.probs, blob2d.image, mask=mask, backend=backend)
    np.testing.assert_array_equal(out[:, ~mask], blob2d.probs[:, ~mask])
    assert not np.allclose(out[:, mask], blob2d.probs[:, mask], atol=1e-3)
    # a mask over everything is the same as no mask
    full = dense_crf(blob2d.probs, blob2d.image, mask=np.ones_like(mask), backend=backend)
    plain = dense_crf(blob2d.probs, blob2d.image, backend=backend)
    np.testing.assert_allclose(full, plain, atol=1e-4)


def test_mask_3d_crops_to_the_box_and_empty_mask_is_identity(blob3d, backend):
    # the blob inside a sub-box: a mask that is not a box, with a bounding box inside the
    # volume, so that cropping to the box and masking within it are both exercised
    mask = np.zeros(blob3d.image.shape, dtype=bool)
    mask[2:7, 5:30, 6:35] = blob3d.truth[2:7, 5:30, 6:35]
    box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(mask))
    assert (~mask[box]).sum() > 100 and mask[box].shape != mask.shape
    out = dense_crf(blob3d.probs, blob3d.image, mask=mask, backend=backend)
    np.testing.assert_array_equal(out[:, ~mask], blob3d.probs[:, ~mask])
    assert not np.allclose(out[:, mask], blob3d.probs[:, mask], atol=1e-3)  # it did something
    # the CRF of the volume is the CRF of its crop to the mask's box
    in_box = (slice(None), *box)
    crop = dense_crf(blob3d.probs[in_box], blob3d.image[box], mask=mask[box], backend=backend)
    np.testing.assert_allclose(out[in_box], crop, atol=1e-6)
    # only the masked voxels form the CRF: what lies outside the mask, even in its box,
    # does not change the result inside
    rng = np.random.default_rng(0)
    image, probs = blob3d.image.copy(), blob3d.probs.copy()
    image[~mask] = rng.uniform(0, 255, int((~mask).sum()))
    probs[1, ~mask] = rng.uniform(0, 1, int((~mask).sum()))
    probs[0, ~mask] = 1 - probs[1, ~mask]
    moved = dense_crf(probs, image, mask=mask, backend=backend)
    np.testing.assert_allclose(moved[:, mask], out[:, mask], atol=1e-6)
    empty = dense_crf(blob3d.probs, blob3d.image, mask=np.zeros_like(mask), backend=backend)
    np.testing.assert_array_equal(empty, blob3d.probs)


def test_module_matches_function(blob2d):
    crf = DenseCRF(backend="torch", iterations=3, theta_alpha=8.0)
    assert "iterations=3" in repr(crf)
    out = crf(torch.from_numpy(blob2d.probs), torch.from_numpy(blob2d.image))
    ref = dense_crf(blob2d.probs, blob2d.image, backend="torch", iterations=3, theta_alpha=8.0)
    torch.testing.assert_close(out, torch.from_numpy(ref))


def test_presets_are_accepted(blob2d):
    # the retuned "liver" preset (scripts/tune_crf_presets.py) is no longer dense_crf's
    # defaults, so only acceptance is checked here
    for preset in CRF_PRESETS.values():
        out = dense_crf(blob2d.probs, blob2d.image, backend="torch", **preset)
        assert out.shape == blob2d.probs.shape
        assert set(preset) == {"theta_alpha", "theta_beta", "theta_gamma", "w1", "w2", "iterations"}


@settings(max_examples=15, deadline=None)
@given(
    k=st.integers(2, 4),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    w1=st.floats(0, 20),
    w2=st.floats(0, 20),
)
def test_output_is_a_distribution(k, h, w, seed, w1, w2):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (k, h, w))
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    image = rng.uniform(0, 255, (h, w))
    out = dense_crf(probs, image, backend="torch", w1=w1, w2=w2, iterations=3)
    assert out.shape == probs.shape and np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- input checks

P = np.full((2, 6, 7), 0.5, dtype=np.float32)
IMG = np.zeros((6, 7), dtype=np.float32)


@pytest.mark.parametrize(
    ("probs", "image", "kwargs", "match"),
    [
        (P[0], IMG, {}, r"probs: expected a 3/4D"),
        (P[:1], IMG, {}, r"at least 2 classes"),
        (P.astype(np.int32), IMG, {}, r"dtype float16, float32 or float64"),
        (np.where(P > 0, np.nan, P), IMG, {}, r"finite"),
        (P * 3, IMG, {}, r"in \[0, 1\]"),
        (np.stack([P[0], P[1] * 0.5]), IMG, {}, r"sum to 1"),
        (P, IMG[:, :5], {}, r"image: expected shape \(6, 7\)"),
        (P, np.full((6, 7), np.inf), {}, r"image: expected finite"),
        (P, IMG, {"mask": np.zeros((6, 6), bool)}, r"mask: expected the image's shape"),
        (P, IMG, {"mask": np.full((6, 7), 2)}, r"mask: expected values 0 and 1"),
        (P, IMG, {"mask": np.zeros((6, 7), np.float32)}, r"mask: expected dtype bool"),
        (P, IMG, {"spacing": (1.0, 1.0, 2.0)}, r"spacing: expected 2 values"),
        (P, IMG, {"spacing": (1.0, -1.0)}, r"spacing: expected positive"),
        (P, IMG, {"mode": "3d"}, r"mode: '3d' needs a volume"),
        (P, IMG, {"mode": "3dd"}, r"did you mean '3d'"),
        (P, IMG, {"backend": "pydensecr"}, r"did you mean 'pydensecrf'"),
        (P, IMG, {"theta_alpha": 0.0}, r"theta_alpha: expected a number > 0"),
        (P, IMG, {"w2": -1.0}, r"w2: expected a number >= 0"),
        (P, IMG, {"iterations": -1}, r"iterations: expected an integer >= 0"),
        (P, IMG, {"workers": 0}, r"workers: expected an integer >= 1"),
    ],
)
def test_bad_inputs_raise_value_error(probs, image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dense_crf(probs, image, **{"backend": "torch", **kwargs})


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="probs: expected ndarray or Tensor, got list"):
        dense_crf(P.tolist(), IMG)
    with pytest.raises(TypeError, match="iterations: expected int, got float"):
        dense_crf(P, IMG, iterations=2.0)


def test_float16_tolerance():
    """float16 rounding of a softmax passes; a real deviation of 3 % does not."""
    probs = torch.softmax(torch.randn(3, 8, 8), 0).half()
    dense_crf(probs, torch.zeros(8, 8), backend="torch")
    off = probs.clone()
    off[0] *= 0.9
    with pytest.raises(ValueError, match="sum to 1"):
        dense_crf(off, torch.zeros(8, 8), backend="torch")


def test_missing_pydensecrf_raises_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match=r'pip install "featsup\[crf\]"'):
        dense_crf(P, IMG, backend="pydensecrf")
    out = dense_crf(P, IMG, backend="auto")  # falls back to the torch backend
    assert out.shape == P.shape


@pytest.mark.crf
def test_pydensecrf_backend_is_cpu_only():
    pytest.importorskip("pydensecrf.densecrf")
    with pytest.raises(ValueError, match="runs on the CPU only"):
        dense_crf(P, IMG, backend="pydensecrf", device=torch.device("meta"))


def test_out_refines_in_place_with_the_same_result(blob3d, monkeypatch):
    """Slice batches go from probs to out one by one: in place equals a new array."""
    import featsup.postprocess._crf_run as run

    monkeypatch.setitem(run._BATCH_VOXELS, "cpu", 3 * 40 * 44)  # three slices per batch
    options = {"mode": "2d", "backend": "torch", **CRF_PRESETS["liver"]}
    for mask in (None, blob3d.probs[1] > 0.3):
        probs = blob3d.probs.astype(np.float32)
        expected = dense_crf(probs, blob3d.image, mask=mask, **options)
        refined = dense_crf(probs, blob3d.image, mask=mask, out=probs, **options)
        assert refined is probs
        np.testing.assert_array_equal(refined, expected)
    with pytest.raises(ValueError, match="out: expected float32"):
        dense_crf(blob3d.probs, blob3d.image, out=np.zeros((2, 1, 40, 44), np.float32))
