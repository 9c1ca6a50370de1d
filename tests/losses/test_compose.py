from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from featsup.losses import (
    DeepSupervisionLoss,
    FeatureLoss,
    SegLoss,
    TotalLoss,
    deep_supervision_loss,
    dice_loss,
    feature_loss,
    focal_loss,
    seg_loss,
    weighted_dice_loss,
)

# ----------------------------------------------------------------- Seg-Loss (eq. 13)


def test_seg_loss_is_weighted_dice_plus_ce():
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    expected = 0.7 * dice_loss(logits, target) + 0.3 * F.cross_entropy(logits, target)
    torch.testing.assert_close(seg_loss(logits, target, dice_weight=0.7, ce_weight=0.3), expected)


def test_seg_loss_binary_uses_bce():
    logits, target = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
    bce = F.binary_cross_entropy_with_logits(logits, target.unsqueeze(1).float())
    torch.testing.assert_close(seg_loss(logits, target), dice_loss(logits, target) + bce)


def test_seg_loss_focal_and_weight_map_options():
    logits, target = torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))
    weight = torch.rand(2, 8, 8)
    expected = weighted_dice_loss(logits, target, weight) + focal_loss(logits, target, gamma=2.0)
    torch.testing.assert_close(seg_loss(logits, target, weight, focal_gamma=2.0), expected)


def test_seg_loss_batch_dice_pools_the_batch():
    logits, target = torch.randn(3, 2, 8, 8), torch.randint(0, 2, (3, 8, 8))
    target[0] = 0  # a slice without foreground: per sample it costs ~1, pooled it does not
    weight = torch.rand(3, 8, 8)
    for w in (None, weight):
        options = {"include_background": False, "batch": True}
        if w is None:
            dice = dice_loss(logits, target, **options)
        else:
            dice = weighted_dice_loss(logits, target, w, **options)
        expected = dice + F.cross_entropy(logits, target)
        got = seg_loss(logits, target, w, include_background=False, batch_dice=True)
        torch.testing.assert_close(got, expected)
    pooled = seg_loss(logits, target, include_background=False, batch_dice=True)
    assert not torch.allclose(seg_loss(logits, target, include_background=False), pooled)
    module = SegLoss(include_background=False, batch_dice=True)
    torch.testing.assert_close(module(logits, target), pooled)
    assert "batch_dice=True" in repr(module)


def test_seg_loss_sum_reduction():
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    expected = dice_loss(logits, target, reduction="sum") + F.cross_entropy(
        logits, target, reduction="sum"
    )
    torch.testing.assert_close(seg_loss(logits, target, reduction="sum"), expected)


def test_seg_loss_matches_monai_dice_ce():
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = torch.randn(2, 3, 9, 9), torch.randint(0, 3, (2, 9, 9))
    ref = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.4, lambda_ce=1.5)(
        logits, target.unsqueeze(1)
    )
    ours = seg_loss(logits, target, dice_weight=0.4, ce_weight=1.5)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_seg_loss_weight_ce_is_the_weighted_mean_of_pixel_ce():
    logits, target = torch.randn(2, 3, 6, 6), torch.randint(0, 3, (2, 6, 6))
    weight = torch.rand(2, 6, 6) + 0.1
    pixel_ce = F.cross_entropy(logits, target, reduction="none")
    ce_only = {"dice_weight": 0.0, "weight_ce": True}
    got = seg_loss(logits, target, weight, **ce_only)
    torch.testing.assert_close(got, (weight * pixel_ce).sum() / weight.sum())
    summed = seg_loss(logits, target, weight, reduction="sum", **ce_only)
    torch.testing.assert_close(summed, (weight * pixel_ce).sum())
    # both terms: the weighted Dice plus the weighted CE; without weight_ce the CE is plain
    both = seg_loss(logits, target, weight, weight_ce=True)
    torch.testing.assert_close(both, weighted_dice_loss(logits, target, weight) + got)
    plain = seg_loss(logits, target, weight)
    torch.testing.assert_close(plain, weighted_dice_loss(logits, target, weight) + pixel_ce.mean())
    # no weight map: weight_ce changes nothing
    torch.testing.assert_close(seg_loss(logits, target, weight_ce=True), seg_loss(logits, target))
    module = SegLoss(weight_ce=True)
    torch.testing.assert_close(module(logits, target, weight), both)
    assert "weight_ce=True" in repr(module)


def test_seg_loss_weight_ce_sigmoid_and_bad_shape():
    logits, target = torch.randn(2, 1, 5, 5), torch.randint(0, 2, (2, 5, 5))
    weight = torch.rand(2, 5, 5) + 0.1
    pixel = F.binary_cross_entropy_with_logits(
        logits, target.unsqueeze(1).float(), reduction="none"
    )[:, 0]
    got = seg_loss(logits, target, weight, dice_weight=0.0, weight_ce=True)
    torch.testing.assert_close(got, (weight * pixel).sum() / weight.sum())
    with pytest.raises(ValueError, match="weight: expected shape"):
        seg_loss(logits, target, torch.rand(2, 4, 5), dice_weight=0.0, weight_ce=True)


