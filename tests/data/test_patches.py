from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featsup.data import TumourPatchDataset, find_cases, load_case, preprocess_volume

PATCH = (8, 24, 24)


@pytest.fixture(scope="module")
def loaded(phantom_folder: Path) -> list:
    return [load_case(c) for c in find_cases(phantom_folder)]


@pytest.fixture(scope="module")
def dataset(phantom_folder: Path) -> TumourPatchDataset:
    return TumourPatchDataset(phantom_folder, patch=PATCH, patches_per_case=6, seed=5)


def _window(array: np.ndarray, origin: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """``array`` at ``origin`` with zeros where the window leaves it (test reference)."""
    padded = np.pad(array, [(n, n) for n in size])
    index = tuple(slice(o + n, o + 2 * n) for o, n in zip(origin, size, strict=True))
    return padded[index]


def test_items_shapes_types_and_length(dataset: TumourPatchDataset) -> None:
    assert len(dataset) == 3 * 6
    item = dataset[0]
    assert set(item) == {"image", "target", "case_id", "origin", "tumour_centred"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, *PATCH)
    assert item["target"].dtype == torch.int64 and item["target"].shape == PATCH
    assert [dataset[i]["case_id"] for i in range(4)] == ["0", "1", "2", "0"]  # interleaved
    assert "TumourPatchDataset(cases=3" in repr(dataset)


def test_patches_are_the_preprocessed_volume_masked_to_the_liver(
    dataset: TumourPatchDataset, loaded
) -> None:
    for index in range(len(dataset)):
        item = dataset[index]
        case = loaded[int(item["case_id"])]
        image = _window(preprocess_volume(case.volume), item["origin"], PATCH)
        labels = _window(case.labels, item["origin"], PATCH)
        expected = np.where(labels > 0, image, 0.0)
        np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-6)
        np.testing.assert_array_equal(item["target"].numpy(), labels == 2)


def test_patches_stay_in_the_roi(dataset: TumourPatchDataset) -> None:
    for index in range(len(dataset)):
        item = dataset[index]
        box = dataset.roi(dataset.volumes[index % 3])
        for o, n, (lo, hi) in zip(item["origin"], PATCH, box, strict=True):
            assert lo <= o and o + n <= hi


