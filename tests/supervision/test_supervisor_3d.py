"""3D teachers and 3D feature supervision: label volumes in, volumetric students wrapped.

One 3D encoding teacher (widths (4, 8, 16): levels at 1/2 and 1/4) is trained on 16^3
label volumes holding one ball each (held-out Dice 0.85: so small a teacher plateaus
near 0.9 on unseen balls) for the module and serves every student: featsup's 3D UNet++, and MONAI's
``BasicUNetPlusPlus`` and ``UNet`` with ``spatial_dims=3``. Each student trains a few
steps; its feature loss must go down while the teacher stays bitwise unchanged.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from featsup.models import UNetPlusPlus
from featsup.supervision import (
    FeatureSupervisor,
    matching_teacher,
    reconstruction_dice,
    train_encoding_teacher,
)
from featsup.supervision._label_crops import _crop_size, _sample_batch, label_tensor
from featsup.supervision.variants import build_variant, segmentation_step
from featsup.training import load_checkpoint, load_model

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTHS = (4, 8, 16)


def balls(n: int, size: tuple[int, int, int] = (16, 16, 16), seed: int = 1) -> torch.Tensor:
    """(n, D, H, W) binary label volumes: one ball of radius 4 to 6 each."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in size], indexing="ij"))
    labels = torch.zeros(n, *size, dtype=torch.long)
    for i in range(n):
        centre = [int(torch.randint(s // 4, s - s // 4, (), generator=gen)) for s in size]
        radius = float(torch.randint(4, 7, (), generator=gen))
        distance = ((grid - torch.tensor(centre)[:, None, None, None]) ** 2).sum(0).sqrt()
        labels[i][distance <= radius] = 1
    return labels


def image_of(target: torch.Tensor) -> torch.Tensor:
    return target[:, None].float() + 0.3 * torch.randn(len(target), 1, *target.shape[1:])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {f"param {n}": p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"buffer {n}": b.clone() for n, b in model.named_buffers()})
    return state


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert snapshot(model).keys() == before.keys()
    for name, value in snapshot(model).items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[UNetPlusPlus, Path]:
    path = tmp_path_factory.mktemp("teacher3d") / "teacher.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reaching the threshold must not warn
        teacher = train_encoding_teacher(
            balls(24), val_labels=balls(4, seed=7), num_classes=2, widths=WIDTHS, steps=200,
            batch_size=4, lr=3e-2, eval_every=10, dice_threshold=0.85, path=path,
            progress=False,
        )  # fmt: skip
    return teacher, path


def train(sup: FeatureSupervisor, image: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Six AdamW steps on Seg (CE) + feature loss; the feature loss of each step."""
    optimizer = torch.optim.AdamW(sup.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        out = sup(image, target)
        heads = out.output if isinstance(out.output, list) else [out.output]
        seg = sum(F.cross_entropy(h, target) for h in heads) / len(heads)
        optimizer.zero_grad()
        (seg + out.feature_loss).backward()
        optimizer.step()
        losses.append(out.feature_loss.item())
    return losses


# ---------------------------------------------------------------------- the 3D teacher
def test_3d_teacher_reconstructs_label_volumes_and_round_trips(
    trained: tuple[UNetPlusPlus, Path],
) -> None:
    teacher, path = trained
    assert teacher.spatial_dims == 3 and not teacher.skip_connections and not teacher.training
    report = teacher.training_report
    assert report["reached_threshold"] and report["dice"] >= 0.85 and report["steps"] < 200
    assert report["held_out_maps"] == 4
    held_out = balls(4, seed=7)  # volumes never trained on
    logits = teacher(F.one_hot(held_out, 2).movedim(-1, 1).float())[-1]
    assert logits.shape == (4, 2, 16, 16, 16)
    assert reconstruction_dice(logits, held_out, 2) == pytest.approx(report["dice"], abs=1e-3)
    assert all(p.grad is None for p in teacher.parameters())  # no stale training gradients
    loaded = load_model(path)
    assert isinstance(loaded, UNetPlusPlus) and loaded.config == teacher.config
    assert loaded.config["spatial_dims"] == 3
    assert_unchanged(loaded, snapshot(teacher))
    assert load_checkpoint(path)["report"] == report


def test_3d_crops_are_foreground_centred_volumes() -> None:
    labels = balls(6, size=(16, 32, 32))
    size = _crop_size((8, 16, 16), labels.shape, (2, 4, 4))
    assert size == (8, 16, 16)
    assert _crop_size(12, labels.shape, (2, 8, 8)) == (12, 8, 8)  # each axis rounded down
    assert _crop_size(64, labels.shape, 4) is None  # larger than the volumes: whole
    gen = torch.Generator().manual_seed(0)
    always = _sample_batch(labels, 32, size, 1.0, gen)
    assert always.shape == (32, 8, 16, 16) and all(c.any() for c in always)
    with pytest.raises(ValueError, match=r"crop: expected an int or 3 sizes"):
        _crop_size((8, 8), labels.shape, 2)


class Patches(Dataset[dict[str, Any]]):
    """Items shaped like featsup's 3D patch datasets: {"image", "target", ...}."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": image_of(self.labels[i : i + 1])[0], "target": self.labels[i]}


def test_label_volumes_from_tensors_and_patch_datasets() -> None:
    volumes = balls(3, size=(4, 8, 8)) * 2  # classes 0 and 2 of 3
    assert label_tensor(volumes, None, 3).shape == (3, 4, 8, 8)  # rank 4: volumes
    assert label_tensor(volumes[:, None], 3, 3).shape == (3, 4, 8, 8)  # a channel of 1
    assert label_tensor(volumes[:, :1], None, 3).shape == (3, 8, 8)  # (N, 1, H, W): maps
    torch.testing.assert_close(label_tensor(Patches(volumes), None, 3), volumes)
    one_hot_maps = F.one_hot(volumes[:, 0], 3).movedim(-1, 1)  # (N, 3, H, W) integers
    with pytest.raises(ValueError, match="one-hot maps"):
        label_tensor(one_hot_maps, None, 3)
    assert label_tensor(one_hot_maps, 3, 3).shape == (3, 3, 8, 8)  # explicitly volumes
    with pytest.raises(ValueError, match=r"\(N, H, W\) for spatial_dims=2"):
        label_tensor(volumes, 2, 3)
    with pytest.raises(ValueError, match="pooling: expected None for 2D label maps"):
        train_encoding_teacher(volumes[:, 0], num_classes=3, pooling=[[2, 2, 2]], steps=1)


def test_3d_teacher_trains_on_a_patch_dataset_with_anisotropic_pooling() -> None:
    pooling = [[1, 2, 2], [2, 2, 2]]
    with pytest.warns(UserWarning, match="step limit reached"):
        teacher = train_encoding_teacher(
            Patches(balls(4, size=(8, 16, 16))), num_classes=2, widths=WIDTHS, steps=2,
            batch_size=2, crop=(4, 8, 8), pooling=pooling, dice_threshold=1.0, progress=False,
        )  # fmt: skip
    assert teacher.spatial_dims == 3 and teacher.config["pooling"] == pooling


# ---------------------------------------------------------------------- 3D students
def test_featsup_3d_student_learns_while_the_teacher_stays_bitwise_unchanged(
    trained: tuple[UNetPlusPlus, Path],
) -> None:
    teacher, _ = trained
    before = snapshot(teacher)
    student = UNetPlusPlus(1, 2, widths=WIDTHS, spatial_dims=3, deep_supervision=True)
    with FeatureSupervisor(student, teacher, probe_size=16) as sup:
        assert sup.level_names == ["x1_0", "x2_0"] == sup.teacher_level_names
        assert all(isinstance(a, nn.Identity) for a in sup.adapters)
        target = balls(2, seed=3)
        losses = train(sup.train(), image_of(target), target)
    assert losses[-1] < losses[0], losses
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert_unchanged(teacher, before)


def monai_basic_unetpp() -> nn.Module:
    from monai.networks.nets import BasicUNetPlusPlus

    return BasicUNetPlusPlus(spatial_dims=3, in_channels=1, out_channels=2,
                             features=(4, 4, 8, 8, 16, 4))  # fmt: skip


def monai_unet() -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16),
                strides=(2, 2))  # fmt: skip


@pytest.mark.parametrize(
    ("make", "options", "pairs"),
    [
        (monai_basic_unetpp, {"probe_size": 32}, [("conv_1_0", "x1_0"), ("conv_2_0", "x2_0")]),
        (monai_unet, {}, [("down_1", "x1_0"), ("bottom", "x2_0")]),
    ],
    ids=["BasicUNetPlusPlus", "UNet"],
)
def test_monai_3d_students_wrapped_with_the_defaults_learn(
    trained: tuple[UNetPlusPlus, Path],
    make: Any,
    options: dict[str, Any],
    pairs: list[tuple[str, str]],
) -> None:
    pytest.importorskip("monai")
    teacher, _ = trained
    before = snapshot(teacher)
    student = make()
    with FeatureSupervisor(student, teacher, **options) as sup:
        assert list(zip(sup.level_names, sup.teacher_level_names, strict=True)) == pairs
        target = balls(2, size=(32, 32, 32), seed=5)  # BasicUNet++ needs 1/16 >= 2 voxels
        losses = train(sup.train(), image_of(target), target)
    assert losses[-1] < losses[0], losses
    assert_unchanged(teacher, before)


# ---------------------------------------------------------------------- anisotropic pooling
def test_anisotropic_levels_pair_by_per_axis_reduction(caplog: pytest.LogCaptureFixture) -> None:
    student = UNetPlusPlus(1, 2, widths=WIDTHS, spatial_dims=3, pooling=[[1, 2, 2], [2, 2, 2]])
    same = UNetPlusPlus(2, 2, widths=WIDTHS, spatial_dims=3, skip_connections=False,
                        pooling=[[1, 2, 2], [2, 2, 2]])  # fmt: skip
    sup = FeatureSupervisor(student, same, probe_size=16)
    assert [lv.reduction for lv in sup.student_levels] == [(1, 2, 2), (2, 4, 4)]
    assert sup.teacher_level_names == ["x1_0", "x2_0"]
    sup.close()
    # x1_0 is 1/2 at most along an axis on both sides, but (1, 2, 2) != (2, 2, 2): not paired
    other = UNetPlusPlus(2, 2, widths=WIDTHS, spatial_dims=3, skip_connections=False,
                         pooling=[[2, 2, 2], [1, 2, 2]])  # fmt: skip
    with caplog.at_level(logging.INFO, logger="featsup.supervision.supervisor"):
        sup = FeatureSupervisor(student, other, probe_size=16)
    assert (sup.level_names, sup.teacher_level_names) == (["x2_0"], ["x2_0"])
    paired = "[x2_0->x2_0 (1/(2, 4, 4))], left out student ['x1_0'] and teacher ['x1_0']"
    assert paired in caplog.text
    out = sup(image_of(torch.zeros(2, 8, 16, 16, dtype=torch.long)),
              torch.zeros(2, 8, 16, 16, dtype=torch.long))  # fmt: skip
    assert list(out.level_losses) == ["x2_0"]
    sup.close()


@pytest.mark.filterwarnings("ignore:encoding teacher")
def test_matching_teacher_of_an_anisotropic_3d_student_has_its_pooling() -> None:
    pooling = [[1, 2, 2], [2, 2, 2]]
    student = UNetPlusPlus(1, 2, widths=WIDTHS, spatial_dims=3, pooling=pooling)
    labels = balls(4, size=(8, 16, 16))
    teacher = matching_teacher(student, labels, num_classes=2, steps=2, batch_size=2,
                               progress=False, probe_size=16)  # fmt: skip
    assert teacher.spatial_dims == 3 and teacher.config["pooling"] == pooling
    assert teacher.widths == (8, 8, 16)
    with FeatureSupervisor(student, teacher, probe_size=16) as sup:
        assert sup.teacher_level_names == ["x1_0", "x2_0"]
        assert all(isinstance(a, nn.Identity) for a in sup.adapters)


# ---------------------------------------------------------------------- Trainer step
def test_segmentation_step_with_a_3d_supervisor(trained: tuple[UNetPlusPlus, Path]) -> None:
    teacher, _ = trained
    before = snapshot(teacher)
    student = UNetPlusPlus(1, 2, widths=WIDTHS, spatial_dims=3)
    model = build_variant("ES-DS", in_channels=1, num_classes=2, teacher=teacher,
                          student=student, probe_size=16)  # fmt: skip
    target = balls(2, seed=4)
    loss, logs = segmentation_step(feature_weight=0.5)(model, {"image": image_of(target),
                                                               "target": target})  # fmt: skip
    assert sorted(logs) == ["feature", "seg"] and loss.ndim == 0
    torch.testing.assert_close(loss.detach(), logs["seg"] + logs["feature"])
    loss.backward()
    assert student.encoder["x1_0"][0][0].weight.grad is not None
    assert_unchanged(teacher, before)
    model.close()  # type: ignore[operator]
