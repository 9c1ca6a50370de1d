from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from featsup.losses import (
    BlobDiceLoss,
    SegLoss,
    blob_dice_loss,
    dice_loss,
    label_components,
    seg_loss,
)

BIG = 200.0  # logits this large give hard (0/1) probabilities in float32


def _hard_logits(pred: torch.Tensor, classes: int = 2) -> torch.Tensor:
    """(B, C, *spatial) logits whose softmax is the one-hot of the label map ``pred``."""
    hot = torch.nn.functional.one_hot(pred.long(), classes).movedim(-1, 1).float()
    return (hot * 2 - 1) * BIG


def _maps(seed: int, size: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(batch, size, size + 1, generator=g) > 0.7).long()
    logits = torch.randn(batch, 2, size, size + 1, generator=g) * 3
    return logits, target


def test_components_are_per_sample_and_follow_connectivity() -> None:
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # diagonal neighbours
    mask[1, 3, 3] = True
    full, faces = label_components(mask), label_components(mask, connectivity=1)
    assert full[0].amax() == 1 and faces[0].amax() == 2
    assert full[1].amax() == 1 and full[1, 3, 3] == 1  # numbering restarts per sample
    three_d = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    three_d[0, 0, 0, 0] = three_d[0, 1, 1, 1] = True  # corner neighbours in 3D
    assert label_components(three_d).amax() == 1
    assert label_components(three_d, connectivity=2).amax() == 2
    with pytest.raises(ValueError, match="connectivity"):
        label_components(mask, connectivity=3)
    with pytest.raises(ValueError, match="spatial"):
        label_components(torch.zeros(2, dtype=torch.bool))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.integers(2, 7))
def test_one_term_per_component_bounded_and_differentiable(seed: int, size: int) -> None:
    logits, target = _maps(seed, size)
    logits.requires_grad_(True)
    terms = blob_dice_loss(logits, target, reduction="none")
    lesions = sum(
        ndimage.label(t.numpy(), structure=np.ones((3, 3)))[1] for t in target
    )  # scipy's own count, 8-connected
    assert terms.shape == (lesions,)
    assert bool(((terms >= 0) & (terms <= 1)).all())
    loss = blob_dice_loss(logits, target)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    if lesions:
        torch.testing.assert_close(loss, terms.mean())
        assert logits.grad.abs().sum() > 0
    else:
        assert loss.item() == 0.0 and logits.grad.abs().sum() == 0
        assert loss.dtype == torch.float32


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.integers(3, 8))
def test_one_lesion_a_sample_is_the_samples_dice(seed: int, size: int) -> None:
    # with a single component the region is the whole image: the foreground Dice per sample
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(3, size, size, dtype=torch.long)
    for b in range(3):
        r, c = torch.randint(0, size - 1, (2,), generator=g).tolist()
        target[b, r : r + 2, c : c + 2] = 1
    logits = torch.randn(3, 2, size, size, generator=g) * 2
    expected = dice_loss(logits, target, include_background=False, reduction="none")[:, 0]
    torch.testing.assert_close(blob_dice_loss(logits, target, reduction="none"), expected)


@settings(max_examples=30, deadline=None)
@given(small=st.integers(1, 3), big=st.integers(8, 12))
def test_a_missed_lesion_costs_one_whatever_its_size(small: int, big: int) -> None:
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, :small, :small] = 1
    target[0, 15 - big + 1 :, 15 - big + 1 :] = 1
    found_big = target.clone()
    found_big[0, :small, :small] = 0  # the small lesion missed, the big one exact
    found_small = target.clone()
    found_small[0, 15 - big + 1 :, 15 - big + 1 :] = 0
    for pred in (found_big, found_small):
        terms = blob_dice_loss(_hard_logits(pred), target, reduction="none")
        assert sorted(round(v, 4) for v in terms.tolist()) == [0.0, 1.0]
    # the per-image Dice, by contrast, hardly sees the small one missed
    dice_big = dice_loss(_hard_logits(found_big), target, include_background=False)
    dice_small = dice_loss(_hard_logits(found_small), target, include_background=False)
    assert dice_big.item() < 0.1 < 0.5 < dice_small.item()


