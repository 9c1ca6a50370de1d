from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from featsup.losses import FeatureLoss, feature_loss
from featsup.losses.feature import standardise_channels


def eq16(x: np.ndarray, y: np.ndarray, beta: float) -> np.ndarray:
    """Paper eq. 16 as printed (Huber with threshold beta), element-wise, in numpy."""
    d = np.abs(x - y)
    return np.where(d < beta, 0.5 * d**2, beta * (d - 0.5 * beta))


def test_beta_one_is_the_paper_sl1_for_smooth_l1_and_huber():
    s, t = torch.randn(2, 8, 6, 6) * 3, torch.randn(2, 8, 6, 6) * 3
    expected = torch.tensor(float(eq16(s.numpy(), t.numpy(), 1.0).mean()))
    torch.testing.assert_close(feature_loss(s, t), expected)
    torch.testing.assert_close(feature_loss(s, t, kind="huber"), expected)
    total = torch.tensor(float(eq16(s.numpy(), t.numpy(), 1.0).sum()))
    torch.testing.assert_close(feature_loss(s, t, reduction="sum"), total)


@settings(max_examples=30, deadline=None)
@given(beta=st.floats(0.05, 5.0), scale=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_huber_matches_eq16_and_smooth_l1_matches_torch(beta, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) * scale
    t = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) * scale
    expected = torch.from_numpy(eq16(s.numpy(), t.numpy(), beta))
    torch.testing.assert_close(
        feature_loss(s, t, kind="huber", beta=beta, reduction="none"), expected
    )
    torch.testing.assert_close(
        feature_loss(s, t, beta=beta, reduction="none"),
        F.smooth_l1_loss(s, t, beta=beta, reduction="none"),
    )
    # smooth-L1 is the Huber loss divided by beta
    torch.testing.assert_close(feature_loss(s, t, beta=beta), expected.mean() / beta)


@settings(max_examples=30, deadline=None)
@given(beta=st.floats(1e-6, 1e-2), seed=st.integers(0, 2**16))
def test_tiny_beta_approaches_l1(beta, seed):
    gen = torch.Generator().manual_seed(seed)
    s, t = torch.randn(4, 16, generator=gen), torch.randn(4, 16, generator=gen)
    l1 = (s - t).abs().mean()
    value = feature_loss(s, t, beta=beta)
    assert 0.0 <= (l1 - value).item() <= beta / 2 + 1e-6


def test_mse_and_gradient_reaches_student_and_teacher():
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = feature_loss(s, t, kind="mse")
    torch.testing.assert_close(loss, ((s - t) ** 2).mean())
    loss.backward()
    assert s.grad is not None and t.grad is not None
    assert torch.count_nonzero(s.grad) > 0


def test_teacher_dtype_is_cast_to_student():
    s, t = torch.randn(2, 3), torch.randn(2, 3).double()
    out = feature_loss(s, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, feature_loss(s, t.float()))


def test_module_levels_and_weights():
    students = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    teachers = [torch.randn_like(x) for x in students]
    parts = [feature_loss(s, t) for s, t in zip(students, teachers, strict=True)]
    torch.testing.assert_close(FeatureLoss()(students, teachers), sum(parts) / 3)
    weighted = FeatureLoss(weights=[1.0, 0.0, 2.0], kind="smooth_l1")(students, teachers)
    torch.testing.assert_close(weighted, parts[0] + 2 * parts[2])
    single = FeatureLoss(kind="mse")(students[0], teachers[0])
    torch.testing.assert_close(single, feature_loss(students[0], teachers[0], kind="mse"))
    assert "kind='mse'" in repr(FeatureLoss(kind="mse"))


def test_errors():
    with pytest.raises(ValueError, match="did you mean 'smooth_l1'"):
        FeatureLoss(kind="smoth_l1")
    with pytest.raises(ValueError, match="beta"):
        FeatureLoss(kind="huber", beta=0.0)
    with pytest.raises(ValueError, match="same shape"):
        feature_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2))
    with pytest.raises(TypeError, match="teacher"):
        feature_loss(torch.zeros(2), [0.0, 0.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="levels"):
        FeatureLoss()([torch.zeros(2)], [torch.zeros(2), torch.zeros(2)])
    with pytest.raises(ValueError, match="one weight per level"):
        FeatureLoss(weights=[1.0])([torch.zeros(2)] * 2, [torch.zeros(2)] * 2)
    with pytest.raises(TypeError, match="mix"):
        FeatureLoss()(torch.zeros(2), [torch.zeros(2)])
    with pytest.raises(ValueError, match="'none'"):
        FeatureLoss(reduction="none")([torch.zeros(2)] * 2, [torch.zeros(2)] * 2)
    with pytest.raises(ValueError, match="weights"):
        FeatureLoss(weights=[-1.0])


def test_channel_norm_standardises_both_sides_and_module_equals_function():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 3, 5, 5, generator=g)
    z = standardise_channels(t)
    torch.testing.assert_close(z.mean((2, 3)), torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.var((2, 3), unbiased=False), torch.ones(2, 3), rtol=1e-3, atol=0)
    expected = F.smooth_l1_loss(standardise_channels(s), z)
    torch.testing.assert_close(feature_loss(s, t, feature_norm="channel"), expected)
    torch.testing.assert_close(FeatureLoss(feature_norm="channel")(s, t), expected)
    # blind to a per-channel scale and offset of the teacher; without the norm it is not
    scaled = t * torch.tensor([10.0, 0.1, 2.0])[None, :, None, None] + 3.0
    torch.testing.assert_close(feature_loss(s, scaled, feature_norm="channel"), expected,
                               rtol=1e-3, atol=1e-6)  # eps=1e-5 against var 0.01  # fmt: skip
    assert abs(feature_loss(s, scaled) - feature_loss(s, t)) > 0.1
    with pytest.raises(ValueError, match="feature_norm: expected one of"):
        feature_loss(s, t, feature_norm="batch")  # type: ignore[arg-type]


def test_terms_give_the_weighted_total_and_unweighted_levels():
    students = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]
    teachers = [torch.full((1, 2, 4, 4), 3.0), torch.ones(1, 2, 2, 2)]
    loss = FeatureLoss(kind="huber", beta=2.0, weights=[1.0, 3.0])
    total, parts = loss.terms(students, teachers)
    torch.testing.assert_close(parts[0], torch.tensor(2.0 * (3.0 - 1.0)))  # beta (|d| - beta/2)
    torch.testing.assert_close(parts[1], torch.tensor(0.5))  # 0.5 d^2
    torch.testing.assert_close(total, parts[0] + 3.0 * parts[1])
    torch.testing.assert_close(loss(students, teachers), total)
    assert loss.level_weights(2) == (1.0, 3.0) and FeatureLoss().level_weights(4) == (0.25,) * 4
    with pytest.raises(ValueError, match=r"weights: expected one weight per level \(3\), got 2"):
        loss.level_weights(3)


def test_a_callable_kind_is_applied_per_level_after_the_norm():
    seen = []

    def l1(s, t):
        seen.append(float(s.mean()))
        return (s - t).abs().mean()

    s, t = torch.full((1, 2, 3, 3), 5.0), torch.zeros(1, 2, 3, 3)
    s[..., 0, 0] = 0.0
    loss = FeatureLoss(kind=l1, feature_norm="channel")
    expected = (standardise_channels(s) - standardise_channels(t)).abs().mean()
    torch.testing.assert_close(loss(s, t), expected)
    assert abs(seen[-1]) < 1e-5  # the callable saw the standardised student
    assert "kind='l1'" in repr(loss) and "feature_norm='channel'" in repr(loss)
