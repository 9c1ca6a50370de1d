from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from featsup.data import (
    LiverSliceDataset,
    Preprocessing,
    SliceAugment,
    TumourSliceDataset,
    _cache,
    find_cases,
    load_case,
    prepare_volumes,
    preprocess_volume,
    stage_datasets,
)


@pytest.fixture(scope="module")
def loaded(phantom_folder: Path) -> list:
    return [load_case(c) for c in find_cases(phantom_folder)]


def test_liver_items_shapes_and_types(phantom_folder: Path) -> None:
    ds = LiverSliceDataset(phantom_folder, empty_fraction=None)
    item = ds[0]
    assert set(item) == {"image", "target", "case_id", "slice_index"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 96, 96)
    assert item["target"].dtype == torch.int64 and item["target"].shape == (96, 96)
    assert len(ds) == 3 * 32  # every slice of the three cases


def test_liver_slices_equal_the_preprocessed_volume_with_context(
    phantom_folder: Path, loaded
) -> None:
    ds = LiverSliceDataset(phantom_folder, empty_fraction=None, context=2)
    expected = preprocess_volume(loaded[1].volume)
    for index in (32, 33, 45, 63):  # case "1" spans indices 32..63; ends are clamped
        item = ds[index]
        k = item["slice_index"]
        ks = np.clip(np.arange(k - 2, k + 3), 0, 31)
        assert item["case_id"] == "1"
        np.testing.assert_array_equal(item["image"].numpy(), expected[ks])
        np.testing.assert_array_equal(
            item["target"].numpy(), (loaded[1].labels[k] > 0).astype(np.int64)
        )


def test_empty_fraction_and_epoch_resampling(phantom_folder: Path, loaded) -> None:
    with_liver = sum(int((c.labels > 0).reshape(32, -1).any(1).sum()) for c in loaded)
    ds = LiverSliceDataset(phantom_folder, empty_fraction=0.2, seed=3)
    empties = [i for i in range(len(ds)) if ds[i]["target"].sum() == 0]
    assert len(ds) - len(empties) == with_liver
    assert len(empties) == round(0.2 * with_liver / 0.8)
    first = list(ds._index)
    ds.set_epoch(1)
    assert ds._index != first and len(ds._index) == len(first)
    ds.set_epoch(0)
    assert ds._index == first
    assert LiverSliceDataset(phantom_folder, empty_fraction=0.0).__len__() == with_liver


def test_classes_all_keeps_tumour_labels(phantom_folder: Path, loaded) -> None:
    ds = LiverSliceDataset(phantom_folder, empty_fraction=None, classes="all")
    stacked = torch.stack([ds[i]["target"] for i in range(len(ds))])
    expected = np.concatenate([c.labels for c in loaded])
    np.testing.assert_array_equal(stacked.numpy(), expected)


def test_fixed_size_batches_stack_in_a_dataloader(phantom_folder: Path) -> None:
    ds = LiverSliceDataset(phantom_folder, size=(64, 80), context=1, augment=SliceAugment())
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=6, shuffle=True)))
    assert batch["image"].shape == (6, 3, 64, 80) and batch["target"].shape == (6, 64, 80)
    assert set(torch.unique(batch["target"]).tolist()) <= {0, 1}


def test_augmentation_is_seeded_per_sample_and_epoch(phantom_folder: Path) -> None:
    ds = LiverSliceDataset(phantom_folder, augment=SliceAugment(rotation_p=1.0), seed=5)
    a, b = ds[10], ds[10]
    torch.testing.assert_close(a["image"], b["image"])
    ds.set_epoch(1)
    ds.set_epoch(0)
    torch.testing.assert_close(ds[10]["image"], a["image"])
    ds2 = LiverSliceDataset(phantom_folder, augment=SliceAugment(rotation_p=1.0), seed=6)
    assert not torch.equal(ds2[10]["image"], a["image"])


def test_augmentation_changes_with_the_epoch(phantom_folder: Path) -> None:
    ds = LiverSliceDataset(
        phantom_folder, empty_fraction=None, augment=SliceAugment(rotation_p=1.0)
    )
    first = ds[40]["image"]
    ds.set_epoch(1)  # same slices (no sampling), new augmentation
    assert not torch.equal(ds[40]["image"], first)