def test_seg_loss_weight_ce_takes_the_dice_terms_weight_shapes():
    logits, target = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    weight = torch.rand(2, 5, 5) + 0.1
    flat = seg_loss(logits, target, weight, weight_ce=True)
    torch.testing.assert_close(seg_loss(logits, target, weight[:, None], weight_ce=True), flat)
    with pytest.raises(ValueError, match="one weight per pixel for the softmax CE"):
        seg_loss(logits, target, torch.rand(2, 3, 5, 5), weight_ce=True)


@settings(max_examples=25, deadline=None)
@given(
    classes=st.integers(1, 4),
    size=st.integers(1, 6),
    gamma=st.floats(0.0, 3.0),
    level=st.floats(0.01, 100.0),
    factor=st.floats(1.5, 50.0),
    seed=st.integers(0, 2**16),
)
def test_seg_loss_weight_ce_properties(classes, size, gamma, level, factor, seed):
    """Uniform weights change nothing; the mean is scale-free; heavier pixels pull harder."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, size, size, generator=gen).requires_grad_()
    target = torch.randint(0, max(classes, 2), (2, size, size), generator=gen)
    options = {"dice_weight": 0.0, "focal_gamma": gamma, "weight_ce": True}
    uniform = torch.full((2, size, size), level)
    plain = seg_loss(logits, target, dice_weight=0.0, focal_gamma=gamma)
    torch.testing.assert_close(seg_loss(logits, target, uniform, **options), plain)
    weight = torch.rand(2, size, size, generator=gen) + 0.1
    torch.testing.assert_close(
        seg_loss(logits, target, weight * level, **options),
        seg_loss(logits, target, weight, **options),
    )
    # raising one pixel's weight raises its share of the gradient
    heavy = torch.ones(2, size, size)
    heavy[0, 0, 0] = factor
    grad = {}
    for name, w in (("plain", torch.ones(2, size, size)), ("heavy", heavy)):
        (g,) = torch.autograd.grad(seg_loss(logits, target, w, **options), logits)
        share = g[0, :, 0, 0].abs().sum() / g.abs().sum().clamp_min(1e-30)
        grad[name] = share.item()
    if 1e-6 < grad["plain"] < 1 - 1e-6:
        assert grad["heavy"] > grad["plain"]


@settings(max_examples=25, deadline=None)
@given(
    classes=st.integers(1, 4),
    size=st.integers(1, 8),
    gamma=st.floats(0.0, 3.0),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**16),
    batch_dice=st.booleans(),
)
def test_seg_loss_finite_nonnegative_differentiable(classes, size, gamma, scale, seed, batch_dice):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, classes, size, size, generator=gen) * scale).requires_grad_()
    target = torch.randint(0, max(classes, 2), (2, size, size), generator=gen)
    loss = seg_loss(logits, target, focal_gamma=gamma, batch_dice=batch_dice)
    assert torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_seg_module_equals_function_and_validates():
    logits, target = torch.randn(2, 2, 6, 6), torch.randint(0, 2, (2, 6, 6))
    module = SegLoss(dice_weight=2.0, ce_weight=0.5, include_background=False)
    expected = seg_loss(logits, target, dice_weight=2.0, ce_weight=0.5, include_background=False)
    torch.testing.assert_close(module(logits, target), expected)
    with pytest.raises(ValueError, match="did you mean 'mean'"):
        SegLoss(reduction="mena")
    with pytest.raises(ValueError, match="dice_weight"):
        SegLoss(dice_weight=-1.0)
    with pytest.raises(ValueError, match="'mean', 'sum'"):
        seg_loss(logits, target, reduction="none")  # type: ignore[arg-type]


# ----------------------------------------------------------------- deep supervision (eq. 14)


def test_deep_supervision_defaults_to_the_mean_of_heads():
    heads = [torch.randn(2, 2, 8, 8) for _ in range(4)]
    target = torch.randint(0, 2, (2, 8, 8))
    expected = sum(seg_loss(h, target) for h in heads) / 4
    torch.testing.assert_close(deep_supervision_loss(heads, target), expected)
    torch.testing.assert_close(DeepSupervisionLoss()(heads, target), expected)


def test_deep_supervision_head_weights_and_single_tensor():
    heads = [torch.randn(2, 2, 8, 8) for _ in range(4)]
    target = torch.randint(0, 2, (2, 8, 8))
    parts = [seg_loss(h, target) for h in heads]
    value = deep_supervision_loss(heads, target, head_weights=[0.1, 0.2, 0.3, 0.4])
    torch.testing.assert_close(
        value, 0.1 * parts[0] + 0.2 * parts[1] + 0.3 * parts[2] + 0.4 * parts[3]
    )
    torch.testing.assert_close(deep_supervision_loss(heads[3], target), parts[3])


def test_deep_supervision_resizes_target_nearest_for_smaller_heads():
    target = torch.randint(0, 3, (2, 16, 16))
    heads = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 16, 16)]
    small = F.interpolate(target[:, None].float(), size=(8, 8), mode="nearest")[:, 0].long()
    expected = (dice_loss(heads[0], small) + dice_loss(heads[1], target)) / 2
    value = deep_supervision_loss(heads, target, loss_fn=dice_loss)
    torch.testing.assert_close(value, expected)
    onehot = F.one_hot(target, 3).movedim(-1, 1).float()
    torch.testing.assert_close(deep_supervision_loss(heads, onehot, loss_fn=dice_loss), expected)


def test_deep_supervision_passes_resized_weight_map():
    target = torch.randint(0, 2, (1, 8, 8))
    weight = torch.rand(1, 8, 8)
    heads = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 8, 8)]
    small_t = F.interpolate(target[:, None].float(), size=(4, 4), mode="nearest")[:, 0].long()
    small_w = F.interpolate(weight[:, None], size=(4, 4), mode="nearest")[:, 0]
    expected = (seg_loss(heads[0], small_t, small_w) + seg_loss(heads[1], target, weight)) / 2
    torch.testing.assert_close(deep_supervision_loss(heads, target, weight), expected)


def test_deep_supervision_gradient_reaches_every_head():
    heads = [torch.randn(2, 1, 6, 6, requires_grad=True) for _ in range(4)]
    DeepSupervisionLoss(SegLoss())(heads, torch.randint(0, 2, (2, 6, 6))).backward()
    assert all(h.grad is not None and torch.count_nonzero(h.grad) > 0 for h in heads)


def test_deep_supervision_errors():
    target = torch.randint(0, 2, (1, 4, 4))
    with pytest.raises(ValueError, match="at least one head"):
        deep_supervision_loss([], target)
    with pytest.raises(ValueError, match="one weight per head"):
        deep_supervision_loss([torch.randn(1, 1, 4, 4)] * 2, target, head_weights=[1.0])
    with pytest.raises(TypeError, match="outputs\\[1\\]"):
        deep_supervision_loss([torch.randn(1, 1, 4, 4), 3], target)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="loss"):
        DeepSupervisionLoss(loss=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="head_weights"):
        DeepSupervisionLoss(head_weights=[1.0, -2.0])


# ----------------------------------------------------------------- total loss (eq. 17)


def test_total_loss_with_precomputed_feature_loss():
    heads = [torch.randn(2, 2, 8, 8) for _ in range(4)]
    target = torch.randint(0, 2, (2, 8, 8))
    total = TotalLoss(seg_weight=2.0, feature_weight=0.5)
    feat = torch.tensor(0.3)
    expected = 2.0 * deep_supervision_loss(heads, target) + 0.5 * feat
    torch.testing.assert_close(total(heads, target, feat), expected)
    parts = total.terms(heads, target, feat)
    torch.testing.assert_close(parts["total"], parts["seg"] + parts["feature"])


def test_total_loss_with_feature_pairs_and_without_features():
    logits, target = torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))
    students = [torch.randn(2, 4, 4, 4), torch.randn(2, 8, 2, 2)]
    teachers = [torch.randn_like(s) for s in students]
    total = TotalLoss(SegLoss(), FeatureLoss(kind="mse"))
    expected_feat = (
        feature_loss(students[0], teachers[0], kind="mse")
        + feature_loss(students[1], teachers[1], kind="mse")
    ) / 2
    torch.testing.assert_close(
        total(logits, target, (students, teachers)), seg_loss(logits, target) + expected_feat
    )
    assert set(total.terms(logits, target)) == {"seg", "total"}
    torch.testing.assert_close(total(logits, target), seg_loss(logits, target))


def test_total_loss_with_weight_map_and_errors():
    logits, target, weight = (
        torch.randn(2, 1, 8, 8),
        torch.randint(0, 2, (2, 8, 8)),
        torch.rand(2, 8, 8),
    )
    total = TotalLoss()
    torch.testing.assert_close(
        total(logits, target, weight=weight), seg_loss(logits, target, weight)
    )
    with pytest.raises(TypeError, match="feature"):
        total(logits, target, feature=3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="feature_weight"):
        TotalLoss(feature_weight=-1.0)
    with pytest.raises(TypeError, match="seg"):
        TotalLoss(seg="dice")  # type: ignore[arg-type]
