from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featsup.data import SliceAugment


def _sample() -> tuple[np.ndarray, np.ndarray]:
    target = np.zeros((40, 48), np.int64)
    target[8:25, 5:20] = 1
    target[12:16, 9:13] = 2
    image = np.stack([target.astype(np.float32), np.linspace(0, 1, 40 * 48).reshape(40, 48)])
    return image.astype(np.float32), target


def test_same_generator_same_result() -> None:
    image, target = _sample()
    aug = SliceAugment(flip_p=0.5, rotation_p=1.0)
    a = aug(image, target, np.random.default_rng([1, 2, 3]))
    b = aug(image, target, np.random.default_rng([1, 2, 3]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    outputs = {aug(image, target, np.random.default_rng(s))[0].tobytes() for s in range(8)}
    assert len(outputs) > 4


@pytest.mark.parametrize("axes", [("horizontal",), ("vertical",), ("horizontal", "vertical")])
def test_flips_move_image_and_target_together(axes) -> None:
    image, target = _sample()
    aug = SliceAugment(
        flip_p=1.0, flip_axes=axes, rotation_p=0.0, intensity_scale=0, intensity_shift=0
    )
    out_image, out_target = aug(image, target, np.random.default_rng(0))
    expected = target[:, ::-1] if "horizontal" in axes else target
    expected = expected[::-1] if "vertical" in axes else expected
    np.testing.assert_array_equal(out_target, expected)
    np.testing.assert_array_equal(out_image[0], expected.astype(np.float32))
    assert out_target.dtype == np.int64 and out_image.dtype == np.float32


def test_rotation_keeps_labels_aligned_with_the_image() -> None:
    image, target = _sample()
    aug = SliceAugment(
        flip_p=0.0, max_rotation=15.0, rotation_p=1.0, intensity_scale=0, intensity_shift=0
    )
    for seed in range(5):
        out_image, out_target = aug(image, target, np.random.default_rng(seed))
        assert not np.array_equal(out_target, target)
        agree = np.mean(np.rint(out_image[0]) == out_target)
        assert agree > 0.97
        assert set(np.unique(out_target).tolist()) <= {0, 1, 2}


def test_intensity_jitter_touches_the_image_only() -> None:
    image, target = _sample()
    aug = SliceAugment(flip_p=0.0, rotation_p=0.0, intensity_scale=0.2, intensity_shift=0.1)
    out_image, out_target = aug(image, target, np.random.default_rng(4))
    np.testing.assert_array_equal(out_target, target)
    gain = (out_image[1, -1, -1] - out_image[1, 0, 0]) / (image[1, -1, -1] - image[1, 0, 0])
    assert 0.8 <= gain <= 1.2 and gain != 1.0
    np.testing.assert_allclose(
        out_image, image * gain + (out_image[1, 0, 0] - image[1, 0, 0]), atol=1e-5
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flip_axes": ("diagonal",)}, "flip_axes"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"max_rotation": -1.0}, "max_rotation"),
        ({"intensity_scale": 2.0}, "intensity_scale"),
        ({"lesion_reversal_p": -0.1}, "lesion_reversal_p"),
    ],
)
def test_invalid_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SliceAugment(**kwargs)


_STILL = {"flip_p": 0.0, "rotation_p": 0.0, "intensity_scale": 0.0, "intensity_shift": 0.0}


def test_lesion_reversal_turns_a_dark_lesion_bright_about_its_surroundings() -> None:
    rng = np.random.default_rng(0)
    image = (0.5 + 0.01 * rng.standard_normal((1, 40, 40))).astype(np.float32)  # liver
    target = np.zeros((40, 40), np.int64)
    target[15:25, 15:25] = 1
    image[0, 15:25, 15:25] -= 0.2  # a hypodense lesion
    image[0, 36:, :] = 0.0  # a dark border far from it: outside the ring, left alone
    out, out_target = SliceAugment(lesion_reversal_p=1.0, **_STILL)(image, target, rng)
    np.testing.assert_array_equal(out_target, target)
    level = np.median(image[0, 15:25, 15:25])
    assert level < 0.35 and np.median(out[0, 15:25, 15:25]) > 0.65  # as far above as below
    np.testing.assert_array_equal(out[0, :13], image[0, :13])  # beyond the grown lesion
    np.testing.assert_array_equal(out[0, 36:], image[0, 36:])
    # the pixel of growth around the lesion is mirrored about the same level: near it
    assert abs(float(out[0, 14, 20]) - float(image[0, 14, 20])) < 0.06


def test_lesion_reversal_off_keeps_the_stream_and_empty_slices_stay() -> None:
    image, target = _sample()
    seeds = [np.random.default_rng(7) for _ in range(2)]  # the same stream twice
    plain = SliceAugment(rotation_p=1.0)(image, target, seeds[0])
    off = SliceAugment(rotation_p=1.0, lesion_reversal_p=0.0)(image, target, seeds[1])
    np.testing.assert_array_equal(plain[0], off[0])  # p = 0 draws nothing more
    empty = np.zeros_like(target)
    out, _ = SliceAugment(lesion_reversal_p=1.0, **_STILL)(image, empty, seeds[0])
    np.testing.assert_array_equal(out, image)
    assert "lesion_reversal_p=1.0" in repr(SliceAugment(lesion_reversal_p=1.0))


@settings(max_examples=30, deadline=None)
@given(
    level=st.floats(0.0, 1.0),
    depth=st.floats(-0.5, 0.5),
    top=st.integers(5, 20),
    side=st.integers(2, 12),
)
def test_lesion_reversal_is_its_own_inverse_and_keeps_labels(
    level: float, depth: float, top: int, side: int
) -> None:
    image = np.full((2, 36, 36), level, np.float32)
    image[1] += np.linspace(0, 0.01, 36, dtype=np.float32)  # a second channel (2.5D)
    target = np.zeros((36, 36), np.int64)
    target[top : top + side, 10 : 10 + side] = 1
    image[:, top : top + side, 10 : 10 + side] += np.float32(depth)
    aug = SliceAugment(lesion_reversal_p=1.0, **_STILL)
    once, labels = aug(image, target, np.random.default_rng(0))
    twice, _ = aug(once, labels, np.random.default_rng(0))
    np.testing.assert_array_equal(labels, target)
    np.testing.assert_allclose(twice, image, atol=1e-5)  # the ring is untouched: same level
    inside = once[0, top : top + side, 10 : 10 + side]
    np.testing.assert_allclose(inside, level - depth, atol=1e-5)
