"""Growing dark tumours by HU: only tumours grow, only into the dark organ, only so far."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from featsup.postprocess import grow_dark_tumours

WINDOW = (-50.0, 250.0)


def _case(seed: int, lesion_hu: float, core: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, image): a noisy 115-HU box liver holding one disc lesion ``lesion_hu`` HU
    bright, of which a centred square of half-width ``core`` is labelled tumour."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((5, 48, 48), np.uint8)
    labels[:, 4:44, 4:44] = 1
    ct = np.where(labels > 0, 115.0, -100.0) + rng.normal(0, 6, labels.shape)
    yy, xx = np.mgrid[:48, :48]
    disc = (yy - 24) ** 2 + (xx - 24) ** 2 <= radius**2
    ct[1:4][:, disc] = lesion_hu + rng.normal(0, 6, (3, int(disc.sum())))
    labels[1:4, 24 - core : 24 + core, 24 - core : 24 + core] = 2
    image = ((np.clip(ct, *WINDOW) - WINDOW[0]) / (WINDOW[1] - WINDOW[0])).astype(np.float32)
    return labels, image


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(-20.0, 200.0), st.integers(1, 5), st.integers(3, 12),
       st.integers(1, 6), st.integers(1, 200))  # fmt: skip
def test_tumours_only_grow_into_the_organ_within_the_steps(
    seed: int, lesion_hu: float, core: int, radius: int, iterations: int, min_voxels: int
) -> None:
    labels, image = _case(seed, lesion_hu, core, radius)
    grown = grow_dark_tumours(labels, image, iterations=iterations, min_voxels=min_voxels)
    before, after = labels == 2, grown == 2
    assert grown.dtype == labels.dtype and grown.shape == labels.shape
    assert np.all(after[before])  # nothing is taken away
    assert np.array_equal(grown[~after], labels[~after])  # only tumour labels are added
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = True
    organ = ndimage.binary_dilation(labels > 0, plane)
    assert not (after & ~organ).any()
    # in-plane chessboard distance from the labelled tumour, at most `iterations`
    reach = ndimage.binary_dilation(before, plane, iterations=iterations)
    assert not (after & ~reach).any()
    # nothing grows out of a component brighter than the liver less the contrast
    if lesion_hu > 115.0 - 5.0:
        assert np.array_equal(grown, labels)


def test_the_paler_rim_of_a_dark_lesion_is_recovered_not_the_liver() -> None:
    labels, image = _case(0, 60.0, core=3, radius=9)
    grown = grow_dark_tumours(labels, image, iterations=10, min_voxels=20)
    yy, xx = np.mgrid[:48, :48]
    disc = (yy - 24) ** 2 + (xx - 24) ** 2 <= 81
    lesion = np.zeros(labels.shape, bool)
    lesion[1:4][:, disc] = True
    after = grown == 2
    assert (after & lesion).sum() > 0.9 * lesion.sum()
    assert (after & ~lesion).sum() < 0.05 * lesion.sum()


def test_small_bright_or_lone_tumours_are_left_alone() -> None:
    labels, image = _case(1, 60.0, core=2, radius=9)  # 3 x 4 x 4 = 48 voxels
    assert np.array_equal(grow_dark_tumours(labels, image, min_voxels=49), labels)
    assert not np.array_equal(grow_dark_tumours(labels, image, min_voxels=48), labels)
    bright, image_b = _case(1, 150.0, core=2, radius=9)
    assert np.array_equal(grow_dark_tumours(bright, image_b, min_voxels=1), bright)
    # 30 HU darker than the liver: grows at a contrast of 20, not at 40
    mild, image_m = _case(1, 85.0, core=2, radius=9)
    assert not np.array_equal(grow_dark_tumours(mild, image_m, min_voxels=1), mild)
    assert np.array_equal(grow_dark_tumours(mild, image_m, min_voxels=1, contrast_hu=40), mild)
    only = np.where(labels > 0, 2, 0).astype(np.uint8)  # no liver voxel to compare with
    assert np.array_equal(grow_dark_tumours(only, image, min_voxels=1), only)
    empty = np.where(labels > 0, 1, 0).astype(np.uint8)
    assert np.array_equal(grow_dark_tumours(empty, image), empty)


def test_bad_arguments_are_refused() -> None:
    labels, image = _case(0, 60.0, core=2, radius=6)
    for kwargs in ({"contrast_hu": 0}, {"iterations": 0}, {"min_voxels": 0}, {"smooth": -1},
                   {"smooth": 1.5}, {"window": (250, -50)}):  # fmt: skip
        with pytest.raises(ValueError):
            grow_dark_tumours(labels, image, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        grow_dark_tumours(labels, image[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        grow_dark_tumours(labels[0], image[0])


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8), st.integers(1, 300))
def test_growing_within_each_box_equals_growing_over_the_whole_volume(
    seed: int, iterations: int, min_voxels: int
) -> None:
    """Several lesions, some at the border: the box-wise growth is the volume-wide one."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((4, 40, 40), np.uint8)
    labels[:, 2:38, 2:38] = 1
    ct = np.where(labels > 0, 115.0, -100.0) + rng.normal(0, 6, labels.shape)
    yy, xx = np.mgrid[:40, :40]
    for _ in range(3):
        y, x, r = rng.integers(0, 40), rng.integers(0, 40), rng.integers(2, 9)
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        ct[1:3][:, disc] = rng.uniform(30, 100)
        labels[1:3][
            :, disc & ((yy - y) ** 2 + (xx - x) ** 2 <= (r // 2) ** 2) & (labels[1] > 0)
        ] = 2
    image = ((np.clip(ct, *WINDOW) - WINDOW[0]) / (WINDOW[1] - WINDOW[0])).astype(np.float32)
    got = grow_dark_tumours(labels, image, iterations=iterations, min_voxels=min_voxels)
    # the same rule, written over the whole volume
    hu = ndimage.uniform_filter(WINDOW[0] + image * (WINDOW[1] - WINDOW[0]), size=(1, 3, 3),
                                mode="nearest")  # fmt: skip
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = True
    expected = labels.copy()
    if (labels == 1).any():
        liver_hu = float(np.median(hu[labels == 1]))
        organ = ndimage.binary_dilation(labels > 0, plane)
        components, count = ndimage.label(labels == 2, structure=np.ones((3, 3, 3), bool))
        for index in range(1, count + 1):
            one = components == index
            median = float(np.median(hu[one]))
            if one.sum() < min_voxels or median > liver_hu - 20.0:
                continue
            allowed = (organ & (hu < (median + liver_hu) / 2)) | one
            expected[ndimage.binary_dilation(one, plane, iterations=iterations, mask=allowed)] = 2
    assert np.array_equal(got, expected)
