from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featsup.losses import (
    SegLoss,
    TverskyLoss,
    dice_loss,
    seg_loss,
    tversky_loss,
    weighted_dice_loss,
)

BIG = 200.0  # logits this large give hard (0/1) probabilities in float32


def _case(classes: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, size, size + 1, generator=g) * 3
    target = torch.randint(0, max(classes, 2), (2, size, size + 1), generator=g)
    return logits, target


@settings(max_examples=30, deadline=None)
@given(
    classes=st.integers(1, 4),
    size=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    batch=st.booleans(),
    weighted=st.booleans(),
)
def test_half_and_half_is_dice(classes, size, seed, batch, weighted):
    logits, target = _case(classes, size, seed)
    options = {"batch": batch, "reduction": "none"}
    if weighted:
        weight = torch.rand(2, size, size + 1, generator=torch.Generator().manual_seed(seed))
        expected = weighted_dice_loss(logits, target, weight, **options)
    else:
        weight, expected = None, dice_loss(logits, target, **options)
    got = tversky_loss(logits, target, weight, alpha=0.5, beta=0.5, **options)
    torch.testing.assert_close(got, expected)
    # the general formula (not the Dice shortcut) agrees too
    near = tversky_loss(logits, target, weight, alpha=0.5 + 1e-7, beta=0.5 - 1e-7, **options)
    torch.testing.assert_close(near, expected, rtol=1e-4, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    classes=st.integers(1, 4),
    size=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    alpha=st.floats(0.0, 1.0),
    beta=st.floats(0.05, 1.0),
)
def test_bounded_finite_and_differentiable(classes, size, seed, alpha, beta):
    logits, target = _case(classes, size, seed)
    logits.requires_grad_(True)
    loss = tversky_loss(logits, target, alpha=alpha, beta=beta, reduction="none")
    assert torch.isfinite(loss).all()
    assert (loss >= -1e-6).all() and (loss <= 1 + 1e-6).all()
    loss.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_perfect_prediction_costs_nothing():
    target = torch.tensor([[[0, 1, 1, 0], [1, 0, 0, 0]]])
    logits = (target.float() * 2 - 1).unsqueeze(1) * BIG
    for alpha, beta in [(0.3, 0.7), (0.9, 0.1), (0.0, 1.0)]:
        loss = tversky_loss(logits, target, alpha=alpha, beta=beta).item()
        assert loss == pytest.approx(0.0, abs=1e-6)


def test_misses_cost_more_and_false_alarms_less_when_beta_is_larger():
    target = torch.tensor([[[1, 1, 1, 1, 0, 0, 0, 0]]])
    miss = torch.tensor([[[1, 1, 0, 0, 0, 0, 0, 0]]])  # finds 2 of 4: FN only
    alarm = torch.tensor([[[1, 1, 1, 1, 1, 1, 0, 0]]])  # 2 extra voxels: FP only
    for pred in (miss, alarm):
        logits = (pred.float() * 2 - 1).unsqueeze(1) * BIG
        dice = dice_loss(logits, target).item()
        weighted = tversky_loss(logits, target, alpha=0.3, beta=0.7).item()
        if pred is miss:  # 1 - 4 / (4 + 2 * 0.7 * 2)
            assert weighted == pytest.approx(1 - 4 / 6.8, abs=1e-5) and weighted > dice
        else:  # 1 - 8 / (8 + 2 * 0.3 * 2)
            assert weighted == pytest.approx(1 - 8 / 9.2, abs=1e-5) and weighted < dice


def test_larger_beta_pulls_harder_on_a_missed_voxel():
    target = torch.tensor([[[1, 1, 0, 0]]])
    base = torch.tensor([[[[2.0, -2.0, -2.0, -2.0]]]])  # the second lesion voxel is missed
    pulls = []
    for beta in (0.5, 0.7, 0.9):
        logits = base.clone().requires_grad_(True)
        tversky_loss(logits, target, alpha=1 - beta, beta=beta).backward()
        pulls.append(-logits.grad[0, 0, 0, 1].item())  # descent raises the missed logit
    assert 0 < pulls[0] < pulls[1] < pulls[2]


def test_module_equals_function_and_shows_its_options():
    logits, target = _case(3, 5, 0)
    module = TverskyLoss(alpha=0.2, beta=0.8, include_background=False, batch=True)
    expected = tversky_loss(
        logits, target, alpha=0.2, beta=0.8, include_background=False, batch=True
    )
    torch.testing.assert_close(module(logits, target), expected)
    assert "alpha=0.2" in repr(module) and "beta=0.8" in repr(module)
    assert "squared" not in repr(module)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"alpha": -0.1}, "alpha"), ({"beta": -1.0}, "beta"), ({"alpha": 0.0, "beta": 0.0}, "sum")],
)
def test_bad_weights_raise_in_module_and_function(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TverskyLoss(**kwargs)
    with pytest.raises(ValueError, match=match):
        tversky_loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), **kwargs)


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_matches_monai(include_background, batch):
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = torch.randn(3, 4, 9, 7), torch.randint(0, 4, (3, 9, 7))
    target[0] = 0  # one sample without foreground classes
    # ours is (2 TP + s) / (2 TP + 2 alpha FP + 2 beta FN + s): MONAI's with s / 2
    ref = monai_losses.TverskyLoss(
        include_background=include_background, to_onehot_y=True, softmax=True, alpha=0.3,
        beta=0.7, smooth_nr=5e-6, smooth_dr=5e-6, batch=batch, reduction="none",
    )(logits, target.unsqueeze(1))  # fmt: skip
    ours = tversky_loss(
        logits, target, alpha=0.3, beta=0.7, include_background=include_background,
        batch=batch, reduction="none",
    )  # fmt: skip
    torch.testing.assert_close(ours, ref.reshape(ours.shape), rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), weighted=st.booleans(), beta=st.floats(0.0, 1.0))
def test_seg_loss_tversky_term(seed, weighted, beta):
    logits, target = _case(2, 5, seed)
    weight = torch.rand(2, 5, 6) if weighted else None
    options = {"include_background": False, "ce_weight": 0.0}
    got = seg_loss(logits, target, weight, tversky_beta=beta, **options)
    expected = tversky_loss(logits, target, weight, alpha=1 - beta, beta=beta,
                            include_background=False)  # fmt: skip
    torch.testing.assert_close(got, expected)
    half = seg_loss(logits, target, weight, tversky_beta=0.5)
    torch.testing.assert_close(half, seg_loss(logits, target, weight))


def test_seg_loss_checks_and_shows_tversky_beta():
    assert "tversky_beta=0.7" in repr(SegLoss(tversky_beta=0.7))
    assert SegLoss().options["tversky_beta"] is None
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="tversky_beta"):
            SegLoss(tversky_beta=bad)
        with pytest.raises(ValueError, match="tversky_beta"):
            seg_loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long),
                     tversky_beta=bad)  # fmt: skip
