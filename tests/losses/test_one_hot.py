"""featsup.losses.one_hot: the one one-hot, shared by the losses and the teacher input."""

from __future__ import annotations

import pytest
import torch

from featsup.losses import dice_loss, one_hot


def test_one_hot_label_maps_and_passthrough() -> None:
    target = torch.tensor([[[0, 2], [1, 1]]])
    hot = one_hot(target, 3)
    assert hot.shape == (1, 3, 2, 2) and hot.dtype == torch.float32
    torch.testing.assert_close(hot.argmax(1), target)
    torch.testing.assert_close(one_hot(target[:, None], 3, dtype=torch.float64), hot.double())
    soft = torch.rand(1, 3, 2, 2)
    torch.testing.assert_close(one_hot(soft, 3), soft)
    volume = torch.zeros(2, 1, 4, 4, dtype=torch.long)  # (B, D=1, H, W) label map
    assert one_hot(volume[:, None], 3).shape == (2, 3, 1, 4, 4)
    with pytest.raises(ValueError, match=r"labels in \[0, 3\) for 3 classes"):
        one_hot(target + 1, 3)


def test_one_hot_is_the_teachers_and_the_losses() -> None:
    from featsup.supervision import one_hot as teacher_one_hot

    target = torch.randint(0, 3, (2, 5, 4))
    torch.testing.assert_close(teacher_one_hot(target, 3, dtype=torch.float32), one_hot(target, 3))
    logits = torch.randn(2, 3, 1, 5, 4)  # a depth-1 volume: no spatial axis is squeezed
    labels = target[:, None]
    expected = dice_loss(logits, one_hot(labels[:, None], 3)[:, :, 0][:, :, None])
    torch.testing.assert_close(dice_loss(logits, labels), expected)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\)"):
        teacher_one_hot(target, 2, dtype=torch.float32)


def test_reconstruction_dice_is_the_metrics_hard_dice() -> None:
    from featsup.metrics import dice_score
    from featsup.supervision import reconstruction_dice

    labels = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
    pred = torch.tensor([[[0, 1, 0], [2, 0, 0]]])
    logits = one_hot(pred, 3)
    expected = (dice_score(pred == 1, labels == 1) + dice_score(pred == 2, labels == 2)) / 2
    assert reconstruction_dice(logits, labels, 3) == pytest.approx(expected)
    assert expected == pytest.approx((2 / 3 + 2 / 3) / 2)
    # a class absent from both is skipped, not counted as 1
    assert reconstruction_dice(one_hot(pred, 4), labels, 4) == pytest.approx(expected)
    assert reconstruction_dice(one_hot(torch.zeros_like(labels), 2), labels * 0, 2) == 1.0