def test_tumour_fraction_is_exact_per_case(phantom_folder: Path, loaded) -> None:
    has_tumour = [bool((c.labels == 2).any()) for c in loaded]
    assert 0 < sum(has_tumour) < 3  # the phantom has cases with and without tumour
    ds = TumourPatchDataset(phantom_folder, patch=PATCH, patches_per_case=8, tumour_fraction=0.25)
    centred = [ds[i]["tumour_centred"] for i in range(len(ds))]
    for case in range(3):  # 2 of 8 per case with tumour; a case without serves none
        assert sum(centred[case::3]) == (2 if has_tumour[case] else 0)
    for i in np.flatnonzero(centred):
        assert ds[int(i)]["target"].sum() > 0  # centred on tumour: the centre voxel is tumour
    ds = TumourPatchDataset(phantom_folder, patch=PATCH, patches_per_case=4, tumour_fraction=1.0)
    for i in range(len(ds)):
        item = ds[i]
        centre = tuple(n // 2 for n in PATCH)
        assert item["tumour_centred"] == has_tumour[i % 3]
        if not has_tumour[i % 3]:
            continue
        # the centre voxel is tumour unless the ROI edge moved the patch
        box = ds.roi(ds.volumes[i % 3])
        inside = all(
            lo < o and o + n < hi for o, n, (lo, hi) in zip(item["origin"], PATCH, box, strict=True)
        )
        assert item["target"][centre] == 1 or not inside


def test_deterministic_per_seed_and_epoch(phantom_folder: Path) -> None:
    def origins(ds: TumourPatchDataset) -> list:
        return [ds[i]["origin"] for i in range(len(ds))]

    a = TumourPatchDataset(phantom_folder, patch=PATCH, patches_per_case=4, seed=1)
    b = TumourPatchDataset(phantom_folder, patch=PATCH, patches_per_case=4, seed=1)
    first = origins(a)
    assert origins(b) == first
    torch.testing.assert_close(a[3]["image"], b[3]["image"])
    a.set_epoch(1)
    assert origins(a) != first
    a.set_epoch(0)
    assert origins(a) == first
    assert a[-1]["origin"] == a[len(a) - 1]["origin"]
    with pytest.raises(IndexError, match="index"):
        a[len(a)]


def test_flips_mirror_the_same_patch(phantom_folder: Path) -> None:
    plain = TumourPatchDataset(phantom_folder, patch=PATCH, patches_per_case=2)
    flipped = TumourPatchDataset(
        phantom_folder, patch=PATCH, patches_per_case=2, flip_axes=(0, 2), flip_p=1.0
    )
    for i in range(len(plain)):
        p, f = plain[i], flipped[i]
        assert p["origin"] == f["origin"]
        torch.testing.assert_close(f["image"], p["image"].flip(1, 3))
        torch.testing.assert_close(f["target"], p["target"].flip(0, 2))


def test_roi_smaller_than_the_patch_is_padded_with_zeros(phantom_folder: Path, loaded) -> None:
    patch = (48, 24, 24)  # deeper than the 32-slice volumes
    ds = TumourPatchDataset(phantom_folder, patch=patch, patches_per_case=2, mask_outside=False)
    item = ds[0]
    (z0, z1), _, _ = ds.roi(ds.volumes[0])
    oz = item["origin"][0]
    assert oz == z0 - (48 - (z1 - z0)) // 2
    image = item["image"][0].numpy()
    assert not image[: z0 - oz].any() and not image[z1 - oz :].any()
    expected = _window(preprocess_volume(loaded[0].volume), item["origin"], patch)
    np.testing.assert_allclose(image[z0 - oz : z1 - oz], expected[z0 - oz : z1 - oz], atol=1e-6)


def test_mask_dilation_shows_more_than_the_liver(phantom_folder: Path) -> None:
    kwargs = {"patch": PATCH, "patches_per_case": 6, "tumour_fraction": 0.0}
    exact = TumourPatchDataset(phantom_folder, **kwargs)
    grown = TumourPatchDataset(phantom_folder, mask_dilation=4, **kwargs)
    more = 0
    for i in range(len(exact)):
        e, g = exact[i]["image"], grown[i]["image"]
        assert exact[i]["origin"] == grown[i]["origin"]
        shown = e != 0
        torch.testing.assert_close(g[shown], e[shown])  # the liver is shown in both
        more += int((g != 0).sum() - shown.sum())
    assert more > 0


def test_batches_stack_in_a_dataloader(dataset: TumourPatchDataset) -> None:
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True)))
    assert batch["image"].shape == (4, 1, *PATCH) and batch["target"].shape == (4, *PATCH)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch": (8, 24)}, "patch: expected three ints"),
        ({"patch": (8, 0, 24)}, "patch: expected three ints"),
        ({"patch": PATCH, "tumour_fraction": 1.5}, "tumour_fraction"),
        ({"patch": PATCH, "patches_per_case": 0}, "patches_per_case"),
        ({"patch": PATCH, "flip_axes": (3,)}, "flip_axes"),
        ({"patch": PATCH, "margin": (1, 2)}, "margin"),
        ({"patch": PATCH, "mask_dilation": -1}, "mask_dilation"),
    ],
)
def test_invalid_options_raise(phantom_folder: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TumourPatchDataset(phantom_folder, **kwargs)


def test_preprocessing_type_is_checked(phantom_folder: Path) -> None:
    with pytest.raises(TypeError, match=r"Preprocessing\.from_dict"):
        TumourPatchDataset(phantom_folder, patch=PATCH, preprocessing={"hu_window": (0, 1)})


def test_spacing_is_the_median_over_the_volumes(dataset: TumourPatchDataset, loaded) -> None:
    expected = np.median(np.array([c.spacing for c in loaded]), axis=0)
    assert dataset.spacing == pytest.approx(tuple(expected))


def test_stage_datasets_give_the_3d_tumour_stage_patches(phantom_folder: Path) -> None:
    from featsup.data import stage_datasets

    first, second, third = find_cases(phantom_folder)
    train, val = stage_datasets("tumour", [first, second], [third], size=32, patch=PATCH,
                                patches_per_case=5, mask_dilation=2, seed=3)  # fmt: skip
    assert isinstance(train, TumourPatchDataset) and isinstance(val, TumourPatchDataset)
    assert (len(train), len(val)) == (2 * 5, 8)
    assert train.flip_axes == (1, 2) and train.mask_dilation == 2 and train.seed == 3
    assert val.flip_axes == () and val.mask_dilation == 0 and train.tumour_fraction == 0.5
    assert train[0]["image"].shape == (1, *PATCH)
    with pytest.raises(ValueError, match="patch"):
        stage_datasets("liver", [first], [third], size=32, patch=PATCH)
    with pytest.raises(ValueError, match="context"):
        stage_datasets("tumour", [first], [third], size=32, patch=PATCH, context=1)