def test_disk_cache_is_reused_and_keyed_by_settings(
    phantom_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    cache = tmp_path / "cache"
    ds = LiverSliceDataset(phantom_folder, cache_dir=cache, empty_fraction=None)
    assert len(list(cache.glob("*.image.npy"))) == 3
    assert isinstance(ds.volumes[0].image_u8(), np.memmap)

    def fail(*args, **kwargs):
        raise AssertionError("preprocessing ran although the cache was complete")

    monkeypatch.setattr(_cache, "_preprocess", fail)
    again = LiverSliceDataset(phantom_folder, cache_dir=cache, empty_fraction=None)
    torch.testing.assert_close(again[50]["image"], ds[50]["image"])
    monkeypatch.undo()
    LiverSliceDataset(
        phantom_folder,
        cache_dir=cache,
        empty_fraction=None,
        preprocessing=Preprocessing(clahe=False),
    )
    assert len(list(cache.glob("*.image.npy"))) == 6  # other settings, other entries


def test_cache_key_follows_the_file(phantom_folder: Path, tmp_path: Path) -> None:
    import shutil

    for name in ("volume-0.nii.gz", "segmentation-0.nii.gz"):
        shutil.copy(phantom_folder / name, tmp_path / name)
    case = find_cases(tmp_path)[0]
    settings = Preprocessing()
    key = _cache.cache_key(case, settings)
    assert key == _cache.cache_key(case, settings)
    assert key != _cache.cache_key(case, Preprocessing(hu_window=(-200.0, 300.0)))
    (tmp_path / "volume-0.nii.gz").write_bytes((tmp_path / "volume-0.nii.gz").read_bytes() + b"\0")
    assert key != _cache.cache_key(case, settings)


def test_pool_gives_the_same_volumes(phantom_folder: Path, tmp_path: Path) -> None:
    cases = find_cases(phantom_folder)
    serial = prepare_volumes(cases, Preprocessing())
    pooled = prepare_volumes(cases, Preprocessing(), cache_dir=tmp_path, num_workers=2)
    for a, b in zip(serial, pooled, strict=True):
        np.testing.assert_array_equal(a.image_u8(), b.image_u8())
        np.testing.assert_array_equal(a.labels(), b.labels())
        assert a.liver_bbox == b.liver_bbox and a.offset == b.offset and a.scale == b.scale


def test_cached_dataset_pickles_without_its_memory_maps(
    phantom_folder: Path, tmp_path: Path
) -> None:
    ds = LiverSliceDataset(phantom_folder, cache_dir=tmp_path, empty_fraction=None)
    ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 200_000  # the 3 x 32 x 96 x 96 arrays are not inside
    torch.testing.assert_close(pickle.loads(blob)[70]["image"], ds[70]["image"])


def test_tumour_dataset_serves_masked_liver_roi_crops(phantom_folder: Path, loaded) -> None:
    ds = TumourSliceDataset(phantom_folder, empty_fraction=None, margin=4, context=1)
    case_ids = {item["case_id"] for item in (ds[i] for i in range(len(ds)))}
    liver_slices = sum(int((c.labels > 0).reshape(32, -1).any(1).sum()) for c in loaded)
    assert len(ds) == liver_slices
    for index in range(0, len(ds), 7):
        item = ds[index]
        case = loaded[int(item["case_id"])]
        k = item["slice_index"]
        liver = case.labels > 0
        ys, xs = np.nonzero(liver.any(0))
        rows = slice(max(0, ys.min() - 4), min(96, ys.max() + 5))
        cols = slice(max(0, xs.min() - 4), min(96, xs.max() + 5))
        expected_target = (case.labels[k, rows, cols] == 2).astype(np.int64)
        np.testing.assert_array_equal(item["target"].numpy(), expected_target)
        image = item["image"].numpy()
        assert image.shape[0] == 3
        assert (image[1][~liver[k, rows, cols]] == 0).all()
        expected = preprocess_volume(case.volume)[k, rows, cols]
        np.testing.assert_array_equal(
            image[1][liver[k, rows, cols]], expected[liver[k, rows, cols]]
        )
    assert case_ids


def test_tumour_mask_dilation_shows_a_rim_of_tissue_up_to_the_radius(
    phantom_folder: Path, loaded
) -> None:
    from scipy import ndimage

    # a window no voxel reaches the bottom of, and no CLAHE: every masked-in pixel is
    # non-zero, so `image != 0` is exactly the (grown) liver mask
    no_floor = Preprocessing(hu_window=(-1e4, 1e4), clahe=False)
    common = {"empty_fraction": None, "margin": 8, "preprocessing": no_floor}
    exact = TumourSliceDataset(phantom_folder, **common)
    grown = TumourSliceDataset(phantom_folder, mask_dilation=3, **common)
    rims = []
    for index in range(len(exact)):
        a, b = exact[index]["image"][0].numpy(), grown[index]["image"][0].numpy()
        np.testing.assert_array_equal(exact[index]["target"], grown[index]["target"])
        liver = a != 0
        np.testing.assert_array_equal(b[liver], a[liver])  # the liver itself is unchanged
        shown = (b != 0) & ~liver  # tissue outside the liver that the grown mask lets in
        if shown.any():
            rims.append(ndimage.distance_transform_edt(~liver)[shown].max())
    assert rims and max(rims) <= 3.0 and min(rims) >= 1.0
    again = TumourSliceDataset(phantom_folder, mask_dilation=3, **common)
    np.testing.assert_array_equal(again[5]["image"], grown[5]["image"])  # seeded
    with pytest.raises(ValueError, match="mask_dilation"):
        TumourSliceDataset(phantom_folder, mask_dilation=-1)


def _two_lesions(folder: Path) -> Path:
    """A case whose liver holds a lesion over slices 2-11 and one on slice 14 alone."""
    nib = pytest.importorskip("nibabel")
    labels = np.zeros((16, 24, 24), np.uint8)
    labels[:, 4:20, 4:20] = 1
    labels[2:12, 6:12, 6:12] = 2
    labels[14, 15:18, 15:18] = 2
    for name, array in (("volume-0.nii", np.full(labels.shape, 100, np.int16)),
                        ("segmentation-0.nii", labels)):  # fmt: skip
        nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), np.eye(4)), str(folder / name))
    return folder


