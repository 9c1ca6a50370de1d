from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from featsup.metrics import dice_score
from featsup.postprocess import (
    drop_small_tumours,
    drop_surface_tumours,
    label_tumours,
    tumour_counts_by_min_voxels,
    tumour_dice_by_min_voxels,
)

labels_3d = arrays(np.uint8, st.tuples(*(st.integers(1, 6),) * 3), elements=st.integers(0, 2))
probabilities_3d = arrays(
    np.float32, st.tuples(*(st.integers(1, 6),) * 3), elements=st.floats(0, 1, width=32)
)
masks_3d = arrays(bool, st.tuples(*(st.integers(1, 6),) * 3))  # resized to the probabilities'


@settings(max_examples=60, deadline=None)
@given(labels_3d, st.integers(0, 12))
def test_drop_small_tumours_keeps_exactly_the_large_components(labels, min_voxels) -> None:
    out = drop_small_tumours(labels.copy(), min_voxels)
    assert ((out == 0) == (labels == 0)).all()  # the liver (label > 0) never changes
    assert ((out == 2) <= (labels == 2)).all()  # tumour only shrinks
    components, count = ndimage.label(labels == 2, structure=np.ones((3, 3, 3)))
    for k in range(1, count + 1):
        part = components == k
        kept = (out[part] == 2).all()
        assert kept == (part.sum() >= min_voxels or min_voxels <= 1)
        assert kept or (out[part] == 1).all()


@settings(max_examples=60, deadline=None)
@given(labels_3d, labels_3d, st.lists(st.integers(0, 12), min_size=1, max_size=4))
def test_dice_by_min_voxels_is_the_dice_after_dropping(pred, truth, sizes) -> None:
    truth = np.resize(truth, pred.shape)
    swept = tumour_dice_by_min_voxels(pred, truth, sizes)
    for size, dice in zip(sizes, swept, strict=True):
        dropped = drop_small_tumours(pred.copy(), size)
        assert dice == pytest.approx(dice_score(dropped == 2, truth == 2))


@settings(max_examples=60, deadline=None)
@given(labels_3d, labels_3d, st.lists(st.integers(0, 12), min_size=1, max_size=4))
def test_counts_by_min_voxels_are_the_overlap_after_dropping(pred, truth, sizes) -> None:
    truth = np.resize(truth, pred.shape)
    counts = tumour_counts_by_min_voxels(pred, truth, sizes)
    assert counts.shape == (len(sizes), 3) and counts.dtype == np.int64
    for size, row in zip(sizes, counts, strict=True):
        kept = drop_small_tumours(pred.copy(), size) == 2
        assert row.tolist() == [(kept & (truth == 2)).sum(), kept.sum(), (truth == 2).sum()]


def test_diagonal_neighbours_are_one_component_and_shapes_must_match() -> None:
    labels = np.ones((2, 4, 4), np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = 2  # touching at a corner only
    assert (drop_small_tumours(labels.copy(), 2) == 2).sum() == 2
    assert (drop_small_tumours(labels.copy(), 3) == 2).sum() == 0
    with pytest.raises(ValueError, match="shape"):
        tumour_dice_by_min_voxels(labels, labels[:1])
    with pytest.raises(ValueError, match="shape"):
        tumour_counts_by_min_voxels(labels, labels[:1])


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, st.tuples(*(st.integers(1, 6),) * 3), elements=st.floats(0, 1, width=32)),
    st.floats(0, 1),
    st.floats(0, 1),
    st.integers(0, 5),
)
def test_label_tumours_thresholds_inside_the_liver(prob, low, high, min_voxels) -> None:
    low, high = sorted((low, high))
    liver = prob > 0.1  # a mask that cuts some tumour probability off
    labels = label_tumours(liver, prob, threshold=low)
    assert ((labels > 0) == liver).all()  # the liver never changes
    assert ((labels == 2) == (liver & (prob > low))).all()
    higher = label_tumours(liver, prob, threshold=high, min_voxels=min_voxels)
    assert ((higher == 2) <= (labels == 2)).all()  # a higher threshold only shrinks tumours
    np.testing.assert_array_equal(
        higher, drop_small_tumours(label_tumours(liver, prob, threshold=high), min_voxels)
    )
    with pytest.raises(ValueError, match="shape"):
        label_tumours(liver, prob[:0])


@settings(max_examples=60, deadline=None)
@given(
    probabilities_3d,
    masks_3d,
    st.floats(0, 1),
    st.integers(0, 5),
)
def test_label_tumours_roi_scope_keeps_touching_tumours_whole(prob, liver, threshold,
                                                              min_voxels) -> None:  # fmt: skip
    liver = np.resize(liver, prob.shape)
    inside = label_tumours(liver, prob, threshold=threshold, min_voxels=min_voxels)
    labels = label_tumours(liver, prob, threshold=threshold, min_voxels=min_voxels, scope="roi")
    tumour = labels == 2
    assert ((labels > 0) == (liver | tumour)).all()  # the liver grows by its tumours alone
    assert ((inside == 2) <= tumour).all()  # every tumour the liver scope finds, and more
    assert (tumour <= (prob > threshold)).all()
    components, count = ndimage.label(tumour, structure=np.ones((3, 3, 3)))
    for k in range(1, count + 1):  # each kept whole: touching the liver, large enough
        part = components == k
        assert (part & liver).any() and (part.sum() >= min_voxels or min_voxels <= 1)
    if ((prob > threshold) <= liver).all():  # nothing outside the liver: the scopes agree
        np.testing.assert_array_equal(labels, inside)


