from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featsup.data import (
    HU_WINDOW,
    Preprocessing,
    apply_crop,
    clahe,
    crop_to_roi,
    find_roi,
    hu_window,
    largest_connected_component,
    make_phantom,
    normalize,
    preprocess_volume,
    preprocess_window,
    resize,
    uncrop,
)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(1, (24, 128, 128))


def test_hu_window_outputs_range_and_dtype(phantom) -> None:
    u8 = hu_window(phantom.volume)
    assert u8.dtype == np.uint8 and u8.shape == phantom.volume.shape
    assert u8.min() == 0 and u8.max() == 255  # air and bone saturate
    unit = hu_window(phantom.volume, output="unit")
    assert unit.dtype == np.float32 and 0.0 <= unit.min() and unit.max() <= 1.0
    hu = hu_window(phantom.volume, low=-50, high=250, output="hu")
    assert hu.min() == -50 and hu.max() == 250
    np.testing.assert_array_equal(np.rint(unit * 255).astype(np.uint8), u8)


def test_hu_window_known_values() -> None:
    x = np.array([[-2000.0, -100.0, 150.0, 400.0, 900.0]])
    assert hu_window(x).tolist() == [[0, 0, 128, 255, 255]]
    np.testing.assert_allclose(hu_window(x, output="unit"), [[0, 0, 0.5, 1, 1]])


def test_hu_window_errors() -> None:
    with pytest.raises(ValueError, match="low < high"):
        hu_window(np.zeros((4, 4)), low=10, high=10)
    with pytest.raises(ValueError, match="did you mean 'unit'"):
        hu_window(np.zeros((4, 4)), output="units")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(H, W\) or \(D, H, W\)"):
        hu_window(np.zeros(4))
    with pytest.raises(TypeError, match="numpy array"):
        hu_window([[0.0]])  # type: ignore[arg-type]


def test_clahe_matches_opencv_and_keeps_dtype(phantom) -> None:
    u8 = hu_window(phantom.volume)
    out = clahe(u8)
    assert out.dtype == np.uint8 and out.shape == u8.shape
    reference = cv2.createCLAHE(clipLimit=4.0, tileGridSize=(8, 8)).apply(u8[12])
    np.testing.assert_array_equal(out[12], reference)
    np.testing.assert_array_equal(clahe(u8[12]), reference)


def test_clahe_raises_contrast_of_the_liver(phantom) -> None:
    u8 = hu_window(phantom.volume)
    liver = phantom.labels == 1
    eq = clahe(u8)
    # the liver / background contrast inside the body grows
    body = u8 > 0
    before = abs(u8[liver].mean() - u8[body & ~liver].mean())
    after = abs(eq[liver].mean().astype(float) - eq[body & ~liver].mean())
    assert after > before


def test_clahe_errors() -> None:
    with pytest.raises(TypeError, match="expected uint8, got float32"):
        clahe(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="clip_limit"):
        clahe(np.zeros((8, 8), np.uint8), clip_limit=0)
    with pytest.raises(ValueError, match="tile_grid_size"):
        clahe(np.zeros((8, 8), np.uint8), tile_grid_size=(0, 8))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=2, max_size=50),
    st.sampled_from(["minmax", "zscore"]),
)
def test_normalize_properties(values: list[float], mode: str) -> None:
    x = np.asarray(values, np.float64)
    out = normalize(x, mode=mode)  # type: ignore[arg-type]
    assert out.dtype == np.float32 and np.isfinite(out).all()
    if np.ptp(x) < 1e-3:
        return
    if mode == "minmax":
        assert out.min() == pytest.approx(0.0, abs=1e-6) and out.max() == pytest.approx(
            1.0, abs=1e-5
        )
    else:
        assert out.mean() == pytest.approx(0.0, abs=1e-3) and out.std() == pytest.approx(
            1.0, rel=1e-3
        )


