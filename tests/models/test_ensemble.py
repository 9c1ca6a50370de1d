"""Ensemble: the averaged probabilities, pruning, inference copies, saving, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from featsup.inference import Cascade, load_cascade, predict_volume, prepare_model, save_cascade
from featsup.inference.predict import heads_of, select_head
from featsup.models import Ensemble, UNetPlusPlus, mean_probability_logits


def _members(k: int = 2, **options: object) -> list[UNetPlusPlus]:
    members = []
    for seed in range(k):
        torch.manual_seed(seed)
        members.append(UNetPlusPlus(1, 3, widths=(4, 8, 8), **options).eval())  # type: ignore[arg-type]
    return members


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, (3, 2, 4), elements=st.floats(-30, 30, width=32)),
)
def test_mean_probability_logits_softmax_to_the_mean_probability(logits: np.ndarray) -> None:
    z = [torch.from_numpy(a.copy()) for a in logits]  # three (2, 4) logits, classes on axis 1
    mean = torch.stack([t.softmax(1) for t in z]).mean(0)
    got = mean_probability_logits(z)
    assert torch.isfinite(got).all()  # no log(0), however confident a member is
    assert torch.allclose(got.softmax(1), mean, atol=1e-5)
    assert torch.allclose(mean_probability_logits(z[:1]).softmax(1), z[0].softmax(1), atol=1e-5)
    one = [t[:, :1] for t in z]  # one channel: the mean sigmoid
    mean_sigmoid = torch.stack([t.sigmoid() for t in one]).mean(0)
    got_one = mean_probability_logits(one)
    assert torch.isfinite(got_one).all()
    assert torch.allclose(got_one.sigmoid(), mean_sigmoid, atol=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        mean_probability_logits([])


def test_every_head_averages_the_members_probabilities() -> None:
    members = _members()
    both = Ensemble(members).eval()
    x = torch.randn(2, 1, 16, 16)
    heads = both(x)
    assert isinstance(heads, list) and len(heads) == 2  # deep supervision: one per head
    for k in range(2):
        mean = sum(m(x)[k].softmax(1) for m in members) / 2
        assert torch.allclose(heads[k].softmax(1), mean, atol=1e-5)
    assert (both.in_channels, both.num_classes, both.depth, both.spatial_dims) == (1, 3, 2, 2)


def test_pruned_and_optimised_copies_compute_the_same_head() -> None:
    both = Ensemble(_members()).eval()
    x = torch.randn(1, 1, 16, 16)
    full = both(x)
    for head in (1, 2):
        small = both.pruned(head)
        assert all(m.depth == head for m in small.members)  # each member really pruned
        assert torch.allclose(small(x).softmax(1), full[head - 1].softmax(1), atol=1e-5)
        fast = both.pruned(head, optimize=True)
        assert torch.allclose(fast(x).softmax(1), full[head - 1].softmax(1), atol=1e-4)
    with pytest.raises(ValueError, match="head"):
        both.pruned(3)
    whole = select_head(both, "all")  # every head from one pass, as prepare_model(head="all")
    for got, want in zip(whole(x), full, strict=True):
        assert torch.allclose(got.softmax(1), want.softmax(1), atol=1e-4)
    assert heads_of(both) == 2


def test_gradients_reach_every_member() -> None:
    both = Ensemble(_members()).train()
    x = torch.randn(2, 1, 16, 16)
    loss = sum(h.logsumexp(1).mean() - h[:, 0].mean() for h in both(x))
    loss.backward()  # type: ignore[union-attr]
    for member in both.members:
        grads = [p.grad for p in member.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_config_rebuilds_it_and_a_cascade_file_keeps_it(tmp_path) -> None:
    both = Ensemble(_members()).eval()
    again = Ensemble.from_config(both.config)
    again.load_state_dict(both.state_dict())
    x = torch.randn(1, 1, 16, 16)
    assert torch.allclose(again.eval()(x)[-1], both(x)[-1])
    liver = UNetPlusPlus(1, 2, widths=(4, 8))
    tumour = Ensemble([UNetPlusPlus(1, 2, widths=(4, 8)), UNetPlusPlus(1, 2, widths=(4, 8))])
    cascade = Cascade(liver, tumour.eval(), liver_size=32, tumour_size=32, device="cpu")
    path = save_cascade(cascade, tmp_path / "cascade.pt")
    loaded = load_cascade(path, device="cpu")
    assert isinstance(loaded.tumour_model, Ensemble) and len(loaded.tumour_model.members) == 2
    volume = np.random.default_rng(0).normal(60, 40, (3, 40, 40)).astype(np.float32)
    volume[:, 8:32, 8:32] += 60  # something for the liver stage to find, or not
    first, second = cascade(volume), loaded(volume)
    assert np.allclose(first.tumour_probability, second.tumour_probability, atol=1e-5)
    assert np.array_equal(first.labels, second.labels)


def test_predict_volume_takes_an_ensemble_like_one_model() -> None:
    both = Ensemble(_members())
    image = np.random.default_rng(1).normal(size=(3, 16, 16)).astype(np.float32)
    for head in (1, 2):
        got = predict_volume(prepare_model(both, head=head, device="cpu"), image)
        parts = [predict_volume(prepare_model(m, head=head, device="cpu"), image)
                 for m in both.members]  # fmt: skip
        assert got.shape == (3, 3, 16, 16)
        assert np.allclose(got, np.mean(parts, axis=0), atol=1e-4)


def test_bad_members_are_refused_with_a_fix() -> None:
    with pytest.raises(ValueError, match="at least one model"):
        Ensemble([])
    with pytest.raises(TypeError, match="UNetPlusPlus"):
        Ensemble([UNetPlusPlus(1, 2, widths=(4, 8)), torch.nn.Conv2d(1, 2, 1)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="num_classes"):
        Ensemble([UNetPlusPlus(1, 2, widths=(4, 8)), UNetPlusPlus(1, 3, widths=(4, 8))])
    with pytest.raises(ValueError, match="depth"):
        Ensemble([UNetPlusPlus(1, 2, widths=(4, 8)), UNetPlusPlus(1, 2, widths=(4, 8, 8))])
    with pytest.raises(ValueError, match="members"):
        Ensemble.from_config({"widths": [4, 8]})
