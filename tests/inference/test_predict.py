from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from featsup.data import Preprocessing, preprocess_volume
from featsup.inference import (
    PreparedModel,
    heads_of,
    parse_head,
    predict_volume,
    prepare_model,
    select_head,
    stack_context,
)
from featsup.inference.predict import check_head, mean_head_logits
from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor


@pytest.mark.parametrize("head", [1, 2])
def test_predict_volume_equals_softmax_of_head(model: UNetPlusPlus, head: int) -> None:
    volume = np.random.default_rng(0).random((5, 24, 20)).astype(np.float32)
    probs = predict_volume(model, volume, head=head, batch_size=2, device="cpu")
    assert probs.shape == (2, 5, 24, 20) and probs.dtype == np.float32
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(volume)[:, None])[head - 1], 1)
    np.testing.assert_allclose(probs, expected.permute(1, 0, 2, 3).numpy(), atol=1e-5)


def test_predict_volume_resizes_and_mirrors(model: UNetPlusPlus) -> None:
    volume = np.random.default_rng(1).random((3, 40, 40)).astype(np.float32)
    probs = predict_volume(model, volume, size=32, tta=True, device="cpu")
    assert probs.shape == (2, 3, 40, 40)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # mirrored input gives the mirrored prediction when tta averages both
    flipped = predict_volume(model, volume[..., ::-1].copy(), size=32, tta=True, device="cpu")
    np.testing.assert_allclose(flipped[..., ::-1], probs, atol=1e-5)


def test_every_flip_tta_is_equivariant_to_each_flip(model: UNetPlusPlus) -> None:
    volume = np.random.default_rng(2).random((3, 24, 20)).astype(np.float32)
    probs = predict_volume(model, volume, tta="flips", device="cpu")
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    for axes in [(-1,), (-2,), (-2, -1)]:  # each flip of the input flips the mean of all four
        flipped = predict_volume(model, np.flip(volume, axes).copy(), tta="flips", device="cpu")
        np.testing.assert_allclose(np.flip(flipped, axes), probs, atol=1e-5)
    # and it is the mean of the four flipped predictions, flipped back
    x, flips = torch.from_numpy(volume)[:, None], [(), (-1,), (-2,), (-2, -1)]
    with torch.no_grad():
        mean = sum(torch.softmax(model(x.flip(a))[-1], 1).flip(a) for a in flips)
    np.testing.assert_allclose(probs, (mean / 4).permute(1, 0, 2, 3).numpy(), atol=1e-5)
    mirrored = predict_volume(model, volume, tta=True, device="cpu")
    assert np.abs(probs - mirrored).max() > 1e-4  # the up-down flips count


@pytest.mark.parametrize("tta", ["lr", 1.0, None, "both"])
def test_unknown_tta_is_refused(model: UNetPlusPlus, tta: object) -> None:
    with pytest.raises(ValueError, match="tta: expected False, True"):
        predict_volume(model, np.zeros((1, 8, 8), np.float32), tta=tta, device="cpu")  # type: ignore[arg-type]


def test_one_logit_model_gives_two_probabilities() -> None:
    net = UNetPlusPlus(1, 1, widths=(4, 8)).eval()
    probs = predict_volume(net, np.zeros((2, 16, 16), np.float32), device="cpu")
    assert probs.shape == (2, 2, 16, 16)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-6)


def test_select_head_prunes_unetpp_and_unwraps_student(model: UNetPlusPlus) -> None:
    pruned = select_head(model, 1)
    assert isinstance(pruned, UNetPlusPlus) and pruned.depth == 1 and not pruned.training

    teacher = UNetPlusPlus(2, 2, widths=(4, 8, 16), skip_connections=False)
    with FeatureSupervisor(model, teacher) as sup:  # recognised as such, not by a .student
        assert select_head(sup, None).depth == 2


