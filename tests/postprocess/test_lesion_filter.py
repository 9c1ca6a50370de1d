"""The tumour filter: what it sees of a component, how it drops them, how it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from featsup.postprocess import (
    LesionFilter,
    component_inputs,
    drop_unlikely_tumours,
    fit_lesion_filter,
    tumour_components,
)
from featsup.postprocess.lesion_filter import FEATURES, PATCH


def test_component_inputs_centre_on_the_peak_and_describe_the_component() -> None:
    image = np.full((5, 60, 60), 10.0, np.float32)
    image[1:4, 20:26, 30:34] = 4.0  # the lesion, darker than the liver (10)
    image[2, 21, 31] = 1.0
    prob = np.zeros_like(image)
    prob[1:4, 20:26, 30:34] = 0.6
    prob[2, 22, 32] = 0.95  # the peak
    components, count = tumour_components(np.where(prob > 0.5, 2, 1).astype(np.uint8))
    patches, features = component_inputs(image, prob, components, count, np.ones_like(prob, bool))
    assert patches.shape == (1, 6, PATCH, PATCH) and features.shape == (1, len(FEATURES))
    half = PATCH // 2
    np.testing.assert_array_equal(
        patches[0, 3:], prob[1:4, 22 - half : 22 + half, 32 - half : 32 + half]
    )
    np.testing.assert_array_equal(
        patches[0, :3], image[1:4, 22 - half : 22 + half, 32 - half : 32 + half]
    )
    lesion = image[1:4, 20:26, 30:34]
    expected = [np.log(72), 0.95, (71 * 0.6 + 0.95) / 72, 3, lesion.mean() - 10.0, lesion.std()]
    np.testing.assert_allclose(features[0], expected, rtol=1e-5)


def test_component_inputs_repeat_the_edge_and_refuse_other_shapes() -> None:
    image = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    prob = np.zeros_like(image)
    prob[0, 0, 0] = 0.9  # a one-voxel component at the corner, in the first slice
    components, count = tumour_components(np.where(prob > 0.5, 2, 0).astype(np.uint8))
    patches, features = component_inputs(image, prob, components, count)
    assert patches[0, 0, 0, 0] == image[0, 0, 0] and patches[0, 0, -1, -1] == image[0, 7, 7]
    np.testing.assert_array_equal(patches[0, 0], patches[0, 1])  # slice -1 repeats slice 0
    assert features[0, 0] == 0.0 and features[0, 3] == 1  # log 1, one slice
    empty, none = component_inputs(image, np.zeros_like(prob), np.zeros((2, 8, 8), int), 0)
    assert empty.shape == (0, 6, PATCH, PATCH) and none.shape == (0, len(FEATURES))
    with pytest.raises(ValueError, match="one \\(D, H, W\\) shape"):
        component_inputs(image, prob[:1], components, count)


@settings(max_examples=40, deadline=None)
@given(
    labels=arrays(np.uint8, (3, 6, 6), elements=st.integers(0, 2)),
    keep=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_drop_unlikely_tumours_keeps_the_scored_ones_only(labels, keep, seed) -> None:
    components, count = tumour_components(labels)
    scores = np.random.default_rng(seed).random(count).astype(np.float32)
    liver = np.random.default_rng(seed + 1).random(labels.shape) > 0.3
    out = drop_unlikely_tumours(labels, components, scores, keep, liver)
    kept = np.concatenate([[False], scores >= keep])[components]
    np.testing.assert_array_equal(out == 2, kept)  # exactly the components scored >= keep
    gone = (labels == 2) & ~kept
    np.testing.assert_array_equal(out[gone], np.where(liver[gone], 1, 0))
    np.testing.assert_array_equal(out[labels != 2], labels[labels != 2])  # the rest unchanged
    np.testing.assert_array_equal(drop_unlikely_tumours(labels, components, scores, 0.0), labels)
    higher = drop_unlikely_tumours(labels, components, scores, min(1.0, keep + 0.2), liver)
    assert not ((higher == 2) & (out != 2)).any()  # a higher keep drops more, never fewer


def test_drop_unlikely_tumours_refuses_a_wrong_number_of_scores() -> None:
    labels = np.array([[[2, 0, 2]]], np.uint8)
    components, _ = tumour_components(labels)
    with pytest.raises(ValueError, match="one per component"):
        drop_unlikely_tumours(labels, components, np.array([0.5]), 0.5)
    with pytest.raises(ValueError, match="keep"):
        drop_unlikely_tumours(labels, components, np.array([0.5, 0.5]), 1.5)


def _toy(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True components: a bright blob in the patch's centre; false ones: noise only."""
    rng = np.random.default_rng(seed)
    patches = rng.normal(0, 0.3, (n, 6, PATCH, PATCH)).astype(np.float32)
    targets = np.arange(n) % 3 == 0
    patches[targets, :, 12:20, 12:20] += 2.0
    features = rng.normal(0, 1, (n, len(FEATURES))).astype(np.float32)  # no information
    return patches, features, targets


def test_fit_learns_from_the_patches_and_is_seeded() -> None:
    patches, features, targets = _toy()
    state = torch.random.get_rng_state()
    net, info = fit_lesion_filter(patches, features, targets, steps=60, width=4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG left alone
    assert info["candidates"] == 60 and info["true"] == 20 and info["steps"] == 60
    fresh, fresh_features, fresh_targets = _toy(seed=1)
    scores = net.score(fresh, fresh_features)
    assert scores[fresh_targets].min() > scores[~fresh_targets].max()  # separates new ones
    again, _ = fit_lesion_filter(patches, features, targets, steps=60, width=4, seed=3)
    np.testing.assert_allclose(again.score(fresh, fresh_features), scores, atol=1e-6)


def test_score_is_the_same_for_every_view_of_a_patch() -> None:
    patches, features, _ = _toy(8)
    net = LesionFilter(width=4).eval()
    scores = net.score(patches, features)
    for view in (
        np.rot90(patches, 1, (-2, -1)),
        patches[..., ::-1],
        np.rot90(patches, 3, (-2, -1)),
    ):
        np.testing.assert_allclose(
            net.score(np.ascontiguousarray(view), features), scores, atol=1e-5
        )


def test_fit_refuses_one_class_and_bad_shapes() -> None:
    patches, features, targets = _toy(12)
    with pytest.raises(ValueError, match="true and false components"):
        fit_lesion_filter(patches, features, np.zeros(12, bool), steps=2)
    with pytest.raises(ValueError, match="expected \\(N, 6"):
        fit_lesion_filter(patches[:, :3], features, targets, steps=2)
    with pytest.raises(ValueError, match="patches, features"):
        LesionFilter(4)(torch.zeros(2, 6, PATCH, PATCH), torch.zeros(3, 6))
