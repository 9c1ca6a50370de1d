from __future__ import annotations

import pytest
import torch

from featsup.losses import FeatureLoss
from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor, supervised_student
from featsup.supervision.variants import VARIANTS, build_variant, parse_variant, segmentation_step

WIDTHS = (4, 8, 16)


def teacher() -> UNetPlusPlus:
    return UNetPlusPlus(2, 2, widths=WIDTHS, skip_connections=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_builds_and_steps(variant: str) -> None:
    model = build_variant(variant, in_channels=1, num_classes=2, widths=WIDTHS, teacher=teacher())
    supervision, deep = parse_variant(variant)
    student = supervised_student(model) or model
    assert student.deep_supervision is deep
    assert isinstance(model, FeatureSupervisor) == (supervision != "UN")
    if supervision == "BS":
        assert model.level_names == ["x2_0"]
    if supervision == "ES":
        assert model.level_names == ["x1_0", "x2_0"]
    batch = {"image": torch.randn(2, 1, 16, 16), "target": torch.randint(0, 2, (2, 16, 16))}
    loss, logs = segmentation_step()(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and ("feature" in logs) == (supervision != "UN")
    assert student.encoder["x0_0"].conv1.conv.weight.grad is not None


def test_bad_variant_and_missing_teacher() -> None:
    with pytest.raises(ValueError, match="did you mean 'ES-DS'"):
        parse_variant("ES-DD")
    with pytest.raises(ValueError, match="teacher"):
        build_variant("BS-NS", in_channels=1, num_classes=2, widths=WIDTHS)


def test_lower_case_variant_is_accepted() -> None:
    assert parse_variant("es-ns") == ("ES", False)


def test_w2_is_the_steps_feature_weight_and_loss_options_reach_the_supervisor() -> None:
    loss = FeatureLoss(kind="huber", beta=0.5)
    model = build_variant("ES-NS", in_channels=1, num_classes=2, widths=WIDTHS,
                          teacher=teacher(), loss=loss)  # fmt: skip
    assert isinstance(model, FeatureSupervisor) and model.loss is loss
    batch = {"image": torch.randn(2, 1, 16, 16), "target": torch.randint(0, 2, (2, 16, 16))}
    model.eval()  # the same forward twice
    _, one = segmentation_step()(model, batch)
    _, low = segmentation_step(feature_weight=0.3)(model, batch)
    torch.testing.assert_close(low["feature"], 0.3 * one["feature"])
    torch.testing.assert_close(low["seg"], one["seg"])
    with pytest.raises(TypeError, match="feature_weight"):
        build_variant("ES-NS", in_channels=1, num_classes=2, widths=WIDTHS,
                      teacher=teacher(), feature_weight=0.3)  # fmt: skip


def test_a_compiled_supervisor_steps_with_its_feature_loss() -> None:
    model = build_variant("ES-DS", in_channels=1, num_classes=2, widths=WIDTHS, teacher=teacher())
    batch = {"image": torch.randn(2, 1, 16, 16), "target": torch.randint(0, 2, (2, 16, 16))}
    compiled = torch.compile(model, backend="aot_eager")
    loss, logs = segmentation_step()(compiled, batch)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logs["feature"]) and logs["feature"] > 0
    assert model.student.encoder["x0_0"].conv1.conv.weight.grad is not None


@pytest.mark.parametrize("variant", ["UN-DS", "ES-DS"])
def test_the_step_passes_a_batchs_pixel_weights_to_the_dice(variant: str) -> None:
    torch.manual_seed(0)
    model = build_variant(variant, in_channels=1, num_classes=2, widths=WIDTHS, teacher=teacher())
    model.eval()  # the same forward each time
    batch = {"image": torch.randn(2, 1, 16, 16), "target": torch.randint(0, 2, (2, 16, 16))}
    step = segmentation_step()
    plain = step(model, batch)[1]["seg"]
    ones = step(model, {**batch, "weight": torch.ones(2, 16, 16)})[1]["seg"]
    heavy = torch.ones(2, 16, 16)
    heavy[:, :4] = 5.0
    weighted = step(model, {**batch, "weight": heavy})[1]["seg"]
    torch.testing.assert_close(ones, plain)  # weights of 1 are the paper's loss
    assert not torch.allclose(weighted, plain)