def test_normalize_with_mask_and_constant_image() -> None:
    x = np.array([0.0, 10.0, 20.0, 100.0])
    out = normalize(x, mask=np.array([True, True, True, False]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 5.0])
    np.testing.assert_array_equal(normalize(np.full(5, 7.0)), np.zeros(5))
    with pytest.raises(ValueError, match="empty mask"):
        normalize(x, mask=np.zeros(4, bool))
    with pytest.raises(ValueError, match="same shape"):
        normalize(x, mask=np.zeros(3, bool))


def test_preprocess_volume_chain(phantom) -> None:
    out = preprocess_volume(phantom.volume)
    assert out.dtype == np.float32 and out.shape == phantom.volume.shape
    assert out.min() == 0.0 and out.max() == 1.0
    manual = normalize(clahe(hu_window(phantom.volume)))
    np.testing.assert_array_equal(out, manual)
    plain = preprocess_volume(
        phantom.volume, preprocessing=Preprocessing(clahe=False, normalization="zscore")
    )
    assert abs(float(plain.mean())) < 1e-3


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 20), st.integers(0, 20))
def test_nearest_resize_is_exactly_invertible_when_enlarging(
    h: int, w: int, dh: int, dw: int
) -> None:
    x = np.random.default_rng(h * 31 + w).integers(0, 255, (2, h, w)).astype(np.uint8)
    big = resize(x, (h + dh, w + dw), mode="nearest")
    assert big.dtype == np.uint8 and big.shape == (2, h + dh, w + dw)
    np.testing.assert_array_equal(resize(big, (h, w), mode="nearest"), x)


def test_linear_resize_matches_torch_and_keeps_constants() -> None:
    x = np.random.default_rng(0).random((3, 10, 12)).astype(np.float32)
    out = resize(x, (20, 7))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x)[:, None], size=(20, 7), mode="bilinear"
    )
    torch.testing.assert_close(torch.from_numpy(out), expected[:, 0])
    np.testing.assert_allclose(resize(np.full((5, 5), 3.0), (9, 2)), 3.0)