def test_lesion_balance_serves_each_lesion_alike(tmp_path: Path) -> None:
    case = _two_lesions(tmp_path)
    plain = TumourSliceDataset(case, empty_fraction=None, lesion_balance=0.0)
    assert [k for _, k in plain._index] == list(range(16))  # each slice once
    np.testing.assert_allclose(plain.lesion_slice_weights(0)[[1, 2, 11, 12, 14]],
                               [0.0, 0.1, 0.1, 0.0, 1.0])  # fmt: skip
    balanced = TumourSliceDataset(case, empty_fraction=None, lesion_balance=1.0, seed=2)
    served = []
    for epoch in range(40):  # the small lesion's one slice: 11 * 1 / 2 = 5.5 times an epoch
        balanced.set_epoch(epoch)
        served.append([k for _, k in balanced._index])
    small = [ks.count(14) for ks in served]
    large = [sum(ks.count(k) for k in range(2, 12)) for ks in served]
    assert set(small) == {5, 6} and abs(np.mean(small) - 5.5) < 0.3
    assert abs(np.mean(large) - 5.5) < 0.5  # the large lesion's ten slices, half as often each
    assert all(ks.count(0) == 1 for ks in served)  # tumour-free slices: served as before
    assert {len(ks) for ks in served} == {16}  # a DataLoader's sampler keeps its length
    half = TumourSliceDataset(case, empty_fraction=None, lesion_balance=0.5)
    assert [k for _, k in half._index].count(14) in (3, 4)  # 0.5 + 0.5 * 5.5 = 3.25
    with pytest.raises(ValueError, match="lesion_balance"):
        TumourSliceDataset(case, lesion_balance=1.5)


def test_tumour_dataset_sampling_and_size(phantom_folder: Path, loaded) -> None:
    ds = TumourSliceDataset(phantom_folder, size=(48, 48), empty_fraction=0.5)
    liver = {c.case_id: (c.labels > 0).reshape(32, -1).any(1) for c in loaded}
    tumour = {c.case_id: (c.labels == 2).reshape(32, -1).any(1) for c in loaded}
    with_tumour = sum(int(t.sum()) for t in tumour.values())
    tumour_free = sum(int((liver[k] & ~tumour[k]).sum()) for k in liver)
    items = [ds[i] for i in range(len(ds))]
    targets = [item["target"] for item in items]
    assert sum(int(t.any()) for t in targets) == with_tumour
    assert all(t.shape == (48, 48) for t in targets)
    assert len(ds) - with_tumour == min(with_tumour, len(ds) - with_tumour)
    # empty_fraction 0.5: as many tumour-free liver slices as tumour slices, as far as the
    # cases have them (and these cases have some, so zero served would be a bug)
    assert tumour_free > 0 and with_tumour > 0
    assert len(ds) - with_tumour == min(with_tumour, tumour_free)
    for item in items:  # every served slice shows liver; the tumour-free ones show no tumour
        k, case = item["slice_index"], item["case_id"]
        assert liver[case][k] and bool(item["target"].any()) == tumour[case][k]


