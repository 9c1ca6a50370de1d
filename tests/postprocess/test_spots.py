"""Dark spots: candidates for the tumour filter, inside the liver, seeded deep, bounded in size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

pytest.importorskip("cv2")

from featsup.data.preprocess import darkness_channel
from featsup.postprocess import add_dark_spots, dark_spots
from featsup.postprocess.spots import _deep

WINDOW = (-50.0, 250.0)


def _liver(seed: int, spots: int, hu: float) -> tuple[np.ndarray, np.ndarray]:
    """(image, liver mask): a noisy 115-HU box liver with ``spots`` dark discs ``hu`` below."""
    rng = np.random.default_rng(seed)
    liver = np.zeros((7, 64, 64), bool)
    liver[:, 6:58, 6:58] = True
    ct = np.where(liver, 115.0, -100.0) + rng.normal(0, 8, liver.shape)
    yy, xx = np.mgrid[:64, :64]
    for _ in range(spots):
        z, y, x = rng.integers(2, 5), rng.integers(16, 48), rng.integers(16, 48)
        ct[z - 1 : z + 2][:, (yy - y) ** 2 + (xx - x) ** 2 <= 16] -= hu
    image = ((np.clip(ct, *WINDOW) - WINDOW[0]) / (WINDOW[1] - WINDOW[0])).astype(np.float32)
    return image, liver


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 4), st.floats(0.0, 80.0),
       st.floats(5.0, 60.0), st.integers(20, 600))  # fmt: skip
def test_spots_lie_in_the_liver_each_seeded_deep_and_at_most_max_voxels(
    seed: int, count: int, hu: float, threshold: float, max_voxels: int
) -> None:
    image, liver = _liver(seed, count, hu)
    spots = dark_spots(image, liver, threshold, window=WINDOW, max_voxels=max_voxels)
    assert spots.dtype == bool and spots.shape == liver.shape
    assert not (spots & ~liver).any()
    units = threshold * 10 / (WINDOW[1] - WINDOW[0])  # darkness_channel's: 1.0 is 30 HU
    darkness = darkness_channel(image, liver)
    seeds = (darkness >= units) & _deep(liver, 6)
    regions, n = ndimage.label(spots, structure=np.ones((3, 3, 3), bool))
    for k in range(1, n + 1):
        region = regions == k
        assert region.sum() <= max_voxels
        assert (seeds & region).any()  # a seed of the whole threshold, deep inside
        assert (darkness[region] >= units / 2 - 1e-6).all()  # the region: half of it


def test_a_dark_disc_is_found_and_a_plain_liver_gives_none() -> None:
    image, liver = _liver(0, 0, 0.0)
    assert not dark_spots(image, liver, 25.0, window=WINDOW).any()
    image, liver = _liver(0, 3, 60.0)
    found = dark_spots(image, liver, 25.0, window=WINDOW)
    assert found.any()
    assert not (_deep(liver, 6)[[0, -1]]).any()  # no seed in the liver's top or bottom slice
    assert not dark_spots(image, liver, 25.0, window=WINDOW, max_voxels=1).any()
    assert not dark_spots(image, np.zeros_like(liver), 25.0, window=WINDOW).any()


def test_the_threshold_is_read_in_hu_through_the_window() -> None:
    image, liver = _liver(1, 3, 40.0)
    # the same image read through a window twice as wide: the same darkness is twice the HU
    wide = (WINDOW[0], WINDOW[0] + 2 * (WINDOW[1] - WINDOW[0]))
    np.testing.assert_array_equal(dark_spots(image, liver, 20.0, window=WINDOW),
                                  dark_spots(image, liver, 40.0, window=wide))  # fmt: skip


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"threshold_hu": 0.0}, "threshold_hu"),
        ({"threshold_hu": 25.0, "window": (250.0, -50.0)}, "window"),
        ({"threshold_hu": 25.0, "depth": 0}, "depth"),
        ({"threshold_hu": 25.0, "max_voxels": 0}, "max_voxels"),
    ],
)
def test_bad_settings_are_refused(args: dict, match: str) -> None:
    image, liver = _liver(0, 1, 40.0)
    with pytest.raises(ValueError, match=match):
        dark_spots(image, liver, **args)
    with pytest.raises(ValueError, match="shape"):
        dark_spots(image[0], liver[0], 25.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_add_dark_spots_turns_only_liver_into_tumour(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (3, 8, 8)).astype(np.uint8)
    spots = rng.random((3, 8, 8)) < 0.4
    out = add_dark_spots(labels, spots)
    changed = out != labels
    assert (labels[changed] == 1).all() and (out[changed] == 2).all()
    np.testing.assert_array_equal(changed, spots & (labels == 1))
    assert out is not labels
    with pytest.raises(ValueError, match="shape"):
        add_dark_spots(labels, spots[0])
