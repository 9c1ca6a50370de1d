"""FeatureSupervisor and torch.compile, both ways (CPU, ``backend="aot_eager"``).

A compiled student is tapped on its own modules (hooks registered at construction, before
its first compiled call, and traced into the graph); the supervisor itself can be compiled
too. The in-place check runs on the eager probe, where version counters are visible.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from featsup.losses import FeatureLoss
from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor, segmentation_step

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTHS = (4, 8, 16)


def compiled(model: nn.Module) -> nn.Module:
    return torch.compile(model, backend="aot_eager")  # type: ignore[return-value]


def pair() -> tuple[UNetPlusPlus, UNetPlusPlus]:
    student = UNetPlusPlus(1, 2, widths=WIDTHS)
    return student, UNetPlusPlus(2, 2, widths=WIDTHS, skip_connections=False)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[:, 8:24, 4:20] = 1
    return target[:, None].float() + 0.3 * torch.randn(2, 1, 32, 32), target


def test_a_compiled_student_trains_with_the_feature_loss_and_a_frozen_teacher() -> None:
    student, teacher = pair()
    eager = FeatureSupervisor(copy.deepcopy(student), copy.deepcopy(teacher))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    sup = FeatureSupervisor(compiled(student), teacher)
    assert sup.level_names == ["x1_0", "x2_0"]
    assert sorted(n for n, m in student.named_modules() if m._forward_hooks) == [
        "encoder.x1_0", "encoder.x2_0"]  # fmt: skip
    assert sup.student_state_dict().keys() == student.state_dict().keys()  # no "_orig_mod."
    optimizer = torch.optim.SGD(sup.parameters(), lr=0.1)
    image, target = batch()
    for step in range(2):
        out = sup(image, target)
        if step == 0:  # the compiled graph computes what the eager student computes
            torch.testing.assert_close(out.feature_loss, eager(image, target).feature_loss)
        assert torch.isfinite(out.feature_loss) and out.feature_loss > 0
        optimizer.zero_grad()
        out.feature_loss.backward()
        grad = student.encoder["x1_0"].conv1.conv.weight.grad
        assert grad is not None and grad.abs().sum() > 0
        optimizer.step()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in teacher.parameters())
    sup.close()
    assert not [n for n, m in student.named_modules() if m._forward_hooks]


def test_compiled_student_layers_accept_the_wrapper_prefix() -> None:
    student, teacher = pair()
    sup = FeatureSupervisor(compiled(student), teacher, student_layers=["_orig_mod.encoder.x2_0"],
                            teacher_layers=["encoder.x2_0"])  # fmt: skip
    assert sup.level_names == ["encoder.x2_0"]
    assert torch.isfinite(sup(*batch()).feature_loss)


class _InPlaceAfterTap(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h.relu_()  # changes the tapped output after its hook fired
        return self.head(h)


def test_an_in_place_update_inside_a_compiled_student_is_caught() -> None:
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1))
    with pytest.raises(RuntimeError, match="tap 'conv': expected its output to stay unchanged"):
        FeatureSupervisor(compiled(_InPlaceAfterTap()), teacher, student_layers=["conv"],
                          teacher_layers=["0"], teacher_input=lambda im, _: im)  # fmt: skip


def test_a_compiled_supervisor_steps_and_matches_eager() -> None:
    student, teacher = pair()
    sup = FeatureSupervisor(student, teacher, loss=FeatureLoss(kind="huber", beta=0.5)).eval()
    image, target = batch()
    eager_loss, eager_logs = segmentation_step()(sup, {"image": image, "target": target})
    loss, logs = segmentation_step()(compiled(sup), {"image": image, "target": target})
    loss.backward()
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(logs["feature"], eager_logs["feature"])
    assert student.encoder["x1_0"].conv1.conv.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
