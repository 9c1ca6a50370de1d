from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from featsup.data import FIELD_OF_VIEW_MM, load_case, make_phantom, write_phantom_dataset

SMALL = (48, 128, 128)


@pytest.fixture(scope="module")
def cases() -> list:
    return [make_phantom(seed, SMALL) for seed in range(12)]


def test_same_seed_same_volume_and_other_seed_differs() -> None:
    a, b, c = (
        make_phantom(5, (24, 64, 64)),
        make_phantom(5, (24, 64, 64)),
        make_phantom(6, (24, 64, 64)),
    )
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.volume, c.volume)


def test_dtypes_shapes_and_default_spacing() -> None:
    volume, labels, spacing = make_phantom(0, (20, 40, 60))
    assert volume.shape == labels.shape == (20, 40, 60)
    assert volume.dtype == np.int16 and labels.dtype == np.uint8
    assert spacing == pytest.approx((FIELD_OF_VIEW_MM[0] / 20, FIELD_OF_VIEW_MM[1] / 40, 6.0))
    assert make_phantom(0, (20, 40, 60), spacing=(2.5, 0.7, 0.7)).spacing == (2.5, 0.7, 0.7)


def test_default_spacing_is_lits_like() -> None:
    # no volume is built: only the documented default is checked
    assert FIELD_OF_VIEW_MM[0] / 100 == pytest.approx(2.5)
    assert FIELD_OF_VIEW_MM[1] / 512 == pytest.approx(0.703125)


def test_label_set_and_liver_extent(cases: list) -> None:
    for case in cases:
        assert set(np.unique(case.labels).tolist()) <= {0, 1, 2}
        liver = case.labels > 0
        share = liver.mean()
        assert 0.015 < share < 0.12, share
        slices_with_liver = liver.reshape(liver.shape[0], -1).any(axis=1).mean()
        assert 0.4 < slices_with_liver < 0.9, slices_with_liver  # some slices without liver
        assert ndimage.label(liver)[1] == 1  # one organ


def test_hounsfield_statistics(cases: list) -> None:
    for case in cases:
        v, lab = case.volume.astype(np.float32), case.labels
        assert v[:, :3, :3].mean() < -950  # air in the corners
        assert 50 <= np.median(v[lab == 1]) <= 72  # liver 50-70 HU plus noise and vessels
        assert v.max() > 500  # bone
        hist = np.histogram(v, bins=[-1100, -900, -130, -60, 0, 100, 3000])[0]
        assert hist[2] > 0.03 * v.size  # plenty of fat around -100 HU


def test_neighbouring_organs_have_liver_like_hu(cases: list) -> None:
    # the spleen / kidney / muscle range overlaps the liver: HU alone cannot segment it
    case = cases[0]
    v, lab = case.volume.astype(np.float32), case.labels
    liver_like = (v > 45) & (v < 75) & (lab == 0)
    assert liver_like.sum() > 0.5 * (lab == 1).sum()


def test_tumours_contrast_sizes_counts_and_boundary(cases: list) -> None:
    counts, sizes, contrasts, touching = [], [], [], 0
    for case in cases:
        tumour, liver = case.labels == 2, case.labels == 1
        components, n = ndimage.label(tumour)
        counts.append(n)
        if n == 0:
            continue
        voxel_mm3 = float(np.prod(case.spacing))
        sizes += (np.bincount(components.ravel())[1:] * voxel_mm3).tolist()
        v = case.volume.astype(np.float32)
        inner = ndimage.binary_erosion(tumour)
        if inner.any():
            contrasts.append(abs(np.median(v[inner]) - np.median(v[liver])))
        outside = ~ndimage.binary_dilation(case.labels > 0)
        touching += int((ndimage.binary_dilation(tumour, iterations=2) & outside).any())
    assert max(counts) >= 3
    # from a few voxels (each about 41 mm^3 here) to several cm (r = 2 cm is 33,500 mm^3)
    assert min(sizes) < 5 * 41.2 and max(sizes) > 33_500
    assert min(contrasts) > 10 and max(contrasts) < 90
    assert touching >= 2  # some tumours reach the liver boundary


def test_some_cases_have_no_tumour_and_some_several() -> None:
    counts = [ndimage.label(make_phantom(s, (24, 64, 64)).labels == 2)[1] for s in range(40)]
    assert 0 in counts and max(counts) >= 3


def test_tumours_lie_inside_the_liver(cases: list) -> None:
    for case in cases:
        tumour = case.labels == 2
        if tumour.any():
            organ = ndimage.binary_fill_holes(case.labels > 0)
            assert organ[tumour].all()


def test_noise_level_follows_noise_std() -> None:
    quiet = make_phantom(3, (24, 96, 96), noise_std=0.0).volume.astype(np.float32)
    noisy = make_phantom(3, (24, 96, 96), noise_std=20.0).volume.astype(np.float32)
    residual = (noisy - quiet)[:, :8, :8]  # air corner: only noise there
    assert 12.0 < residual.std() < 28.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (10, 20)}, "shape"),
        ({"shape": (4, 64, 64)}, "shape"),
        ({"shape": (16, 32, 32), "spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"shape": (16, 32, 32), "spacing": (1.0, 1.0)}, "spacing"),
        ({"shape": (16, 32, 32), "noise_std": -1.0}, "noise_std"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_phantom(0, **kwargs)


def test_seed_must_be_an_integer() -> None:
    with pytest.raises(TypeError, match="seed"):
        make_phantom(1.5, (16, 32, 32))  # type: ignore[arg-type]


@pytest.mark.parametrize("axcodes", ["LPS", "RAS", "LAI", "PSL"])
def test_written_cases_reload_to_the_phantom(tmp_path, axcodes: str) -> None:
    import nibabel as nib

    pairs = write_phantom_dataset(tmp_path, 2, seed=7, shape=(16, 40, 48), axcodes=axcodes)
    assert [p.name for p in pairs[1]] == ["volume-1.nii.gz", "segmentation-1.nii.gz"]
    image = nib.load(pairs[1][0])
    assert "".join(nib.aff2axcodes(image.affine)) == axcodes
    assert image.get_data_dtype() == np.int16
    loaded = load_case(pairs[1])
    expected = make_phantom(8, (16, 40, 48))
    np.testing.assert_array_equal(loaded.volume, expected.volume.astype(np.float32))
    np.testing.assert_array_equal(loaded.labels, expected.labels)
    assert loaded.spacing == pytest.approx(expected.spacing, rel=1e-6)


def test_write_uncompressed_with_a_pool(tmp_path) -> None:
    pairs = write_phantom_dataset(
        tmp_path, 2, shape=(16, 32, 32), compress=False, start_index=5, num_workers=2
    )
    assert [p[0].name for p in pairs] == ["volume-5.nii", "volume-6.nii"]
    np.testing.assert_array_equal(load_case(pairs[1]).labels, make_phantom(1, (16, 32, 32)).labels)


def test_write_rejects_bad_axcodes(tmp_path) -> None:
    with pytest.raises(ValueError, match="axcodes"):
        write_phantom_dataset(tmp_path, 1, shape=(16, 32, 32), axcodes="XYZ")
