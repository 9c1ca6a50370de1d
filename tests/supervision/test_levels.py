"""Encoder levels found by architecture, measured by a probe and paired by reduction.

Every student below is wrapped in one line, ``FeatureSupervisor(student, teacher)`` with
the defaults (``levels="all"``), against featsup's encoding UNet++ of depth 4 (reductions
2..16, the issue's setting) in 2D and a MONAI ``BasicUNet`` teacher in 3D, and trains 20
steps. smp decoders are built narrow (their encoders, which hold the levels, are the
real ones) and SGD replaces AdamW (whose update of resnet18's 11 M parameters is most of
a CPU step), so that the file stays within about two minutes on two busy cores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor, encoder_levels, matching_teacher

smp = pytest.importorskip("segmentation_models_pytorch")
monai_nets = pytest.importorskip("monai.networks.nets")

pytestmark = pytest.mark.usefixtures("one_thread")

TEACHER_WIDTHS = (4, 8, 16, 32, 64)  # depth 4: x1_0 .. x4_0 at 1/2 .. 1/16
NARROW = {
    "Unet": {"decoder_channels": (32, 16, 16, 8, 8)},
    "UnetPlusPlus": {"decoder_channels": (32, 16, 16, 8, 8)},
    "FPN": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    "DeepLabV3Plus": {"decoder_channels": 32},
}
X = [f"x{i}_0" for i in range(1, 5)]
STAGES_1_4 = list(zip([f"stage{i}" for i in range(1, 5)], X, strict=True))
DILATED = [("stage1", "x1_0"), ("stage2", "x2_0"), ("stage3", "x3_0"), ("stage5", "x4_0")]
MIT = [("stage2", "x2_0"), ("stage3", "x3_0"), ("stage4", "x4_0")]
MIT_DILATED = [("stage2", "x2_0"), ("stage3", "x3_0"), ("stage5", "x4_0")]


def smp_student(arch: str, encoder: str) -> nn.Module:
    try:
        return getattr(smp, arch)(
            encoder, encoder_weights=None, in_channels=1, classes=2, **NARROW[arch]
        )
    except ValueError as error:  # a decoder that rejects the encoder
        pytest.skip(f"smp cannot build {arch} with {encoder}: {error}")


def featsup_teacher() -> nn.Module:
    return UNetPlusPlus(2, 2, widths=TEACHER_WIDTHS, skip_connections=False)


SMP_EXPECTED = {
    ("Unet", "resnet18"): STAGES_1_4,
    ("Unet", "efficientnet-b0"): STAGES_1_4,
    ("Unet", "mit_b0"): MIT,
    ("FPN", "resnet18"): STAGES_1_4,
    ("FPN", "efficientnet-b0"): STAGES_1_4,
    ("FPN", "mit_b0"): MIT,
    ("DeepLabV3Plus", "resnet18"): DILATED,  # output stride 16: stage4 and stage5 at 1/16
    ("DeepLabV3Plus", "efficientnet-b0"): DILATED,
    ("DeepLabV3Plus", "mit_b0"): MIT_DILATED,
    ("UnetPlusPlus", "resnet18"): STAGES_1_4,
    ("UnetPlusPlus", "efficientnet-b0"): STAGES_1_4,
    ("UnetPlusPlus", "mit_b0"): MIT,  # skipped: smp rejects it
}


def monai_2d(name: str) -> nn.Module:
    common = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}
    if name == "UNet":
        return monai_nets.UNet(**common, channels=(8, 16, 32, 64, 128), strides=(2, 2, 2, 2))
    if name == "BasicUNet":
        return monai_nets.BasicUNet(**common, features=(8, 8, 16, 32, 64, 8))
    if name == "BasicUNetPlusPlus":
        return monai_nets.BasicUNetPlusPlus(**common, features=(8, 8, 16, 32, 64, 8))
    if name == "DynUNet":
        return monai_nets.DynUNet(**common, kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2],
                                  upsample_kernel_size=[2] * 4,
                                  filters=[8, 16, 32, 64, 128])  # fmt: skip
    return monai_nets.SegResNet(**common, init_filters=8)


DYN_LEVELS = ["downsamples.0", "downsamples.1", "downsamples.2", "bottleneck"]
MONAI_EXPECTED = {
    "UNet": list(zip(["down_1", "down_2", "down_3", "bottom"], X, strict=True)),  # down_4 at 1/16
    "BasicUNet": list(zip([f"down_{i}" for i in range(1, 5)], X, strict=True)),
    "BasicUNetPlusPlus": list(zip([f"conv_{i}_0" for i in range(1, 5)], X, strict=True)),
    "DynUNet": list(zip(DYN_LEVELS, X, strict=True)),
    "SegResNet": list(zip([f"down_layers.{i}" for i in range(1, 4)], X[:3], strict=True)),
}
Case = Callable[[], tuple[nn.Module, nn.Module, tuple[int, ...]]]


def smp_case(arch: str, encoder: str) -> Any:
    def make() -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
        return smp_student(arch, encoder), featsup_teacher(), (2, 64, 64)

    marks = [pytest.mark.slow] if encoder == "resnet18" else []
    expected = SMP_EXPECTED[arch, encoder]
    return pytest.param(make, expected, id=f"smp-{arch}-{encoder}", marks=marks)


def monai_case(name: str) -> Any:
    def make() -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
        return monai_2d(name), featsup_teacher(), (2, 64, 64)

    return pytest.param(make, MONAI_EXPECTED[name], id=f"monai-{name}")


def monai_3d() -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    student = monai_nets.UNet(spatial_dims=3, in_channels=1, out_channels=2,
                              channels=(4, 8, 16, 32), strides=(2, 2, 2))  # fmt: skip
    teacher = monai_nets.BasicUNet(spatial_dims=3, in_channels=2, out_channels=2,
                                   features=(4, 4, 8, 8, 16, 4))  # fmt: skip
    return student, teacher, (2, 32, 32, 32)


def featsup_student() -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    return UNetPlusPlus(1, 2, widths=(4, 8, 16, 32, 64)), featsup_teacher(), (2, 64, 64)


UNET_3D = [("down_1", "down_1"), ("down_2", "down_2"), ("bottom", "down_3")]  # down_3 at 1/8
CASES = [
    *(smp_case(arch, enc) for arch, enc in SMP_EXPECTED),
    *(monai_case(name) for name in MONAI_EXPECTED),
    pytest.param(monai_3d, UNET_3D, id="monai-UNet-3d"),
    pytest.param(featsup_student, list(zip(X, X, strict=True)), id="featsup-unetpp"),
]


def data(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    target = torch.zeros(shape, dtype=torch.long)
    target[(slice(0, 1), *[slice(s // 8, s // 2) for s in shape[1:]])] = 1
    target[(slice(1, 2), *[slice(s // 3, 7 * s // 8) for s in shape[1:]])] = 1
    image = target[:, None].float() + 0.5 * torch.randn(shape[0], 1, *shape[1:], generator=gen)
    return image, target


def seg(output: Any, target: torch.Tensor) -> torch.Tensor:
    if isinstance(output, torch.Tensor) and output.ndim == target.ndim + 2:  # DynUNet heads
        output = list(output.unbind(1))
    heads = output if isinstance(output, (list, tuple)) else [output]
    return sum(F.cross_entropy(h, target) for h in heads) / len(heads)  # type: ignore[return-value]


# ---------------------------------------------------------------------- one line, 20 steps
@pytest.mark.parametrize(("make", "expected"), CASES)
def test_one_line_wrap_pairs_by_reduction_and_trains(
    make: Case, expected: list[tuple[str, str]]
) -> None:
    student, teacher, shape = make()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    sup = FeatureSupervisor(student, teacher, probe_size=shape[1:])
    assert list(zip(sup.level_names, sup.teacher_level_names, strict=True)) == expected
    optimizer = torch.optim.SGD(sup.parameters(), lr=0.02, momentum=0.9)
    image, target = data(shape)
    features = []
    for _ in range(20):
        out = sup(image, target)
        loss = seg(out.output, target) + out.feature_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        features.append(out.feature_loss.item())
    assert features[-1] < features[0] and sum(features[-5:]) < sum(features[:5]), features
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    sup.close()
    assert sum(len(m._forward_hooks) for m in student.modules()) == 0


# ---------------------------------------------------------------------- level metadata
def test_smp_levels_channels_and_reductions() -> None:
    levels = encoder_levels(smp_student("Unet", "resnet18"))
    assert [lv.name for lv in levels] == [f"stage{i}" for i in range(1, 6)]
    assert [lv.channels for lv in levels] == [64, 64, 128, 256, 512]
    assert [lv.reduction for lv in levels] == [(2, 2), (4, 4), (8, 8), (16, 16), (32, 32)]
    assert levels[0].module == "encoder" and levels[0].index == 1
    dilated = encoder_levels(smp_student("DeepLabV3Plus", "resnet18"))
    assert [lv.reduction[0] for lv in dilated] == [2, 4, 8, 16, 16]  # measured, not declared
    mit = encoder_levels(smp_student("Unet", "mit_b0"))  # stage1 is empty in mit encoders
    assert [(lv.name, lv.channels, lv.reduction[0]) for lv in mit] == [
        ("stage2", 32, 4), ("stage3", 64, 8), ("stage4", 160, 16), ("stage5", 256, 32)]  # fmt: skip


def test_monai_levels_in_3d_and_anisotropic() -> None:
    unet = monai_nets.UNet(spatial_dims=3, in_channels=1, out_channels=2,
                           channels=(4, 8, 16), strides=(2, 2))  # fmt: skip
    levels = encoder_levels(unet, probe_size=16)
    assert [(lv.name, lv.module, lv.reduction) for lv in levels] == [
        ("down_1", "model.0", (2, 2, 2)),
        ("down_2", "model.1.submodule.0", (4, 4, 4)),
        ("bottom", "model.1.submodule.1.submodule", (4, 4, 4)),
    ]
    dyn = monai_nets.DynUNet(spatial_dims=2, in_channels=1, out_channels=2, kernel_size=[3] * 3,
                             strides=[1, (2, 1), 2], upsample_kernel_size=[(2, 1), 2])  # fmt: skip
    levels = encoder_levels(dyn, probe_size=16)  # input_block at full resolution is left out
    assert [(lv.name, lv.reduction) for lv in levels] == [
        ("downsamples.0", (2, 1)), ("bottleneck", (4, 2))]  # fmt: skip


# ---------------------------------------------------------------------- pairing
def test_bottleneck_pairs_the_deepest_shared_reduction() -> None:
    sup = FeatureSupervisor(smp_student("FPN", "mit_b0"), featsup_teacher(), levels="bottleneck")
    assert (sup.level_names, sup.teacher_level_names) == (["stage4"], ["x4_0"])


def test_pairs_are_logged_once_and_shown_in_repr(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="featsup.supervision"):
        sup = FeatureSupervisor(smp_student("Unet", "mit_b0"), featsup_teacher())
    lines = [r.getMessage() for r in caplog.records if r.name == "featsup.supervision.supervisor"]
    expected = (
        "paired [stage2->x2_0 (1/4), stage3->x3_0 (1/8), stage4->x4_0 (1/16)], "
        "left out student ['stage5'] and teacher ['x1_0']"
    )
    assert lines == [f"FeatureSupervisor: {expected}"]
    assert expected in repr(sup)
    assert [lv.name for lv in sup.student_levels] == ["stage2", "stage3", "stage4", "stage5"]


def test_no_shared_reduction_raises_with_both_lists() -> None:
    student = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(ValueError, match=r"equal reduction, got student \['1/1'\] and teacher"):
        FeatureSupervisor(student, featsup_teacher(), student_layers=["1"])


def test_explicit_pairs_override_the_reductions() -> None:
    sup = FeatureSupervisor(smp_student("Unet", "mit_b0"), featsup_teacher(),
                            levels=[("stage5", "x4_0")])  # fmt: skip
    assert (sup.level_names, sup.teacher_level_names) == (["stage5"], ["x4_0"])
    out = sup(*data((2, 64, 64)))  # the student map (1/32) is resized to the teacher's (1/16)
    assert out.level_losses["stage5"].ndim == 0


# ---------------------------------------------------------------------- matching teacher
@pytest.mark.filterwarnings("ignore:encoding teacher")
def test_matching_teacher_has_the_students_reductions_and_widths() -> None:
    student = smp_student("Unet", "efficientnet-b0")
    _, target = data((2, 64, 64))
    teacher = matching_teacher(student, target, num_classes=2, steps=2, batch_size=2,
                               progress=False)  # fmt: skip
    assert teacher.widths == (32, 32, 24, 40, 112, 320) and not teacher.skip_connections
    assert not teacher.training
    sup = FeatureSupervisor(student, teacher)
    assert sup.level_names == [f"stage{i}" for i in range(1, 6)]
    assert all(isinstance(a, nn.Identity) for a in sup.adapters)  # equal widths: no adapter


@pytest.mark.filterwarnings("ignore:encoding teacher")
def test_matching_teacher_with_narrow_widths_gets_adapters() -> None:
    student = smp_student("Unet", "mit_b0")
    _, target = data((2, 64, 64))
    teacher = matching_teacher(student, target, num_classes=2, widths=(4, 4, 8, 8, 16, 16),
                               steps=2, batch_size=2, progress=False)  # fmt: skip
    sup = FeatureSupervisor(student, teacher)
    assert sup.teacher_level_names == ["x2_0", "x3_0", "x4_0", "x5_0"]
    assert [a.out_channels for a in sup.adapters] == [8, 8, 16, 16]  # type: ignore[union-attr]


def test_matching_teacher_rejects_wrong_widths_and_2d_labels_for_3d() -> None:
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    with pytest.raises(ValueError, match=r"widths: expected 6 widths .* got 5"):
        matching_teacher(smp_student("Unet", "resnet18"), labels, num_classes=2,
                         widths=TEACHER_WIDTHS)  # fmt: skip
    student_3d = monai_3d()[0]
    with pytest.raises(ValueError, match=r"label maps \(N, D, H, W\) for spatial_dims=3"):
        matching_teacher(student_3d, labels, num_classes=2, probe_size=32)


def test_same_family_depth_mismatch_pairs_by_reduction() -> None:
    student = UNetPlusPlus(1, 2, widths=(4, 8, 16, 32, 64, 64))  # x1_0..x5_0: 1/2..1/32
    sup = FeatureSupervisor(student, featsup_teacher())  # the teacher stops at 1/16
    assert sup.level_names == ["x1_0", "x2_0", "x3_0", "x4_0"]
    assert sup.teacher_level_names == ["x1_0", "x2_0", "x3_0", "x4_0"]
    assert "left out student ['x5_0']" in repr(sup)
    sup.close()
    assert sum(len(m._forward_hooks) for m in student.modules()) == 0