def test_predict_volume_rejects_bad_shapes(model: UNetPlusPlus) -> None:
    with pytest.raises(ValueError, match="volume"):
        predict_volume(model, np.zeros((16, 16), np.float32), device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        predict_volume(model, np.zeros((2, 16, 16), np.float32), batch_size=0, device="cpu")


def test_stack_context_clamps_at_the_ends() -> None:
    volume = np.arange(4)[:, None, None] * np.ones((1, 2, 2))
    stacked = stack_context(volume, 2)
    assert stacked.shape == (4, 5, 2, 2)
    assert stacked[:, :, 0, 0].tolist() == [
        [0, 0, 0, 1, 2],
        [0, 0, 1, 2, 3],
        [0, 1, 2, 3, 3],
        [1, 2, 3, 3, 3],
    ]
    with pytest.raises(ValueError, match="context"):
        stack_context(volume, -1)


def test_prepared_model_is_used_as_is_and_matches_the_raw_model(
    model: UNetPlusPlus, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = np.random.default_rng(4).random((3, 16, 16)).astype(np.float32)
    prepared = prepare_model(model, head=1, device="cpu")
    assert isinstance(prepared, PreparedModel) and prepared.head == 1 and not prepared.training
    expected = predict_volume(model, volume, head=1, device="cpu")

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a prepared model was pruned again")

    monkeypatch.setattr(UNetPlusPlus, "pruned", fail)
    for _ in range(2):
        np.testing.assert_allclose(predict_volume(prepared, volume), expected, atol=1e-6)
    np.testing.assert_allclose(predict_volume(prepared, volume, head=1, device="cpu"), expected)


def test_prepared_model_rejects_another_head_or_device(model: UNetPlusPlus) -> None:
    prepared = prepare_model(model, head=1, device="cpu")
    volume = np.zeros((1, 16, 16), np.float32)
    with pytest.raises(ValueError, match="head: expected None or 1"):
        predict_volume(prepared, volume, head=2)
    with pytest.raises(ValueError, match="device"):
        predict_volume(prepared, volume, device="meta")
    with pytest.raises(TypeError, match="PreparedModel"):
        prepare_model(prepared)


def test_predict_volume_preprocesses_hu_with_the_given_preprocessing(model: UNetPlusPlus) -> None:
    hu = np.random.default_rng(5).integers(-300, 500, (3, 32, 32)).astype(np.int16)
    settings = Preprocessing(hu_window=(-200.0, 300.0), clahe=False)
    direct = predict_volume(model, hu, preprocessing=settings, device="cpu")
    manual = predict_volume(model, preprocess_volume(hu, preprocessing=settings), device="cpu")
    np.testing.assert_array_equal(direct, manual)
    with pytest.raises(TypeError, match="preprocessing"):
        predict_volume(model, hu, preprocessing={"clahe": False}, device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Hounsfield"):
        predict_volume(model, hu[:, None], preprocessing=settings, device="cpu")


def test_predict_volume_does_not_depend_on_the_batches(model: UNetPlusPlus) -> None:
    """Batches are written into one output: any batch size gives the one-batch result.

    Up to float32 rounding: oneDNN picks convolution kernels by batch size on some CPUs
    (a 2-core AMD EPYC: 7 of 6720 probabilities 6e-8 apart), far below what a slice
    written to the wrong place would change.
    """
    volume = np.random.default_rng(1).random((7, 24, 20)).astype(np.float32)
    whole = predict_volume(model, volume, head=2, batch_size=7, size=16, device="cpu")
    for batch_size in (1, 3):
        parts = predict_volume(model, volume, head=2, batch_size=batch_size, size=16, device="cpu")
        torch.testing.assert_close(
            torch.from_numpy(parts), torch.from_numpy(whole), rtol=0, atol=1e-6
        )
    assert whole.dtype == np.float32 and whole.flags.c_contiguous


def test_predict_volume_context_and_classes_match_the_full_stack() -> None:
    net = UNetPlusPlus(3, 2, widths=(4, 8)).eval()
    volume = np.random.default_rng(2).random((6, 16, 16)).astype(np.float32)
    full = predict_volume(net, stack_context(volume, 1), batch_size=6, device="cpu")
    ours = predict_volume(net, volume, context=1, classes=[1], batch_size=4, device="cpu")
    assert ours.shape == (1, 6, 16, 16)
    np.testing.assert_array_equal(ours[0], full[1])
    with pytest.raises(ValueError, match="classes"):
        predict_volume(net, volume, context=1, classes=[2], device="cpu")
    with pytest.raises(ValueError, match="context"):
        predict_volume(net, stack_context(volume, 1), context=1, device="cpu")
    with pytest.raises(ValueError, match="context"):
        predict_volume(net, volume, context=-1, device="cpu")


def test_stack_context_zero_is_a_view() -> None:
    volume = np.zeros((3, 4, 5), np.float32)
    stacked = stack_context(volume, 0)
    assert stacked.shape == (3, 1, 4, 5) and np.shares_memory(stacked, volume)
    assert not np.shares_memory(stack_context(volume, 1), volume)


def test_all_heads_in_one_pass_equal_each_pruned_head(model: UNetPlusPlus) -> None:
    volume = np.random.default_rng(7).random((5, 40, 36)).astype(np.float32)
    every = predict_volume(model, volume, head="all", size=32, tta=True, batch_size=2)
    assert every.shape == (2, 2, 5, 40, 36)
    for head in (1, 2):
        one = predict_volume(model, volume, head=head, size=32, tta=True, batch_size=3)
        np.testing.assert_allclose(every[head - 1], one, atol=1e-6)
    prepared = prepare_model(model, head="all", device="cpu")
    assert isinstance(prepared(torch.zeros(1, 1, 16, 16)), list)
    assert predict_volume(prepared, volume, classes=[1]).shape == (2, 1, 5, 40, 36)
    model.deep_supervision = False  # trained without: every head is still there
    assert predict_volume(model, volume, head="all").shape[0] == 2 and heads_of(model) == 2


def test_all_heads_of_a_plain_model_is_its_one_output() -> None:
    conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    volume = np.random.default_rng(8).random((3, 16, 16)).astype(np.float32)
    every = predict_volume(conv, volume, head="all", device="cpu")
    np.testing.assert_allclose(every[0], predict_volume(conv, volume, device="cpu"), atol=1e-6)
    assert every.shape == (1, 2, 3, 16, 16) and heads_of(conv) == 1


def test_mean_head_is_the_mean_of_every_heads_probabilities(model: UNetPlusPlus) -> None:
    volume = np.random.default_rng(9).random((4, 40, 36)).astype(np.float32)
    every = predict_volume(model, volume, head="all", size=32, tta=True, batch_size=3)
    mean = predict_volume(model, volume, head="mean", size=32, tta=True, batch_size=2)
    assert mean.shape == (2, 4, 40, 36)
    np.testing.assert_allclose(mean, every.mean(0), atol=1e-6)
    np.testing.assert_allclose(mean.sum(0), 1.0, atol=1e-5)
    prepared = prepare_model(model, head="mean", device="cpu")
    assert isinstance(prepared(torch.zeros(1, 1, 16, 16)), torch.Tensor)
    np.testing.assert_allclose(predict_volume(prepared, volume, size=32, tta=True), mean, atol=1e-6)
    with pytest.raises(ValueError, match="head"):
        prepare_model(model, head=0, device="cpu")


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 3), st.sampled_from([1, 2, 3])),
           elements=st.floats(-60, 60, width=32)),
)  # fmt: skip
def test_mean_head_logits_give_the_mean_probability_even_for_large_logits(z: np.ndarray) -> None:
    heads = [torch.from_numpy(h) for h in z]  # (N, B, K): N heads of (B, K) logits
    out = mean_head_logits(heads)
    assert out.shape == heads[0].shape and torch.isfinite(out).all()
    if z.shape[-1] == 1:  # one logit: sigmoid heads
        expected = torch.stack([torch.sigmoid(h) for h in heads]).mean(0)
        got = torch.sigmoid(out)
    else:
        expected = torch.stack([h.softmax(-1) for h in heads]).mean(0)
        got = out.softmax(-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    if len(heads) == 1 and z.shape[-1] > 1:  # one head: its own probabilities
        torch.testing.assert_close(got, heads[0].softmax(-1), atol=1e-6, rtol=1e-5)


def test_heads_are_checked_and_parsed_with_clear_messages() -> None:
    assert [check_head("h", h) for h in (None, 1, np.int64(3), "mean")] == [None, 1, 3, "mean"]
    for bad in (0, -1, True, "all", "max", 2.0):
        with pytest.raises(ValueError, match=r"h: expected a head 1\.\.d"):
            check_head("h", bad)
    assert parse_head("4") == 4 and parse_head("mean") == "mean"
    for bad in ("0", "x", "all"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a head"):
            parse_head(bad)
    with pytest.raises(ValueError, match="none"):
        mean_head_logits([])


def test_a_numpy_head_picks_that_head_of_a_plain_model_with_a_list_output() -> None:
    class TwoHeads(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [torch.cat([x, -x], 1), torch.cat([-x, x], 1)]

    volume = np.random.default_rng(10).random((2, 8, 8)).astype(np.float32)
    first = predict_volume(TwoHeads(), volume, head=np.int64(1), device="cpu")
    np.testing.assert_allclose(first, predict_volume(TwoHeads(), volume, head=1, device="cpu"))
    assert not np.allclose(first, predict_volume(TwoHeads(), volume, device="cpu"))  # the last
