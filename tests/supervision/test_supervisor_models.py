"""FeatureSupervisor wraps featsup, smp, MONAI and hand-written encoder-decoders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featsup.losses import FeatureLoss
from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor

smp = pytest.importorskip("segmentation_models_pytorch")
monai_nets = pytest.importorskip("monai.networks.nets")

MONAI_LEVELS = [f"conv_{i}_0" for i in range(1, 5)]


pytestmark = pytest.mark.usefixtures("one_thread")


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class TinyUNet(nn.Module):
    """A user's own U-Net: three encoder levels, tapped by module names."""

    def __init__(self, in_channels: int, classes: int, width: int = 8) -> None:
        super().__init__()
        self.enc1 = block(in_channels, width)
        self.enc2 = block(width, 2 * width)
        self.bottom = block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = block(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        return self.head(self.dec1(torch.cat([self.up1(d2), e1], 1)))


def featsup_pair() -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    widths = (4, 8, 16, 32, 64)
    student = UNetPlusPlus(1, 2, widths=widths)
    return student, UNetPlusPlus(2, 2, widths=widths, skip_connections=False), {}


def smp_pair(arch: str) -> Callable[[], tuple[nn.Module, nn.Module, dict[str, Any]]]:
    def make() -> tuple[nn.Module, nn.Module, dict[str, Any]]:
        cls = getattr(smp, arch)
        student = cls("resnet18", encoder_weights=None, in_channels=1, classes=2)
        teacher = cls("resnet18", encoder_weights=None, in_channels=2, classes=2)
        return student, teacher, {}

    return make


def monai_pair() -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    features = (8, 8, 16, 32, 64, 8)
    net = monai_nets.BasicUNetPlusPlus
    student = net(spatial_dims=2, in_channels=1, out_channels=2, features=features,
                  deep_supervision=True)  # fmt: skip
    teacher = net(spatial_dims=2, in_channels=2, out_channels=2, features=features)
    return student, teacher, {"student_layers": MONAI_LEVELS, "teacher_layers": MONAI_LEVELS}


def custom_pair() -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    teacher = UNetPlusPlus(2, 2, widths=(4, 8, 16, 32), skip_connections=False)
    return TinyUNet(1, 2), teacher, {"student_layers": ["enc2", "bottom"],
                                     "levels": [("enc2", "x1_0"), ("bottom", "x2_0")]}  # fmt: skip


def data() -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[0, 10:40, 12:50] = 1
    target[1, 30:60, 5:30] = 1
    return target[:, None].float() + 0.5 * torch.randn(2, 1, 64, 64), target


def seg(output: Any, target: torch.Tensor) -> torch.Tensor:
    heads = output if isinstance(output, (list, tuple)) else [output]
    return sum(F.cross_entropy(h, target) for h in heads) / len(heads)  # type: ignore[return-value]


@pytest.mark.parametrize(
    "make",
    [featsup_pair, smp_pair("Unet"), smp_pair("UnetPlusPlus"), monai_pair, custom_pair],
    ids=["featsup", "smp-unet", "smp-unetpp", "monai-unetpp", "custom"],
)
def test_wrapped_training_lowers_the_loss(
    make: Callable[[], tuple[nn.Module, nn.Module, dict[str, Any]]],
) -> None:
    student, teacher, kwargs = make()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    sup = FeatureSupervisor(student, teacher, **kwargs)
    optimizer = torch.optim.AdamW(sup.parameters(), lr=3e-3)
    image, target = data()
    totals, features = [], []
    for _ in range(8):
        out = sup(image, target)
        loss = seg(out.output, target) + out.feature_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
        features.append(out.feature_loss.item())
    assert len(out.level_losses) >= 2
    assert totals[-1] < totals[0] and features[-1] < features[0], (totals, features)
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_state[name]), name
    sup.close()
    assert sum(len(m._forward_hooks) for m in student.modules()) == 0


def test_smp_levels_and_encoder_only_teacher() -> None:
    student, teacher, _ = smp_pair("Unet")()
    calls = []
    teacher.decoder.register_forward_hook(lambda *_: calls.append(1))
    sup = FeatureSupervisor(student, teacher, levels="bottleneck")
    assert sup.level_names == ["stage5"]
    out = sup(*data())
    assert out.output.shape == (2, 2, 64, 64) and not calls  # the teacher ran its encoder only
    assert sum(len(m._forward_hooks) for m in student.modules()) == 1  # one hook: the encoder


def test_monai_teacher_stops_after_its_deepest_level() -> None:
    student, teacher, kwargs = monai_pair()
    calls = []
    teacher.upcat_0_4.register_forward_hook(lambda *_: calls.append(1))
    sup = FeatureSupervisor(student, teacher, **kwargs)
    sup(*data())
    assert not calls  # decoder nodes after X(4,0) never run in the teacher