def test_dataset_errors(phantom_folder: Path) -> None:
    with pytest.raises(ValueError, match="context"):
        LiverSliceDataset(phantom_folder, context=-1)
    with pytest.raises(ValueError, match="empty_fraction"):
        LiverSliceDataset(phantom_folder, empty_fraction=1.0)
    with pytest.raises(ValueError, match="size"):
        LiverSliceDataset(phantom_folder, size=(0, 4))
    with pytest.raises(ValueError, match="did you mean 'liver'"):
        LiverSliceDataset(phantom_folder, classes="livers")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalization"):
        LiverSliceDataset(
            phantom_folder,
            preprocessing=Preprocessing(normalization="l2"),  # type: ignore[arg-type]
        )
    with pytest.raises(IndexError):
        LiverSliceDataset(phantom_folder)[10_000]


@pytest.mark.parametrize("context", [0, 1])
def test_tumour_items_equal_the_inference_recipe(
    phantom_folder: Path, loaded, context: int
) -> None:
    # the cascade builds the tumour input from a volume and a liver mask like this; 2.5D:
    # each neighbour masked by its own liver slice, zero where it holds no liver
    from featsup.data import crop_to_roi

    ds = TumourSliceDataset(
        phantom_folder, size=(64, 64), empty_fraction=None, margin=8, context=context
    )
    case = loaded[2]
    liver = case.labels > 0
    masked = np.where(liver, preprocess_volume(case.volume), np.float32(0))
    crop, roi = crop_to_roi(masked, liver, margin=(0, 8, 8), size=(64, 64))
    z0, z1 = roi.bbox[0]
    items = [ds[i] for i in range(len(ds)) if ds[i]["case_id"] == "2"]
    assert len(items) == crop.shape[0]
    assert items[0]["image"].shape == (2 * context + 1, 64, 64)
    offsets = np.arange(-context, context + 1)
    for item in items:
        neighbours = np.clip(item["slice_index"] + offsets, 0, len(liver) - 1)
        for channel, j in enumerate(neighbours):
            expected = crop[j - z0] if z0 <= j < z1 else np.zeros_like(crop[0])
            torch.testing.assert_close(item["image"][channel], torch.from_numpy(expected))


def test_dataset_window_is_the_one_predict_volume_uses(phantom_folder: Path) -> None:
    from featsup.inference import predict_volume

    custom = Preprocessing(hu_window=(-250.0, 250.0), clahe=False, normalization="zscore")
    ds = LiverSliceDataset(phantom_folder, empty_fraction=None, preprocessing=custom)
    assert ds.preprocessing is custom
    seen: list[torch.Tensor] = []

    def record(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.clone())
        return batch

    model = torch.nn.Conv2d(1, 2, 1)
    volume = load_case(ds.cases[0]).volume
    predict_volume(model, volume, preprocessing=ds.preprocessing, transform=record, device="cpu")
    fed = torch.cat(seen)[:, 0]
    for index in (0, 7, 31):  # case "0" spans indices 0..31
        item = ds[index]
        torch.testing.assert_close(fed[item["slice_index"]], item["image"][0])


def test_datasets_reject_a_preprocessing_dict(phantom_folder: Path) -> None:
    with pytest.raises(TypeError, match=r"Preprocessing\.from_dict"):
        LiverSliceDataset(phantom_folder, preprocessing={"clahe": False})  # type: ignore[arg-type]