def _roi_case(seed: int):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(3, 24, 3))
    mask = np.zeros(shape, bool)
    lo = [int(rng.integers(0, s)) for s in shape]
    hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, shape, strict=True)]
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = (
        rng.random([b - a for a, b in zip(lo, hi, strict=True)]) < 0.7
    )
    mask[lo[0], lo[1], lo[2]] = True
    volume = rng.integers(0, 3, shape).astype(np.uint8)
    return volume, mask


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 4), st.integers(0, 16))
def test_uncrop_inverts_crop_inside_the_roi(seed: int, margin: int, extra: int) -> None:
    volume, mask = _roi_case(seed)
    roi = find_roi(mask, margin=margin)
    _, h, w = roi.crop_shape
    size = (h + extra, w + extra // 2)
    crop, roi = crop_to_roi(volume, mask, margin=margin, size=size, mode="nearest")
    assert crop.shape == (roi.crop_shape[0], *size)
    back = uncrop(crop, roi, mode="nearest", fill=9)
    assert back.shape == volume.shape and back.dtype == volume.dtype
    inside = np.zeros(volume.shape, bool)
    inside[roi.slices] = True
    np.testing.assert_array_equal(back[inside], volume[inside])
    assert (back[~inside] == 9).all()
    assert mask[~inside].sum() == 0  # the box holds the whole mask


def test_crop_without_resize_and_with_channels() -> None:
    volume, mask = _roi_case(3)
    crop, roi = crop_to_roi(volume, mask, margin=(0, 1, 2))
    assert roi.size is None and crop.shape == roi.crop_shape
    probs = np.stack([volume, volume]).astype(np.float32)
    back = uncrop(apply_crop(probs, roi), roi, mode="linear")
    np.testing.assert_array_equal(back[(Ellipsis, *roi.slices)], probs[(Ellipsis, *roi.slices)])


def test_linear_round_trip_of_a_smooth_image_is_close() -> None:
    z, y, x = np.meshgrid(np.arange(4), np.arange(40), np.arange(50), indexing="ij")
    image = np.sin(y / 9.0) + np.cos(x / 11.0) + 0 * z
    mask = np.zeros(image.shape, bool)
    mask[1:3, 5:35, 10:40] = True
    crop, roi = crop_to_roi(image, mask, margin=0, size=(64, 64))
    back = uncrop(crop, roi, mode="linear")
    inner = (slice(1, 3), slice(7, 33), slice(12, 38))
    np.testing.assert_allclose(back[inner], image[inner], atol=0.01)


def test_roi_margin_is_clipped_and_roi_errors() -> None:
    mask = np.zeros((4, 10, 10), bool)
    mask[0, 0, 9] = True
    roi = find_roi(mask, margin=3)
    assert roi.bbox == ((0, 4), (0, 4), (6, 10))
    with pytest.raises(ValueError, match="empty mask"):
        crop_to_roi(mask, np.zeros_like(mask))
    full = find_roi(np.zeros_like(mask), if_empty="full")
    assert full.bbox == ((0, 4), (0, 10), (0, 10))
    with pytest.raises(ValueError, match="margin"):
        find_roi(mask, margin=(1, 2))
    with pytest.raises(ValueError, match="same shape"):
        crop_to_roi(mask, mask[:, :5])
    crop, roi = crop_to_roi(mask, mask, margin=0, size=(4, 4))
    with pytest.raises(ValueError, match="crop: expected"):
        uncrop(crop[:, :3], roi)


def test_largest_connected_component() -> None:
    mask = np.zeros((5, 10, 10), bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels
    mask[0, 8:10, 8:10] = True  # 4 voxels
    keep = largest_connected_component(mask)
    assert keep.dtype == bool and keep.sum() == 27 and not keep[0, 8, 8]
    diagonal = np.zeros((3, 3, 3), bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = diagonal[2, 2, 1] = True
    assert largest_connected_component(diagonal, connectivity=3).sum() == 3
    assert largest_connected_component(diagonal, connectivity=1).sum() == 1
    assert not largest_connected_component(np.zeros((2, 2, 2))).any()
    with pytest.raises(ValueError, match="connectivity"):
        largest_connected_component(mask, connectivity=4)


def test_preprocessing_round_trips_through_json() -> None:
    import json

    custom = Preprocessing(
        hu_window=(-200, 300),
        clahe=False,
        clip_limit=2,
        tile_grid_size=(4, 6),
        normalization="zscore",
    )
    for p in (Preprocessing(), custom):
        d = json.loads(json.dumps(p.to_dict()))
        assert Preprocessing.from_dict(d) == p
    assert Preprocessing().hu_window == HU_WINDOW == (-100.0, 400.0)
    assert custom.hu_window == (-200.0, 300.0) and custom.tile_grid_size == (4, 6)
    assert Preprocessing.from_dict({"clahe": False}) == Preprocessing(clahe=False)
    assert custom.to_dict()["hu_window"] == [-200.0, 300.0]


@pytest.mark.parametrize(
    ("values", "error", "match"),
    [
        ({"window": [-100, 400]}, ValueError, "unknown \\['window'\\]"),
        ({"hu_window": [400, -100]}, ValueError, "low < high"),
        ({"hu_window": [0, 1, 2]}, ValueError, "pair"),
        ({"clahe": "yes"}, TypeError, "clahe"),
        ({"clip_limit": 0}, ValueError, "clip_limit"),
        ({"tile_grid_size": [0, 8]}, ValueError, "tile_grid_size"),
        ({"normalization": "minmaxx"}, ValueError, "did you mean 'minmax'"),
    ],
)
def test_preprocessing_rejects_bad_values(values: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Preprocessing.from_dict(values)


def test_preprocess_volume_follows_the_preprocessing(phantom) -> None:
    p = Preprocessing(hu_window=(-200.0, 300.0), clip_limit=2.0)
    out = preprocess_volume(phantom.volume, preprocessing=p)
    windowed = hu_window(phantom.volume, low=-200.0, high=300.0)
    np.testing.assert_array_equal(out, normalize(clahe(windowed, clip_limit=2.0)))
    assert not np.array_equal(out, preprocess_volume(phantom.volume))


def test_largest_component_keeps_the_phantom_liver_one_organ() -> None:
    # the phantom paints its liver through largest_connected_component (ex _keep_largest)
    liver = make_phantom(3, (24, 96, 96)).labels > 0
    np.testing.assert_array_equal(largest_connected_component(liver), liver)


def test_preprocess_window_is_preprocess_volume_from_the_window(phantom) -> None:
    for p in (Preprocessing(), Preprocessing(clahe=False, normalization="zscore")):
        windowed = hu_window(phantom.volume, low=p.hu_window[0], high=p.hu_window[1])
        expected = preprocess_volume(phantom.volume, preprocessing=p)
        np.testing.assert_array_equal(preprocess_window(windowed, preprocessing=p), expected)


def test_hu_window_in_chunks_equals_one_chunk(phantom, monkeypatch) -> None:
    import featsup.data.preprocess as module

    whole = {o: hu_window(phantom.volume, output=o) for o in ("uint8", "unit", "hu")}
    monkeypatch.setattr(module, "_CHUNK_VOXELS", 5 * 128 * 128 + 7)  # uneven chunks
    for output, expected in whole.items():
        np.testing.assert_array_equal(hu_window(phantom.volume, output=output), expected)
    np.testing.assert_array_equal(hu_window(phantom.volume[3], output="unit"), whole["unit"][3])


def test_preprocessing_makes_no_volume_sized_float_temporaries() -> None:
    """numpy reports its allocations to tracemalloc: the peak is the output plus chunks."""
    import tracemalloc

    hu = np.random.default_rng(0).integers(-1000, 1000, (64, 512, 512)).astype(np.int16)
    float_bytes = hu.size * 4
    p = Preprocessing(clahe=False)
    peaks = []
    for step in (
        lambda: hu_window(hu),
        lambda: preprocess_window(np.zeros(hu.shape, np.uint8), preprocessing=p),
        lambda: normalize(hu),
    ):
        tracemalloc.start()
        step()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # whole-volume maths made 3 to 5 float32 volumes at once; chunked / in place, at most 1.5
    assert max(peaks) < 1.5 * float_bytes, [round(p / float_bytes, 2) for p in peaks]


@settings(max_examples=25, deadline=None)
@given(
    level=st.floats(-2.0, 2.0),
    gain=st.floats(0.1, 5.0),
    seed=st.integers(0, 2**16),
)
def test_darkness_ignores_the_livers_level_and_scales_with_contrast(
    level: float, gain: float, seed: int
) -> None:
    from featsup.data import darkness_channel

    rng = np.random.default_rng(seed)
    mask = np.zeros((2, 40, 40), bool)
    mask[:, 5:35, 8:33] = True
    image = np.where(mask, 0.5 + 0.03 * rng.standard_normal(mask.shape), -1.0)
    base = darkness_channel(image.astype(np.float32), mask)
    shifted = np.where(mask, gain * image + level, rng.uniform(-5, 5, mask.shape))  # outside: any
    moved = darkness_channel(shifted.astype(np.float32), mask)
    np.testing.assert_allclose(moved, gain * base, atol=1e-4 * (1 + gain))
    assert not base[~mask].any()  # 0 outside the mask


def test_darkness_reads_a_dark_spot_not_the_livers_edge() -> None:
    from featsup.data import darkness_channel

    mask = np.zeros((60, 60), bool)
    mask[5:55, 5:55] = True
    image = np.where(mask, 0.55, -0.2).astype(np.float32)  # fat darker than liver outside
    image[28:33, 28:33] = 0.45  # 5 pixels, 30 HU below the liver in the -50..250 window
    dark = darkness_channel(image, mask)
    assert dark[30, 30] > 0.4 and dark[30, 30] == dark.max()
    plain = np.where(mask, 0.55, -0.2).astype(np.float32)  # no spot: nothing dark anywhere,
    assert np.abs(darkness_channel(plain, mask)).max() < 1e-4  # the fat beside the edge unseen
    assert darkness_channel(image, np.zeros_like(mask)).sum() == 0
    for bad in ((8.5, 2.5), (0.0, 2.0), (1.0,), None):
        with pytest.raises(ValueError, match="sigmas"):
            darkness_channel(image, mask, bad)
    with pytest.raises(ValueError, match="shape"):
        darkness_channel(image, mask[:, :50])
