"""dice_per_head: global Dice of every head, through a supervisor's student."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _trainer_toys import Blobs
from torch import nn

from featsup.models import UNetPlusPlus
from featsup.training import dice_per_head


class FixedHeads(nn.Module):
    """Returns given logits per head, ignoring its input."""

    def __init__(self, heads: list[torch.Tensor]) -> None:
        super().__init__()
        self.heads = heads
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        return [h[self.calls - 1] for h in self.heads]


def test_dice_per_head_is_global_over_the_loader() -> None:
    target = torch.tensor([[[0, 1, 1, 0]], [[1, 1, 0, 0]]])  # 2 batches of (1, 1, 4)
    pred = torch.tensor([[[0, 1, 0, 0]], [[1, 1, 1, 1]]])
    # head 1 predicts `pred`, head 2 predicts the target exactly
    logits_1 = F.one_hot(pred, 2).permute(0, 3, 1, 2).float()[:, None]
    logits_2 = F.one_hot(target, 2).permute(0, 3, 1, 2).float()[:, None]
    model = FixedHeads([logits_1, logits_2])
    loader = [{"image": torch.zeros(1, 1, 1, 4), "target": target[k : k + 1]} for k in range(2)]
    dice = dice_per_head(model, loader, num_classes=2)
    # global: intersection 1 + 2 = 3, |P| = 1 + 4 = 5, |T| = 2 + 2 = 4 -> 6 / 9
    assert dice == pytest.approx({"dice_x0_1": 6 / 9, "dice_x0_2": 1.0})


def test_dice_per_head_of_3d_logits_with_class_index_targets() -> None:
    """(B, D, H, W) class indices have the rank of 2D one-hot targets: not argmaxed."""
    target = torch.tensor([[[[0, 1], [1, 0]], [[0, 0], [1, 1]]]])  # (1, D=2, 2, 2)
    pred = torch.tensor([[[[0, 1], [0, 0]], [[0, 0], [1, 1]]]])
    logits = F.one_hot(pred, 2).permute(0, 4, 1, 2, 3).float()  # (1, 2, 2, 2, 2)
    model = FixedHeads([logits[None], F.one_hot(target, 2).permute(0, 4, 1, 2, 3).float()[None]])
    loader = [{"image": torch.zeros(1, 1, 2, 2, 2), "target": target}]
    dice = dice_per_head(model, loader, num_classes=2)
    # intersection 3, |P| = 3, |T| = 4 -> 6 / 7; the exact head scores 1
    assert dice == pytest.approx({"dice_x0_1": 6 / 7, "dice_x0_2": 1.0})


def test_dice_per_head_scores_every_head_of_the_student() -> None:
    student = UNetPlusPlus(1, 2, widths=(4, 8, 8), deep_supervision=False).train()

    from featsup.supervision import FeatureSupervisor

    teacher = UNetPlusPlus(2, 2, widths=(4, 8, 8), skip_connections=False)
    supervised = FeatureSupervisor(student, teacher, label_classes=2)

    data = Blobs(n=3)
    loader = [{"image": data.images, "target": (data.images[:, 0] > 0.3).long()}]
    dice = dice_per_head(supervised, loader, num_classes=2, head_names=["a", "b"])
    assert sorted(dice) == ["dice_a", "dice_b"]
    assert all(0.0 <= v <= 1.0 for v in dice.values())
    assert student.training and student.deep_supervision is False  # restored
    with pytest.raises(ValueError, match="head_names"):
        dice_per_head(student, loader, num_classes=2, head_names=["a"])
    with pytest.raises(ValueError, match="num_classes"):
        dice_per_head(student, loader, num_classes=1)
