from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from featsup.losses import DiceLoss, WeightedDiceLoss, dice_loss, weighted_dice_loss

BIG = 200.0  # logits this large give hard (0/1) probabilities in float32


def hard_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose softmax (or sigmoid for one channel) is the one-hot of ``labels``."""
    if num_classes == 1:
        return (labels.float() * 2 - 1).unsqueeze(1) * BIG
    return F.one_hot(labels, num_classes).movedim(-1, 1).float() * BIG


# ----------------------------------------------------------------- smoke / cardinality


@pytest.mark.parametrize("spatial", [(7, 9), (3, 5, 6)])
@pytest.mark.parametrize(
    ("options", "shape"),
    [
        ({"reduction": "none"}, (2, 3)),
        ({"reduction": "none", "include_background": False}, (2, 2)),
        ({"reduction": "none", "batch": True}, (3,)),
        ({"reduction": "mean"}, ()),
        ({"reduction": "sum", "squared": True}, ()),
    ],
)
def test_output_shapes(spatial, options, shape):
    logits = torch.randn(2, 3, *spatial)
    target = torch.randint(0, 3, (2, *spatial))
    out = dice_loss(logits, target, **options)
    assert out.shape == shape
    assert torch.isfinite(out).all()


def test_hand_computed_binary_value():
    # sigmoid(0) = 0.5 everywhere; target has 2 of 4 pixels: I = 1, |P| = 2, |G| = 2
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[1, 1], [0, 0]]])
    expected = 1 - (2 * 1.0 + 1e-5) / (4.0 + 1e-5)
    torch.testing.assert_close(dice_loss(logits, target), torch.tensor(expected))


def test_sum_and_mean_relate_to_none():
    logits, target = torch.randn(3, 4, 6, 6), torch.randint(0, 4, (3, 6, 6))
    none = dice_loss(logits, target, reduction="none")
    torch.testing.assert_close(dice_loss(logits, target, reduction="sum"), none.sum())
    torch.testing.assert_close(dice_loss(logits, target, reduction="mean"), none.mean())


def test_target_forms_agree():
    logits = torch.randn(2, 3, 5, 5)
    labels = torch.randint(0, 3, (2, 5, 5))
    onehot = F.one_hot(labels, 3).movedim(-1, 1)
    a = dice_loss(logits, labels)
    torch.testing.assert_close(dice_loss(logits, onehot), a)
    torch.testing.assert_close(dice_loss(logits, onehot.float()), a)
    torch.testing.assert_close(dice_loss(logits, labels.unsqueeze(1)), a)


def test_binary_target_accepts_float_and_bool_masks():
    logits = torch.randn(2, 1, 5, 5)
    mask = torch.rand(2, 5, 5) > 0.5
    a = dice_loss(logits, mask.long())
    torch.testing.assert_close(dice_loss(logits, mask), a)
    torch.testing.assert_close(dice_loss(logits, mask.float()), a)
    torch.testing.assert_close(dice_loss(logits, mask.float().unsqueeze(1)), a)


# ----------------------------------------------------------------- empty masks


def test_empty_target_and_empty_prediction_give_zero():
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    logits = torch.full((2, 1, 6, 6), -BIG)
    assert dice_loss(logits, target).item() == 0.0
    assert dice_loss(logits, target, smooth=0.0).item() == 0.0


def test_empty_target_with_prediction_gives_about_one():
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    logits = torch.full((1, 1, 6, 6), BIG)
    assert dice_loss(logits, target).item() == pytest.approx(1.0, abs=1e-6)


def test_empty_prediction_with_target_gives_about_one():
    target = torch.ones(1, 6, 6, dtype=torch.long)
    logits = torch.full((1, 1, 6, 6), -BIG)
    assert dice_loss(logits, target).item() == pytest.approx(1.0, abs=1e-6)


def test_no_nan_gradient_with_zero_smooth_and_empty_masks():
    logits = torch.full((1, 1, 4, 4), -BIG, requires_grad=True)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    loss = dice_loss(logits, target, smooth=0.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    classes=st.integers(1, 4),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    scale=st.floats(0.01, 50.0),
    squared=st.booleans(),
    batch_reduce=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_finite_nonnegative_bounded_and_differentiable(
    batch, classes, height, width, scale, squared, batch_reduce, seed
):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, classes, height, width, generator=gen) * scale).requires_grad_()
    target = torch.randint(0, max(classes, 2), (batch, height, width), generator=gen)
    loss = dice_loss(logits, target, squared=squared, batch=batch_reduce)
    assert torch.isfinite(loss) and 0.0 <= loss.item() <= 1.0 + 1e-6
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@settings(max_examples=30, deadline=None)
@given(
    classes=st.integers(1, 4),
    size=st.integers(2, 8),
    squared=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_symmetric_in_prediction_and_target_for_hard_masks(classes, size, squared, seed):
    gen = torch.Generator().manual_seed(seed)
    n = max(classes, 2)
    a = torch.randint(0, n, (2, size, size), generator=gen)
    b = torch.randint(0, n, (2, size, size), generator=gen)
    ab = dice_loss(hard_logits(a, classes), b, squared=squared, reduction="none")
    ba = dice_loss(hard_logits(b, classes), a, squared=squared, reduction="none")
    torch.testing.assert_close(ab, ba)


@settings(max_examples=30, deadline=None)
@given(classes=st.integers(1, 4), size=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_weighted_dice_with_ones_equals_dice(classes, size, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, size, size, generator=gen)
    target = torch.randint(0, max(classes, 2), (2, size, size), generator=gen)
    ones = torch.ones(2, size, size)
    for options in ({}, {"squared": True}, {"batch": True, "reduction": "none"}):
        torch.testing.assert_close(
            weighted_dice_loss(logits, target, ones, **options),
            dice_loss(logits, target, **options),
        )


def test_weighted_dice_hand_computed():
    # probabilities 0.5 everywhere; weights double the first column
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[1, 0], [1, 0]]])
    weight = torch.tensor([[[2.0, 1.0], [2.0, 1.0]]])
    inter = 0.5 * 2 + 0.5 * 2  # W * G * P
    wg, wp = 2 + 2, 0.5 * (2 + 1 + 2 + 1)
    expected = 1 - (2 * inter + 1e-5) / (wg + wp + 1e-5)
    torch.testing.assert_close(
        weighted_dice_loss(logits, target, weight), torch.tensor(expected), rtol=0, atol=1e-6
    )


def test_weight_layouts_agree():
    logits, target = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    weight = torch.rand(2, 5, 5)
    a = weighted_dice_loss(logits, target, weight)
    torch.testing.assert_close(weighted_dice_loss(logits, target, weight.unsqueeze(1)), a)
    per_class = weight.unsqueeze(1).expand(2, 3, 5, 5)
    torch.testing.assert_close(weighted_dice_loss(logits, target, per_class), a)
    no_bg = weighted_dice_loss(logits, target, per_class, include_background=False)
    torch.testing.assert_close(
        no_bg, weighted_dice_loss(logits, target, weight, include_background=False)
    )


def test_exclude_background_drops_channel_zero():
    logits, target = torch.randn(2, 3, 6, 6), torch.randint(0, 3, (2, 6, 6))
    full = dice_loss(logits, target, reduction="none")
    no_bg = dice_loss(logits, target, reduction="none", include_background=False)
    torch.testing.assert_close(no_bg, full[:, 1:])


def test_gradcheck():
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    weight = torch.rand(2, 4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: dice_loss(x, target, squared=True), (logits,))
    assert torch.autograd.gradcheck(lambda x: weighted_dice_loss(x, target, weight), (logits,))


def test_module_equals_function():
    logits, target = torch.randn(2, 3, 6, 6), torch.randint(0, 3, (2, 6, 6))
    options = {"include_background": False, "squared": True, "batch": True, "smooth": 1.0}
    torch.testing.assert_close(
        DiceLoss(**options)(logits, target), dice_loss(logits, target, **options)
    )
    weight = torch.rand(2, 6, 6)
    torch.testing.assert_close(
        WeightedDiceLoss(**options)(logits, target, weight),
        weighted_dice_loss(logits, target, weight, **options),
    )
    assert "squared=True" in repr(DiceLoss(**options))


# ----------------------------------------------------------------- references


monai_losses = pytest.importorskip("monai.losses")


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_monai_softmax(include_background, squared, batch, reduction):
    logits = torch.randn(3, 4, 9, 7)
    target = torch.randint(0, 4, (3, 9, 7))
    target[0] = 0  # one sample without foreground classes
    ref = monai_losses.DiceLoss(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        squared_pred=squared,
        batch=batch,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        reduction=reduction,
    )(logits, target.unsqueeze(1))
    ours = dice_loss(
        logits,
        target,
        include_background=include_background,
        squared=squared,
        batch=batch,
        reduction=reduction,
    )
    torch.testing.assert_close(ours, ref.reshape(ours.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spatial", [(8, 8), (4, 6, 5)])
def test_matches_monai_sigmoid(spatial):
    logits = torch.randn(2, 1, *spatial) * 3
    target = torch.randint(0, 2, (2, *spatial))
    ref = monai_losses.DiceLoss(sigmoid=True, reduction="none")(logits, target.unsqueeze(1))
    ours = dice_loss(logits, target, reduction="none")
    torch.testing.assert_close(ours, ref.reshape(ours.shape), rtol=1e-5, atol=1e-5)


def test_matches_smp_multiclass():
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    logits = torch.randn(2, 3, 16, 16)
    target = torch.randint(0, 3, (2, 16, 16))  # all classes present, so smp's mask is all ones
    ref = smp_losses.DiceLoss("multiclass", from_logits=True, smooth=0.0)(logits, target)
    ours = dice_loss(logits, target, batch=True, smooth=0.0)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"reduction": "meen"}, ValueError, "did you mean 'mean'"),
        ({"activation": "softmx"}, ValueError, "did you mean 'softmax'"),
        ({"smooth": -1.0}, ValueError, "smooth"),
    ],
)
def test_bad_options_raise_in_module_and_function(kwargs, error, match):
    with pytest.raises(error, match=match):
        DiceLoss(**kwargs)
    with pytest.raises(error, match=match):
        dice_loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), **kwargs)


def test_bad_inputs_raise():
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="labels in \\[0, 2\\]"):
        dice_loss(logits, torch.full((2, 4, 4), 3))
    with pytest.raises(ValueError, match="spatial size"):
        dice_loss(logits, torch.zeros(2, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        dice_loss(logits, torch.zeros(2, 2, 4, 4))
    with pytest.raises(TypeError, match="integer label map"):
        dice_loss(logits, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="4/5D"):
        dice_loss(torch.randn(3, 4, 4), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="floating-point"):
        dice_loss(logits.long(), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="include_background"):
        dice_loss(torch.randn(2, 1, 4, 4), torch.zeros(2, 4, 4), include_background=False)
    with pytest.raises(ValueError, match="single-channel"):
        dice_loss(torch.randn(2, 1, 4, 4), torch.zeros(2, 4, 4), activation="softmax")
    with pytest.raises(ValueError, match="weight"):
        weighted_dice_loss(logits, torch.zeros(2, 4, 4, dtype=torch.long), torch.ones(2, 2, 4, 4))