@settings(max_examples=60, deadline=None)
@given(
    probabilities_3d,
    masks_3d,
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_label_tumours_min_inside_keeps_the_components_mostly_inside(
    prob, liver, threshold, min_inside
) -> None:
    liver = np.resize(liver, prob.shape)
    touch = label_tumours(liver, prob, threshold=threshold, scope="roi")
    labels = label_tumours(liver, prob, threshold=threshold, scope="roi", min_inside=min_inside)
    assert ((labels == 2) <= (touch == 2)).all()  # a subset of the touching ones
    assert ((labels > 0) == (liver | (labels == 2))).all()
    components, count = ndimage.label(touch == 2, structure=np.ones((3, 3, 3)))
    for k in range(1, count + 1):  # each touching component: kept whole or dropped whole
        part = components == k
        share = (part & liver).sum() / part.sum()
        assert (labels[part] == 2).all() if share >= min_inside else not (labels[part] == 2).any()
    # the liver scope finds only voxels inside the liver: min_inside changes nothing there
    np.testing.assert_array_equal(label_tumours(liver, prob, threshold=threshold),
                                  label_tumours(liver, prob, threshold=threshold,
                                                min_inside=min_inside))  # fmt: skip


def test_label_tumours_min_inside_example_and_bad_share() -> None:
    liver = np.zeros((1, 1, 8), bool)
    liver[..., :4] = True
    # a lesion three quarters inside the liver, and dark tissue one quarter inside it
    prob = np.array([[[0.0, 0.9, 0.9, 0.9, 0.9, 0.0, 0.0, 0.0]]], np.float32)
    assert label_tumours(liver, prob, scope="roi", min_inside=0.5).tolist() == [
        [[1, 2, 2, 2, 2, 0, 0, 0]]
    ]
    prob = np.array([[[0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9, 0.0]]], np.float32)
    assert label_tumours(liver, prob, scope="roi").tolist() == [[[1, 1, 1, 2, 2, 2, 2, 0]]]
    assert label_tumours(liver, prob, scope="roi", min_inside=0.5).tolist() == [
        [[1, 1, 1, 1, 0, 0, 0, 0]]
    ]
    for share in (-0.1, 1.5):
        with pytest.raises(ValueError, match="min_inside"):
            label_tumours(liver, prob, scope="roi", min_inside=share)


def test_label_tumours_roi_scope_example_and_bad_scope() -> None:
    liver = np.zeros((1, 1, 6), bool)
    liver[..., :3] = True
    prob = np.array([[[0.0, 0.0, 0.9, 0.9, 0.0, 0.9]]], np.float32)
    # the lesion across the liver's edge is kept whole; the one apart from it is not
    assert label_tumours(liver, prob, scope="roi").tolist() == [[[1, 1, 2, 2, 0, 0]]]
    assert label_tumours(liver, prob).tolist() == [[[1, 1, 2, 0, 0, 0]]]
    # dropped for size: its part outside the liver goes back to background
    assert label_tumours(liver, prob, scope="roi", min_voxels=3).tolist() == [[[1, 1, 1, 0, 0, 0]]]
    with pytest.raises(ValueError, match="scope"):
        label_tumours(liver, prob, scope="organ")  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(labels_3d, st.integers(1, 3), st.sampled_from([0.5, 0.8, 0.95, 1.0]))
def test_surface_tumours_only_become_liver_and_a_deeper_or_laxer_shell_drops_more(
    labels: np.ndarray, depth: int, fraction: float
) -> None:
    kept = drop_surface_tumours(labels, depth, fraction)
    assert kept.dtype == labels.dtype and kept is not labels
    assert ((kept > 0) == (labels > 0)).all()  # the liver is unchanged
    assert not ((kept == 2) & (labels != 2)).any()  # no tumour is added
    lost = (labels == 2) & (kept != 2)
    components = ndimage.label(labels == 2, structure=np.ones((3, 3, 3)))[0]
    assert not (np.isin(components, np.unique(components[lost])) & (kept == 2)).any()  # whole
    for laxer in (drop_surface_tumours(labels, depth + 1, fraction),
                  drop_surface_tumours(labels, depth, fraction / 2)):  # fmt: skip
        assert not ((laxer == 2) & (kept != 2)).any()


def test_a_surface_tumour_goes_and_a_deep_one_stays() -> None:
    labels = np.zeros((7, 12, 12), np.uint8)
    labels[1:6, 1:11, 1:11] = 1
    labels[3, 1, 4:7] = 2  # 3 voxels, all in the outer layer
    labels[2:5, 5:8, 5:8] = 2  # 27 voxels, none in it
    labels[1:3, 8:10, 1:3] = 2  # 8 voxels, 6 in the outer layer
    assert (drop_surface_tumours(labels, 1, 0.95) == 2).sum() == 35
    assert (drop_surface_tumours(labels, 1, 0.75) == 2).sum() == 27
    assert (drop_surface_tumours(labels, 2, 0.95) == 2).sum() == 27  # 2 deep: all 8 inside
    for depth, fraction in ((0, 0.9), (1.5, 0.9), (1, 0.0), (1, 1.2)):
        with pytest.raises(ValueError, match=r"depth|fraction"):
            drop_surface_tumours(labels, depth, fraction)  # type: ignore[arg-type]