def test_smp_student_with_featsup_teacher_by_pairs() -> None:
    student, _, _ = smp_pair("Unet")()
    teacher = UNetPlusPlus(2, 2, widths=(4, 8, 16, 32, 64), skip_connections=False)
    sup = FeatureSupervisor(student, teacher, levels=[("stage2", "x2_0"), ("stage4", "x4_0")])
    assert [type(a) for a in sup.adapters] == [nn.Conv2d, nn.Conv2d]
    out = sup(*data())
    assert list(out.level_losses) == ["stage2", "stage4"]
    out.feature_loss.backward()
    assert student.encoder.layer3[-1].conv2.weight.grad is not None


def test_3d_monai_with_channel_adapters() -> None:
    net = monai_nets.BasicUNetPlusPlus
    student = net(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4))
    teacher = net(spatial_dims=3, in_channels=2, out_channels=2, features=(4, 6, 8, 8, 8, 4))
    sup = FeatureSupervisor(student, teacher, student_layers=MONAI_LEVELS,
                            teacher_layers=MONAI_LEVELS, probe_size=(32, 32, 32))  # fmt: skip
    assert [type(a).__name__ for a in sup.adapters] == ["Conv3d", "Identity", "Identity", "Conv3d"]
    target = torch.randint(0, 2, (1, 32, 32, 32))
    out = sup(torch.randn(1, 1, 32, 32, 32), target)
    out.feature_loss.backward()
    assert sup.adapters[0].weight.grad is not None


# ---------------------------------------------------------------------- feature_norm="channel"
def featsup_features(teacher: nn.Module, target: torch.Tensor) -> list[torch.Tensor]:
    return teacher.encoder_features(F.one_hot(target, 2).permute(0, 3, 1, 2).float())


def test_channel_norm_changes_the_loss_and_ignores_the_teacher_scale() -> None:
    student, teacher, _ = featsup_pair()
    image, target = data()
    plain = FeatureSupervisor(student, teacher)
    normed = FeatureSupervisor(student, teacher, loss=FeatureLoss(feature_norm="channel"))
    assert "feature_norm='channel'" in repr(normed)
    # teacher maps whose channels vary over space well above the 1e-5 of the denominator
    features = [torch.randn_like(f) for f in featsup_features(teacher, target)]
    scale = torch.rand(1, features[0].shape[1], 1, 1)
    with torch.no_grad():
        assert normed(image, target).feature_loss != plain(image, target).feature_loss
        loss = normed(image, teacher_features=features).feature_loss
        plain_loss = plain(image, teacher_features=features).feature_loss
        for factor, offset in ((10.0, 3.0), (0.1, -1.0)):
            scaled = [factor * f + offset for f in features]
            scaled[0] = scaled[0] * (0.5 + scale)  # and a different scale per channel
            torch.testing.assert_close(
                normed(image, teacher_features=scaled).feature_loss, loss, rtol=1e-3, atol=1e-6
            )
            changed = plain(image, teacher_features=scaled).feature_loss
            assert abs(changed - plain_loss) > 0.1 * plain_loss  # without it, the scale counts


def test_channel_norm_by_hand_and_no_gradient_to_the_teacher_side() -> None:
    student, teacher, _ = featsup_pair()
    sup = FeatureSupervisor(
        student, teacher, loss=FeatureLoss(feature_norm="channel"), levels=["x4_0"]
    )
    image, target = data()
    given = [featsup_features(teacher, target)[-1].clone().requires_grad_(True)]
    out = sup(image, teacher_features=given)
    out.feature_loss.backward()
    assert given[0].grad is None and student.encoder["x4_0"].conv1.conv.weight.grad is not None

    def standardise(x: torch.Tensor) -> torch.Tensor:
        mean, var = x.mean((2, 3), keepdim=True), x.var((2, 3), keepdim=True, unbiased=False)
        return (x - mean) / (var + 1e-5).sqrt()

    sup.student.eval()  # the hand computation runs in eval mode too
    with torch.no_grad():
        out = sup(image, teacher_features=given)
        s = student.encoder_features(image)[-1]
        expected = F.smooth_l1_loss(standardise(s), standardise(given[0]))
    torch.testing.assert_close(out.feature_loss, expected)


def test_feature_norm_is_checked() -> None:
    with pytest.raises(
        ValueError, match=r"feature_norm: expected one of .* did you mean 'channel'"
    ):
        FeatureLoss(feature_norm="channels")  # type: ignore[arg-type]