def test_stage_datasets_follow_the_stage_recipes(phantom_folder) -> None:
    from featsup.data import STAGE_EMPTY_FRACTION, stage_datasets

    first, second, third = find_cases(phantom_folder)
    liver, liver_val = stage_datasets("liver", [first, second], [third], size=32, seed=4)
    assert isinstance(liver, LiverSliceDataset) and liver.augment.flip_p == 0.0
    assert liver.empty_fraction == STAGE_EMPTY_FRACTION["liver"] and liver.seed == 4
    assert liver_val.empty_fraction is None and liver_val.augment is None
    assert liver[0]["image"].shape == (1, 32, 32)
    tumour, tumour_val = stage_datasets(
        "tumour", [first], [third], size=24, mask_dilation=3, val_empty_fraction=0.5
    )
    assert isinstance(tumour, TumourSliceDataset) and tumour.augment.flip_p > 0
    assert tumour.empty_fraction == STAGE_EMPTY_FRACTION["tumour"]
    assert tumour.mask_dilation == 3 and tumour.mask_fill_holes
    assert tumour_val.empty_fraction == 0.5 and tumour_val.mask_dilation == 0
    chosen, _ = stage_datasets("tumour", [first], [third], size=24, empty_fraction=0.6)
    assert chosen.empty_fraction == 0.6  # another share, as a validation sweep chooses it
    whole, whole_val = stage_datasets("tumour", [first], [third], size=24, mask_outside=False)
    assert not whole.mask_outside and not whole_val.mask_outside and tumour.mask_outside
    flanked, flanked_val = stage_datasets("tumour", [first], [third], size=24, context=1)
    assert flanked[0]["image"].shape == flanked_val[0]["image"].shape == (3, 24, 24)
    mine = SliceAugment(lesion_reversal_p=0.5)
    reversing, reversing_val = stage_datasets("tumour", [first], [third], size=24, augment=mine)
    assert reversing.augment is mine and reversing_val.augment is None  # training only
    with pytest.raises(ValueError, match="augment"):
        stage_datasets("tumour", [first], [third], size=24, patch=(4, 16, 16), augment=mine)
    with pytest.raises(ValueError, match="stage"):
        stage_datasets("kidney", [first], [third], size=24)  # type: ignore[arg-type]
    weighted, weighted_val = stage_datasets("liver", [first], [third], size=32, lesion_weight=4)
    assert weighted.lesion_weight == 4.0 and weighted_val.lesion_weight is None  # training only
    assert liver.lesion_weight is None
    with pytest.raises(ValueError, match="lesion_weight"):
        stage_datasets("tumour", [first], [third], size=24, lesion_weight=4)
    balanced, balanced_val = stage_datasets("tumour", [first], [third], size=24,
                                            lesion_balance=0.5)  # fmt: skip
    assert balanced.lesion_balance == 0.5 and balanced_val.lesion_balance == 0.0
    assert tumour.lesion_balance == 0.0
    for stage, patch in (("liver", None), ("tumour", (4, 16, 16))):
        with pytest.raises(ValueError, match="lesion_balance"):
            stage_datasets(stage, [first], [third], size=24, patch=patch, lesion_balance=0.5)
    three, three_val = stage_datasets("liver", [first], [third], size=32, classes="all")
    assert three.classes == three_val.classes == "all" and liver.classes == "liver"
    served = np.concatenate([three[i]["target"].numpy().ravel() for i in range(len(three))])
    assert set(np.unique(served)) == {0, 1, 2}  # the phantom's tumours keep their class
    with pytest.raises(ValueError, match="lesion_weight"):
        stage_datasets("liver", [first], [third], size=32, classes="all", lesion_weight=4)
    with pytest.raises(ValueError, match="classes"):
        stage_datasets("tumour", [first], [third], size=24, classes="all")


@pytest.mark.parametrize("augment", [None, SliceAugment(flip_p=0.0)])
def test_liver_lesion_weight_marks_the_tumour_pixels_of_the_served_slice(
    phantom_folder: Path, loaded, augment
) -> None:
    plain = LiverSliceDataset(phantom_folder, empty_fraction=None, augment=augment, seed=4)
    weighted = LiverSliceDataset(
        phantom_folder, empty_fraction=None, augment=augment, seed=4, lesion_weight=3.0
    )
    assert "weight" not in plain[0]
    tumour_pixels = 0
    for index in range(len(weighted)):
        item, same = weighted[index], plain[index]
        weight = item["weight"].numpy()
        assert item["weight"].dtype == torch.float32 and weight.shape == (96, 96)
        assert set(np.unique(weight)) <= {1.0, 3.0}
        # the target is the plain liver target (augmented alike), tumour inside it
        np.testing.assert_array_equal(item["target"].numpy(), same["target"].numpy())
        np.testing.assert_array_equal(item["image"].numpy(), same["image"].numpy())
        assert np.all(item["target"].numpy()[weight == 3.0] == 1)
        if augment is None:  # unaugmented: exactly the stored tumour labels
            labels = loaded[int(item["case_id"])].labels[item["slice_index"]]
            np.testing.assert_array_equal(weight == 3.0, labels == 2)
        tumour_pixels += int((weight == 3.0).sum())
    assert tumour_pixels > 0  # the phantom has lesions, so the test can fail


