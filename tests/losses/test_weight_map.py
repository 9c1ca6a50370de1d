from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from featsup.losses import boundary_weight_map, dice_loss, weighted_dice_loss

cv2 = pytest.importorskip("cv2")


def brute_force(mask: np.ndarray, w: float, sigma: float, spacing=None) -> np.ndarray:
    """Eq. 9-10 with a pairwise-distance loop; boundary from scipy's erosion."""
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    boundary = mask & ~ndimage.binary_erosion(mask, cross, border_value=1)
    if not boundary.any():
        return np.ones(mask.shape)
    scale = np.ones(mask.ndim) if spacing is None else np.asarray(spacing, float)
    points = np.argwhere(boundary) * scale
    grid = np.indices(mask.shape).reshape(mask.ndim, -1).T * scale
    dist = np.sqrt(((grid[:, None, :] - points[None]) ** 2).sum(-1)).min(1).reshape(mask.shape)
    a = (w * mask + 1) * np.exp(-dist / (2 * sigma**2))
    return (a - a.min()) / (a.max() - a.min())


def random_mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    mask = ndimage.binary_opening(rng.random(shape) > 0.45)
    if not mask.any() or mask.all():
        mask = np.zeros(shape, bool)
        mask[tuple(slice(1, max(s - 1, 2)) for s in shape)] = True
    return mask


@pytest.mark.parametrize("backend", ["opencv", "scipy"])
@pytest.mark.parametrize("seed", range(4))
def test_2d_matches_brute_force(backend, seed):
    rng = np.random.default_rng(seed)
    mask = random_mask(rng, (14, 17))
    expected = brute_force(mask, 0.05, 3.0)
    out = boundary_weight_map(mask, w=0.05, sigma=3.0, backend=backend)
    assert out.dtype == np.float32 and out.shape == mask.shape
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_3d_volume_and_anisotropic_spacing_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    mask = random_mask(rng, (6, 9, 8))
    spacing = (2.5, 0.8, 0.6)
    out = boundary_weight_map(mask, w=0.5, sigma=2.0, spacing=spacing)
    np.testing.assert_allclose(out, brute_force(mask, 0.5, 2.0, spacing), atol=1e-5)
    mask2d = mask[2]
    out2d = boundary_weight_map(mask2d, sigma=2.0, spacing=(0.8, 0.6))
    np.testing.assert_allclose(out2d, brute_force(mask2d, 0.05, 2.0, (0.8, 0.6)), atol=1e-5)


def test_paper_parameters_peak_on_the_boundary():
    mask = np.zeros((64, 64), bool)
    mask[20:44, 16:50] = True
    out = boundary_weight_map(mask)  # w=0.05, sigma=20
    cross = ndimage.generate_binary_structure(2, 1)
    boundary = mask & ~ndimage.binary_erosion(mask, cross, border_value=1)
    assert np.all(out[boundary] == 1.0)
    assert out.min() == 0.0 and out[~boundary].max() < 1.0
    assert out[32, 32] < out[21, 32]  # decays towards the centre


@settings(max_examples=15, deadline=None)
@given(
    depth=st.integers(1, 4),
    height=st.integers(2, 40),
    width=st.integers(2, 40),
    sigma=st.floats(0.5, 30.0),
    pixel=st.floats(0.3, 3.0),
    seed=st.integers(0, 2**16),
)
def test_opencv_and_scipy_agree_slicewise(depth, height, width, sigma, pixel, seed):
    mask = random_mask(np.random.default_rng(seed), (depth, height, width))
    kwargs = {"sigma": sigma, "slicewise": True, "spacing": (5.0, pixel, pixel)}
    a = boundary_weight_map(mask, backend="opencv", **kwargs)
    b = boundary_weight_map(mask, backend="scipy", **kwargs)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0


def test_opencv_and_scipy_agree_on_a_ct_sized_slice():
    yy, xx = np.mgrid[:512, :512]
    mask = ((yy - 250) / 130.0) ** 2 + ((xx - 260) / 170.0) ** 2 < 1
    a = boundary_weight_map(mask, backend="opencv")
    b = boundary_weight_map(mask, backend="scipy")
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_slicewise_equals_per_slice_calls_and_constant_slices_are_ones():
    rng = np.random.default_rng(1)
    volume = random_mask(rng, (4, 12, 10))
    volume[1] = False  # empty slice
    volume[2] = True  # full slice: no boundary either
    out = boundary_weight_map(volume, slicewise=True)
    for i in range(4):
        np.testing.assert_array_equal(out[i], boundary_weight_map(volume[i]))
    assert np.all(out[1] == 1.0) and np.all(out[2] == 1.0)


@pytest.mark.parametrize("backend", ["opencv", "scipy"])
def test_constant_maps_give_ones(backend):
    for mask in (np.zeros((8, 8), bool), np.ones((8, 8), bool)):
        out = boundary_weight_map(mask, backend=backend)
        assert out.dtype == np.float32 and np.all(out == 1.0)
    assert np.all(boundary_weight_map(np.zeros((3, 4, 4)), backend="scipy") == 1.0)


def test_torch_in_torch_out_and_nonbool_masks():
    mask = torch.zeros(2, 10, 10, dtype=torch.long)
    mask[:, 3:7, 2:8] = 2
    out = boundary_weight_map(mask, slicewise=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == mask.shape
    np.testing.assert_array_equal(
        out.numpy(), boundary_weight_map(mask.numpy() > 0, slicewise=True)
    )


def test_image_border_is_not_a_boundary():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # touches the left, top and bottom borders
    out = boundary_weight_map(mask)
    np.testing.assert_array_equal(np.flatnonzero(out[5] == 1.0), [4])


def test_weighted_dice_with_a_weight_map_is_finite_and_differs_from_dice():
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[:, 8:24, 10:26] = 1
    weight = boundary_weight_map(target, slicewise=True)
    logits = torch.randn(2, 1, 32, 32, requires_grad=True)
    loss = weighted_dice_loss(logits, target, weight)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert not torch.allclose(loss, dice_loss(logits, target))


def test_errors():
    mask2d, mask3d = np.zeros((8, 8), bool), np.zeros((3, 8, 8), bool)
    with pytest.raises(ValueError, match="did you mean 'opencv'"):
        boundary_weight_map(mask2d, backend="opencb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2D"):
        boundary_weight_map(np.zeros(5, bool))
    with pytest.raises(ValueError, match="slicewise"):
        boundary_weight_map(mask2d, slicewise=True)
    with pytest.raises(ValueError, match="spacing"):
        boundary_weight_map(mask2d, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        boundary_weight_map(mask3d, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="isotropic"):
        boundary_weight_map(mask2d, spacing=(1.0, 2.0), backend="opencv")
    with pytest.raises(ValueError, match="3D volume"):
        boundary_weight_map(mask3d, backend="opencv")
    with pytest.raises(ValueError, match="sigma"):
        boundary_weight_map(mask2d, sigma=0.0)
    with pytest.raises(TypeError, match="mask"):
        boundary_weight_map([[0, 1]])  # type: ignore[arg-type]
