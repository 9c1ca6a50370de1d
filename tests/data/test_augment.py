from __future__ import annotations

import numpy as np
import pytest

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
    ],
)
def test_invalid_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SliceAugment(**kwargs)
