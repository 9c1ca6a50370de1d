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


def test_one_hot_is_the_one_the_teacher_and_the_losses_use() -> None:
    import featsup.supervision.teacher as teacher

    assert teacher.one_hot is one_hot  # the teacher imports the one implementation
    target = torch.randint(0, 3, (2, 5, 4))
    logits = torch.randn(2, 3, 1, 5, 4)  # a depth-1 volume: no spatial axis is squeezed
    labels = target[:, None]
    expected = dice_loss(logits, one_hot(labels[:, None], 3)[:, :, 0][:, :, None])
    torch.testing.assert_close(dice_loss(logits, labels), expected)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\)"):
        one_hot(target, 2, dtype=torch.float32)