def test_other_lesions_are_masked_out_false_positives_are_not() -> None:
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 0:2, 0:2] = 1
    target[0, 5:8, 5:8] = 1
    pred = target.clone()
    pred[0, 5:8, 5:8] = 0  # second lesion missed: the first's term stays exact
    terms = blob_dice_loss(_hard_logits(pred), target, reduction="none")
    assert terms.tolist() == pytest.approx([0.0, 1.0], abs=1e-5)
    pred[0, 3, 3] = 1  # one false pixel away from both: each lesion's region holds it
    first, second = blob_dice_loss(_hard_logits(pred), target, reduction="none").tolist()
    assert first == pytest.approx(1 - 8 / 9, abs=1e-5)
    assert second == pytest.approx(1.0, abs=1e-5)


def test_classes_sigmoid_one_hot_and_3d() -> None:
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[0, 0, 0], target[0, 3:5, 3:5] = 1, 2  # one lesion of each foreground class
    logits = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    terms = blob_dice_loss(logits, target, reduction="none")
    assert terms.shape == (2,)  # the background is never a blob
    hot = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    torch.testing.assert_close(blob_dice_loss(logits, hot, reduction="none"), terms)
    binary = (target > 0).long()
    sigmoid = blob_dice_loss(logits[:, :1], binary, reduction="none")
    assert sigmoid.shape == (2,)  # two separate components of the one channel
    volume = torch.zeros(1, 3, 4, 4, dtype=torch.long)
    volume[0, 0, 0, 0] = volume[0, 1, 1, 1] = 1  # corner neighbours: one 3D lesion
    assert blob_dice_loss(torch.randn(1, 2, 3, 4, 4), volume, reduction="none").shape == (1,)
    assert blob_dice_loss(logits, target, reduction="sum").item() == pytest.approx(
        terms.sum().item()
    )


def test_bfloat16_logits_give_a_float32_loss() -> None:
    logits, target = _maps(3, 6)
    loss = blob_dice_loss(logits.bfloat16(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(blob_dice_loss(logits, target).item(), abs=0.02)


def test_bad_inputs_are_refused() -> None:
    logits, target = _maps(0, 4)
    with pytest.raises(ValueError, match="reduction"):
        blob_dice_loss(logits, target, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="smooth"):
        blob_dice_loss(logits, target, smooth=-1.0)
    with pytest.raises(ValueError, match="labels"):
        blob_dice_loss(logits, target + 2)
    with pytest.raises(ValueError, match="target"):
        blob_dice_loss(logits, target[:, :2])
    with pytest.raises(TypeError, match="floating"):
        blob_dice_loss(logits.long(), target)
    with pytest.raises(ValueError, match="smooth"):
        BlobDiceLoss(smooth=-1.0)


def test_seg_loss_adds_the_blob_term_with_its_weight() -> None:
    logits, target = _maps(5, 6)
    base = seg_loss(logits, target, include_background=False)
    blob = blob_dice_loss(logits, target)
    with_blob = seg_loss(logits, target, include_background=False, blob_weight=0.5)
    torch.testing.assert_close(with_blob, base + 0.5 * blob)
    module = SegLoss(include_background=False, blob_weight=0.5)
    torch.testing.assert_close(module(logits, target), with_blob)
    assert "blob_weight=0.5" in repr(module)
    with pytest.raises(ValueError, match="blob_weight"):
        seg_loss(logits, target, blob_weight=-1.0)
    with pytest.raises(ValueError, match="blob_weight"):
        SegLoss(blob_weight=-1.0)
    torch.testing.assert_close(BlobDiceLoss()(logits, target), blob)


def test_no_lesion_gives_a_float32_zero_with_a_zero_gradient() -> None:
    logits = torch.randn(2, 2, 5, 5, dtype=torch.bfloat16, requires_grad=True)
    loss = blob_dice_loss(logits, torch.zeros(2, 5, 5, dtype=torch.long))
    loss.backward()
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    assert logits.grad is not None and not logits.grad.float().abs().any()
    empty = blob_dice_loss(logits, torch.zeros(2, 5, 5, dtype=torch.long), reduction="none")
    assert empty.shape == (0,)