def test_liver_lesion_weight_is_checked(phantom_folder: Path) -> None:
    with pytest.raises(ValueError, match="lesion_weight"):
        LiverSliceDataset(phantom_folder, lesion_weight=0.0)
    with pytest.raises(ValueError, match="classes='all'"):
        LiverSliceDataset(phantom_folder, classes="all", lesion_weight=2.0)


def _three_kinds(tmp_path: Path) -> Path:
    """One case: a dark lesion on slices 2-11, a bright one on 13-14, a faint one on 16."""
    nib = pytest.importorskip("nibabel")
    folder = tmp_path / "kinds"
    folder.mkdir()
    labels = np.zeros((18, 24, 24), np.uint8)
    labels[:, 2:22, 2:22] = 1
    volume = np.full(labels.shape, 100, np.int16)
    for z, value in ((slice(2, 12), 40), (slice(13, 15), 150), (slice(16, 17), 105)):
        labels[z, 6:12, 6:12] = 2
        volume[z, 6:12, 6:12] = value
    for name, array in (("volume-0.nii", volume), ("segmentation-0.nii", labels)):
        nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), np.eye(4)), str(folder / name))
    return folder


def test_contrast_balance_serves_each_lesion_kind_alike(tmp_path: Path) -> None:
    case = _three_kinds(tmp_path)
    plain = TumourSliceDataset(case, empty_fraction=None, preprocessing=Preprocessing(clahe=False))
    components, contrast = plain.lesion_contrasts(0)
    assert components.max() == 3
    np.testing.assert_allclose(sorted(contrast[1:]), [-60.0, 5.0, 50.0], atol=2.5)  # HU
    kinds = plain.slice_contrast_classes(0)
    assert list(kinds[[0, 2, 11, 13, 14, 16]]) == [0, 0, 0, 2, 2, 1]
    assert [k for _, k in plain._index] == list(range(18))  # off: each slice once
    balanced = TumourSliceDataset(case, empty_fraction=None, contrast_balance=1.0,
                                  preprocessing=Preprocessing(clahe=False))  # fmt: skip
    served = [k for _, k in balanced._index]
    # 13 tumour slices: each kind about 13 / 3 of them, the dark ones' ten slices sharing
    assert sum(served.count(k) for k in range(2, 12)) in (4, 5)
    assert served.count(13) + served.count(14) in (4, 5) and served.count(16) in (4, 5)
    assert served.count(0) == 1 and len(served) == 18  # tumour-free slices as before
    both = TumourSliceDataset(case, empty_fraction=None, contrast_balance=1.0, lesion_balance=1.0,
                              preprocessing=Preprocessing(clahe=False))  # fmt: skip
    assert len(both._index) == 18  # the two factors multiply, the length stays
    with pytest.raises(ValueError, match="contrast_balance"):
        TumourSliceDataset(case, contrast_balance=-0.1)
    with pytest.raises(ValueError, match="contrast_balance"):
        stage_datasets("liver", find_cases(case), [], size=16, contrast_balance=0.5)


def test_lesion_contrasts_measure_the_liver_around_each_lesion() -> None:
    from featsup.data import lesion_contrasts

    labels = np.zeros((4, 16, 16), np.uint8)
    labels[:, :8] = 1
    labels[1:3, 2:5, 2:5] = 2  # inside the liver
    labels[1:3, 11:14, 11:14] = 2  # in the background: no liver around it
    image = np.where(labels == 2, 130.0, np.where(labels == 1, 100.0, -100.0))
    components, contrast = lesion_contrasts(image, labels)
    assert components.max() == 2 and components.dtype == np.int32
    assert contrast[components[1, 3, 3]] == 30.0
    assert np.isnan(contrast[components[1, 12, 12]]) and np.isnan(contrast[0])
    with pytest.raises(ValueError, match="ring"):
        lesion_contrasts(image, labels, ring=0)


