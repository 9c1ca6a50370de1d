from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from featsup.inference import predict_patches, prepare_model
from featsup.inference.patches import gaussian_weights, patch_starts

PATCH = (8, 16, 16)


def _pointwise(classes: int = 3) -> nn.Module:
    return nn.Conv3d(1, classes, 1)


def _conv_net() -> nn.Module:
    """Spatial support 5x5x5 with zero padding: windows see their borders."""
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 3, padding=1)
    ).eval()


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv3d(1, 2, 1), nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.a(x), self.b(x)]


def _whole(net: nn.Module, volume: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(volume[None, None]), 1)[0].numpy()


@pytest.mark.parametrize("shape", [(24, 48, 40), (11, 37, 29), (5, 10, 12), (8, 16, 16)])
def test_pointwise_model_equals_whole_volume_prediction(shape: tuple[int, ...]) -> None:
    net, volume = _pointwise(), torch.randn(shape)
    probs = predict_patches(net, volume.numpy(), patch=PATCH, batch_size=3, device="cpu")
    assert probs.shape == (3, *shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, _whole(net, volume), atol=1e-5)


@pytest.mark.parametrize("shape", [(24, 48, 40), (6, 48, 40), (8, 16, 16)])
def test_matches_monai_gaussian_sliding_window(shape: tuple[int, ...]) -> None:
    """Same windows (the step divides size - patch, or one window): equal to 1e-5."""
    inferers = pytest.importorskip("monai.inferers")
    net, volume = _conv_net(), torch.randn(shape)
    ours = predict_patches(net, volume, patch=PATCH, overlap=0.5, batch_size=4, device="cpu")
    with torch.no_grad():
        theirs = inferers.sliding_window_inference(
            volume[None, None],
            PATCH,
            4,
            lambda x: torch.softmax(net(x), 1),
            overlap=0.5,
            mode="gaussian",
            sigma_scale=0.125,
        )
    np.testing.assert_allclose(ours, theirs[0].numpy(), atol=1e-5)
    if shape != PATCH:  # several windows: their borders matter for this model
        assert not np.allclose(ours, _whole(net, volume), atol=1e-3)


def test_differs_from_monai_only_where_window_positions_differ() -> None:
    """Size 45 along H: MONAI starts at 0, 8, 16, 24, 29; featsup spreads 0, 7, 14, 22, 29."""
    inferers = pytest.importorskip("monai.inferers")
    net, volume = _conv_net(), torch.randn(24, 45, 40)
    ours = predict_patches(net, volume, patch=PATCH, device="cpu")
    with torch.no_grad():
        theirs = inferers.sliding_window_inference(
            volume[None, None], PATCH, 4, lambda x: torch.softmax(net(x), 1), 0.5, mode="gaussian"
        )[0].numpy()
    assert patch_starts(45, 16, 0.5) == [0, 7, 14, 22, 29]
    gap = np.abs(ours - theirs).max(axis=(0, 1, 3))  # per row
    assert gap[:7].max() < 1e-5 and gap[-5:].max() < 1e-5  # one H window there in both
    assert 1e-4 < gap.max() < 0.2  # elsewhere close, not equal


@pytest.mark.parametrize("patch", [(8, 16, 16), (7, 9, 4), (1, 5, 2)])
@pytest.mark.parametrize("sigma_scale", [0.125, 0.3])
def test_gaussian_weights_equal_monai_importance_map(patch: tuple, sigma_scale: float) -> None:
    utils = pytest.importorskip("monai.data.utils")
    expected = utils.compute_importance_map(patch, mode="gaussian", sigma_scale=sigma_scale)
    torch.testing.assert_close(gaussian_weights(patch, sigma_scale=sigma_scale), expected)


@pytest.mark.parametrize(
    ("size", "patch", "overlap"), [(64, 32, 0.5), (70, 32, 0.5), (33, 32, 0.9), (100, 7, 0.0)]
)
def test_patch_starts_cover_evenly(size: int, patch: int, overlap: float) -> None:
    starts = patch_starts(size, patch, overlap)
    steps = np.diff(starts)
    assert starts[0] == 0 and starts[-1] == size - patch
    assert (steps >= 1).all() and steps.max() <= max(int(patch * (1 - overlap)), 1)
    assert steps.max() - steps.min() <= 1  # evenly spread


def test_head_picks_from_a_list_and_batch_size_does_not_matter() -> None:
    net, volume = _TwoHeads().eval(), torch.randn(10, 20, 18)
    first = predict_patches(net, volume, patch=PATCH, head=1, device="cpu")
    np.testing.assert_allclose(first, _whole(net.a, volume), atol=1e-5)
    last = predict_patches(net, volume, patch=PATCH, batch_size=1, device="cpu")
    again = predict_patches(net, volume, patch=PATCH, head=2, batch_size=7, device="cpu")
    np.testing.assert_allclose(last, again, atol=1e-6)


def test_one_logit_model_gives_two_probabilities_and_prepared_models_work() -> None:
    net = prepare_model(nn.Conv3d(2, 1, 3, padding=1), device="cpu")
    probs = predict_patches(net, torch.rand(2, 9, 17, 16).numpy(), patch=PATCH, device="cpu")
    assert probs.shape == (2, 9, 17, 16)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("volume", "kwargs", "match"),
    [
        (np.zeros((16, 16)), {}, "volume: expected a 3/4D"),
        (np.zeros((8, 16, 16)), {"patch": (16, 16)}, "patch: expected 3 ints"),
        (np.zeros((8, 16, 16)), {"patch": (8, 0, 16)}, "patch: expected 3 ints"),
        (np.zeros((8, 16, 16)), {"overlap": 1.0}, "overlap"),
        (np.zeros((8, 16, 16)), {"sigma_scale": 0.0}, "sigma_scale"),
        (np.zeros((8, 16, 16)), {"batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_arguments_raise(volume: np.ndarray, kwargs: dict, match: str) -> None:
    options = {"patch": PATCH, "device": "cpu", **kwargs}
    with pytest.raises(ValueError, match=match):
        predict_patches(_pointwise(), volume, **options)


def test_a_model_that_changes_the_window_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="window size"):
        predict_patches(nn.Conv3d(1, 2, 2, stride=2), np.zeros((8, 16, 16)), patch=PATCH)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_accumulation_equals_cpu_and_leaves_the_volume_on_the_cpu() -> None:
    net, volume = _conv_net(), torch.randn(20, 45, 40)
    cpu = predict_patches(net, volume, patch=PATCH, device="cpu")
    gpu = predict_patches(net, volume, patch=PATCH, device="cuda")
    assert volume.device.type == "cpu"
    np.testing.assert_allclose(gpu, cpu, atol=2e-3)  # cuDNN may convolve in TF32
