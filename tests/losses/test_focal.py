from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from featsup.losses import FocalLoss, focal_loss


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_output_shapes(spatial):
    soft_logits, soft_target = torch.randn(2, 3, *spatial), torch.randint(0, 3, (2, *spatial))
    assert focal_loss(soft_logits, soft_target, reduction="none").shape == (2, *spatial)
    bin_logits, bin_target = torch.randn(2, 1, *spatial), torch.randint(0, 2, (2, *spatial))
    assert focal_loss(bin_logits, bin_target, reduction="none").shape == (2, 1, *spatial)
    assert focal_loss(bin_logits, bin_target).shape == ()


def test_hand_computed_binary_value():
    # p = sigmoid(0) = 0.5: loss = -(1 - 0.5)^2 * log(0.5) for both labels
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[1, 0]]])
    out = focal_loss(logits, target, gamma=2.0, reduction="none")
    torch.testing.assert_close(out, torch.full((1, 1, 1, 2), 0.25 * math.log(2.0)))
    weighted = focal_loss(logits, target, gamma=2.0, alpha=0.25, reduction="none")
    expected = torch.tensor([0.25, 0.75]).view(1, 1, 1, 2) * 0.25 * math.log(2.0)
    torch.testing.assert_close(weighted, expected)


@settings(max_examples=40, deadline=None)
@given(
    classes=st.integers(2, 5),
    size=st.integers(1, 8),
    scale=st.floats(0.01, 30.0),
    seed=st.integers(0, 2**16),
)
def test_gamma_zero_equals_cross_entropy(classes, size, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, size, size, generator=gen) * scale
    target = torch.randint(0, classes, (2, size, size), generator=gen)
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target)
    )
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0, reduction="none"),
        F.cross_entropy(logits, target, reduction="none"),
    )


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 8), scale=st.floats(0.01, 30.0), seed=st.integers(0, 2**16))
def test_gamma_zero_equals_binary_cross_entropy(size, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 1, size, size, generator=gen) * scale
    target = torch.randint(0, 2, (3, size, size), generator=gen)
    expected = F.binary_cross_entropy_with_logits(logits, target.unsqueeze(1).float())
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), expected)


@settings(max_examples=40, deadline=None)
@given(
    classes=st.integers(1, 4),
    size=st.integers(1, 7),
    gamma=st.floats(0.0, 5.0),
    scale=st.floats(0.01, 1000.0),
    seed=st.integers(0, 2**16),
)
def test_finite_nonnegative_differentiable_and_below_ce(classes, size, gamma, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, classes, size, size, generator=gen) * scale).requires_grad_()
    target = torch.randint(0, max(classes, 2), (2, size, size), generator=gen)
    loss = focal_loss(logits, target, gamma=gamma, reduction="none")
    ce = focal_loss(logits, target, gamma=0.0, reduction="none")
    assert torch.isfinite(loss).all() and (loss >= 0).all()
    assert (loss <= ce + 1e-6).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_saturated_logits_with_small_gamma_have_finite_gradient():
    # p = 1 exactly in float32: (1 - p)^0.5 would have an infinite derivative
    logits = torch.tensor([[[[100.0]], [[-100.0]]]], requires_grad=True)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    focal_loss(logits, target, gamma=0.5).backward()
    assert torch.isfinite(logits.grad).all()
    logits_bin = torch.tensor([[[[100.0]]]], requires_grad=True)
    focal_loss(logits_bin, torch.ones(1, 1, 1), gamma=0.5).backward()
    assert torch.isfinite(logits_bin.grad).all()


def test_half_precision_is_computed_in_float32():
    logits = (torch.randn(2, 3, 4, 4) * 20).half()
    target = torch.randint(0, 3, (2, 4, 4))
    out = focal_loss(logits, target)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, focal_loss(logits.float(), target))


def test_alpha_sequence_weighs_channels():
    logits, target = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    plain = focal_loss(logits, target, reduction="none")
    weighted = focal_loss(logits, target, alpha=[0.1, 1.0, 3.0], reduction="none")
    factors = torch.tensor([0.1, 1.0, 3.0])[target]
    torch.testing.assert_close(weighted, plain * factors)


def test_gradcheck():
    logits = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 3, 3))
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, target, gamma=1.5), (logits,))
    bin_logits = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    bin_target = torch.randint(0, 2, (2, 3, 3))
    assert torch.autograd.gradcheck(
        lambda x: focal_loss(x, bin_target, gamma=2.0, alpha=0.25), (bin_logits,)
    )


def test_module_equals_function():
    logits, target = torch.randn(2, 3, 6, 6), torch.randint(0, 3, (2, 6, 6))
    module = FocalLoss(gamma=1.0, alpha=[1.0, 2.0, 3.0], reduction="sum")
    torch.testing.assert_close(
        module(logits, target),
        focal_loss(logits, target, gamma=1.0, alpha=[1.0, 2.0, 3.0], reduction="sum"),
    )
    assert "gamma=1.0" in repr(module)


monai_losses = pytest.importorskip("monai.losses")


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, 0.25, (0.2, 0.5, 1.5)])
def test_matches_monai_softmax(gamma, alpha):
    logits = torch.randn(2, 3, 7, 6) * 3
    target = torch.randint(0, 3, (2, 7, 6))
    monai_alpha = torch.tensor(alpha) if isinstance(alpha, tuple) else alpha
    ref = monai_losses.FocalLoss(
        to_onehot_y=True, gamma=gamma, alpha=monai_alpha, use_softmax=True, reduction="none"
    )(logits, target.unsqueeze(1))
    ours = focal_loss(logits, target, gamma=gamma, alpha=alpha, reduction="none")
    torch.testing.assert_close(ours, ref.sum(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.25, 0.8])
def test_matches_monai_sigmoid(gamma, alpha):
    logits = torch.randn(2, 1, 5, 4, 3) * 3
    target = torch.randint(0, 2, (2, 5, 4, 3))
    ref = monai_losses.FocalLoss(gamma=gamma, alpha=alpha, reduction="mean")(
        logits, target.unsqueeze(1).float()
    )
    ours = focal_loss(logits, target, gamma=gamma, alpha=alpha)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"gamma": -1.0}, ValueError, "gamma"),
        ({"alpha": 1.5}, ValueError, "alpha"),
        ({"alpha": [1.0, -1.0]}, ValueError, "alpha"),
        ({"alpha": "x"}, TypeError, "alpha"),
        ({"reduction": "sun"}, ValueError, "did you mean 'sum'"),
        ({"activation": "sigmod"}, ValueError, "did you mean 'sigmoid'"),
    ],
)
def test_bad_options_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        FocalLoss(**kwargs)
    with pytest.raises(error, match=match):
        focal_loss(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), **kwargs)


def test_alpha_length_must_match_channels():
    with pytest.raises(ValueError, match="expected 3 values"):
        focal_loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), alpha=[1, 2])
