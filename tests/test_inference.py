from __future__ import annotations

import numpy as np
import pytest
import torch

from featsup.inference import Cascade, predict_volume, select_head, stack_context
from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor


@pytest.fixture
def model() -> UNetPlusPlus:
    net = UNetPlusPlus(1, 2, widths=(4, 8, 16))
    net.train()
    net(torch.randn(4, 1, 32, 32))
    return net.eval()


@pytest.mark.parametrize("head", [1, 2])
def test_predict_volume_equals_softmax_of_head(model: UNetPlusPlus, head: int) -> None:
    volume = np.random.default_rng(0).random((5, 24, 20)).astype(np.float32)
    probs = predict_volume(model, volume, head=head, batch_size=2, device="cpu")
    assert probs.shape == (2, 5, 24, 20) and probs.dtype == np.float32
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(volume)[:, None])[head - 1], 1)
    np.testing.assert_allclose(probs, expected.permute(1, 0, 2, 3).numpy(), atol=1e-5)


def test_predict_volume_resizes_and_mirrors(model: UNetPlusPlus) -> None:
    volume = np.random.default_rng(1).random((3, 40, 40)).astype(np.float32)
    probs = predict_volume(model, volume, size=32, tta=True, device="cpu")
    assert probs.shape == (2, 3, 40, 40)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # mirrored input gives the mirrored prediction when tta averages both
    flipped = predict_volume(model, volume[..., ::-1].copy(), size=32, tta=True, device="cpu")
    np.testing.assert_allclose(flipped[..., ::-1], probs, atol=1e-5)


def test_one_logit_model_gives_two_probabilities() -> None:
    net = UNetPlusPlus(1, 1, widths=(4, 8)).eval()
    probs = predict_volume(net, np.zeros((2, 16, 16), np.float32), device="cpu")
    assert probs.shape == (2, 2, 16, 16)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-6)


def test_select_head_prunes_unetpp_and_unwraps_student(model: UNetPlusPlus) -> None:
    pruned = select_head(model, 1)
    assert isinstance(pruned, UNetPlusPlus) and pruned.depth == 1 and not pruned.training

    teacher = UNetPlusPlus(2, 2, widths=(4, 8, 16), skip_connections=False)
    with FeatureSupervisor(model, teacher) as sup:  # recognised as such, not by a .student
        assert select_head(sup, None).depth == 2


def test_predict_volume_rejects_bad_shapes(model: UNetPlusPlus) -> None:
    with pytest.raises(ValueError, match="volume"):
        predict_volume(model, np.zeros((16, 16), np.float32), device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        predict_volume(model, np.zeros((2, 16, 16), np.float32), batch_size=0, device="cpu")


def test_stack_context_clamps_at_the_ends() -> None:
    volume = np.arange(4)[:, None, None] * np.ones((1, 2, 2))
    stacked = stack_context(volume, 2)
    assert stacked.shape == (4, 5, 2, 2)
    assert stacked[:, :, 0, 0].tolist() == [
        [0, 0, 0, 1, 2],
        [0, 0, 1, 2, 3],
        [0, 1, 2, 3, 3],
        [1, 2, 3, 3, 3],
    ]
    with pytest.raises(ValueError, match="context"):
        stack_context(volume, -1)


class _Oracle(torch.nn.Module):
    """A 'model' whose logits favour class 1 where the input is bright."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        score = 20 * (image[:, :1] - self.threshold)
        return torch.cat([-score, score], dim=1)


def test_cascade_puts_labels_back_on_the_grid() -> None:
    pytest.importorskip("cv2")
    volume = np.full((6, 48, 40), -500, dtype=np.int16)
    volume[1:5, 10:30, 8:32] = 60  # "liver"
    volume[2:4, 15:20, 12:18] = 200  # "tumour" inside it
    volume[0, 40:44, 2:6] = 60  # a stray blob the largest component removes
    liver_model, tumour_model = _Oracle(0.3), _Oracle(0.8)
    cascade = Cascade(liver_model, tumour_model, tumour_size=32, roi_margin=2, device="cpu",
                      preprocess={"use_clahe": False})  # fmt: skip
    result = cascade(volume)
    assert result.labels.shape == volume.shape and result.labels.dtype == np.uint8
    expected = np.zeros(volume.shape, np.uint8)
    expected[1:5, 10:30, 8:32] = 1
    expected[2:4, 15:20, 12:18] = 2
    # resizing the ROI to 32x32 and back moves a boundary by at most a pixel
    assert (result.labels != expected).mean() < 0.02
    assert result.labels[0, 40:44, 2:6].max() == 0
    assert set(result.timings) >= {"preprocess", "liver_model", "tumour_model", "total"}


def test_cascade_without_liver_returns_background() -> None:
    cascade = Cascade(_Oracle(2.0), _Oracle(2.0), tumour_size=16, device="cpu",
                      preprocess={"use_clahe": False})  # fmt: skip
    result = cascade(np.zeros((3, 16, 16), np.int16))
    assert result.labels.max() == 0 and result.roi is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_volume_and_cascade_on_cuda_match_cpu(model: UNetPlusPlus) -> None:
    volume = np.random.default_rng(2).random((6, 32, 32)).astype(np.float32)
    cpu = predict_volume(model, volume, head=2, batch_size=4, device="cpu")
    gpu = predict_volume(model, volume, head=2, batch_size=4, device="cuda")
    np.testing.assert_allclose(gpu, cpu, atol=2e-3)  # cuDNN may use TF32
    hu = np.random.default_rng(3).integers(-200, 300, (4, 48, 48)).astype(np.int16)
    options = {"liver_size": 32, "tumour_size": 32, "liver_crf": {"backend": "torch"}}
    on_cpu = Cascade(model, model, device="cpu", **options)(hu)
    on_gpu = Cascade(model, model, device="cuda", **options)(hu)
    assert on_gpu.labels.shape == (4, 48, 48)
    assert np.mean(on_gpu.labels != on_cpu.labels) < 0.01