def test_tumour_crops_are_windows_of_the_whole_slices(phantom_folder: Path) -> None:
    # the same seed, epoch and index: the crop is a window of the item served whole
    whole = TumourSliceDataset(phantom_folder, size=(48, 48), empty_fraction=None, seed=3)
    kw = {"size": (48, 48), "empty_fraction": None, "seed": 3}
    every = TumourSliceDataset(phantom_folder, crop=16, crop_lesion=1.0, **kw)
    anywhere = TumourSliceDataset(phantom_folder, crop=16, crop_lesion=0.0, **kw)
    assert len(every) == len(whole)
    centred = 0
    for i in range(len(whole)):
        full, item = whole[i], every[i]
        image, target = item["image"], item["target"]
        assert image.shape == (1, 16, 16) and target.shape == (16, 16)
        # find the window: it matches the whole slice somewhere, image and target alike
        windows = full["image"][0].unfold(0, 16, 1).unfold(1, 16, 1)
        match = (windows == image[0]).flatten(2).all(-1).nonzero()
        assert len(match), f"item {i}: the crop is no window of the whole slice"
        r, c = match[0].tolist()
        torch.testing.assert_close(full["target"][r : r + 16, c : c + 16], target)
        if full["target"].any():  # crop_lesion 1: centred on tumour, so it shows some
            assert target.any()
            centred += 1
    assert centred > 0
    shown = [bool(anywhere[i]["target"].any()) for i in range(len(anywhere))]
    assert sum(shown) < centred  # anywhere: windows miss the small lesions now and then


def test_tumour_crop_is_checked(phantom_folder: Path) -> None:
    first, _, third = find_cases(phantom_folder)
    with pytest.raises(ValueError, match="crop"):
        TumourSliceDataset(phantom_folder, size=(24, 24), crop=32)
    with pytest.raises(ValueError, match="crop"):
        TumourSliceDataset(phantom_folder, crop=16)  # no size: slices differ
    with pytest.raises(ValueError, match="crop_lesion"):
        TumourSliceDataset(phantom_folder, size=(24, 24), crop=16, crop_lesion=1.5)
    cropped, val = stage_datasets("tumour", [first], [third], size=24, crop=16)
    assert cropped[0]["image"].shape == (1, 16, 16) and val[0]["image"].shape == (1, 24, 24)
    with pytest.raises(ValueError, match="crop"):
        stage_datasets("liver", [first], [third], size=24, crop=16)


def test_tumour_darkness_channel_equals_the_cascades(phantom_folder: Path, loaded) -> None:
    # training and the cascade build the darkness channel alike: before the resize, over
    # the mask the image is zeroed outside, appended after the slices
    from featsup.data import DARKNESS_SIGMAS, find_roi
    from featsup.inference._tumour_input import masked_crop

    ds = TumourSliceDataset(
        phantom_folder, size=(64, 64), empty_fraction=None, margin=8, darkness=DARKNESS_SIGMAS
    )
    plain = TumourSliceDataset(phantom_folder, size=(64, 64), empty_fraction=None, margin=8)
    case = loaded[2]
    liver = case.labels > 0
    roi = find_roi(liver, margin=(0, 8, 8), size=(64, 64))
    crop = masked_crop(preprocess_volume(case.volume), liver, roi, 0, DARKNESS_SIGMAS)
    assert crop.shape[1] == 2
    z0 = roi.bbox[0][0]
    items = [(ds[i], plain[i]) for i in range(len(ds)) if ds[i]["case_id"] == "2"]
    assert len(items) == crop.shape[0] and items[0][0]["image"].shape == (2, 64, 64)
    for item, without in items:
        torch.testing.assert_close(item["image"][:1], without["image"])  # the slice unchanged
        torch.testing.assert_close(
            item["image"], torch.from_numpy(crop[item["slice_index"] - z0]), atol=1e-5, rtol=0
        )
    dark = torch.stack([item["image"][1] for item, _ in items])
    tumour = torch.stack([item["target"] for item, _ in items]).bool()
    assert dark[tumour].mean() > dark[~tumour & (dark != 0)].mean()  # lesions read darker
    with pytest.raises(ValueError, match="darkness"):
        TumourSliceDataset(phantom_folder, darkness=(8.0, 2.0))
