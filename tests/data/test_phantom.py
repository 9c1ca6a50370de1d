from __future__ import annotations

import json

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
        assert 95 <= np.median(v[lab == 1]) <= 125  # portal-venous liver parenchyma
        assert v.max() > 500  # bone
        hist = np.histogram(v, bins=[-1100, -900, -130, -60, 0, 100, 3000])[0]
        assert hist[2] > 0.03 * v.size  # plenty of fat around -100 HU


def test_contrast_phase_is_portal_venous() -> None:
    case = make_phantom(2, (48, 128, 128), noise_std=0.0)
    v, lab = case.volume.astype(np.float32), case.labels
    inside = ndimage.binary_erosion(lab == 1, iterations=2)  # away from bone and fat
    vessels = v[inside & (v > np.median(v[inside]) + 30)]  # portal and hepatic veins
    assert vessels.size and 140 <= np.median(vessels) <= 205
    for low, high, expected in ((0, 100, (38, 62)), (-150, -50, (-122, -78))):
        counts, edges = np.histogram(v[lab == 0], bins=np.arange(low, high + 1, 4))
        assert expected[0] <= edges[np.argmax(counts)] <= expected[1]  # muscle, fat peaks


def test_neighbouring_organs_have_liver_like_hu(cases: list) -> None:
    # the spleen, renal medulla and bowel walls overlap the liver: HU alone cannot segment it
    for case in cases[:3]:
        v, lab = case.volume.astype(np.float32), case.labels
        liver_like = (np.abs(v - np.median(v[lab == 1])) < 20) & (lab == 0)
        assert liver_like.sum() > 0.1 * (lab == 1).sum()


def _components(tumour: np.ndarray, full: bool = False) -> tuple[np.ndarray, np.ndarray]:
    structure = ndimage.generate_binary_structure(3, 3 if full else 1)
    components, n = ndimage.label(tumour, structure)
    return components, np.bincount(components.ravel(), minlength=n + 1)[1:]


@pytest.mark.parametrize(
    ("shape", "spacing", "seeds"),
    [
        ((48, 256, 256), None, range(3)),  # the example's shape, about 5.2 x 1.4 x 1.4 mm
        ((24, 64, 64), None, range(12)),  # coarse: 10.4 x 5.6 x 5.6 mm
        ((20, 48, 40), None, range(12)),
        ((24, 96, 96), (2.0, 1.0, 1.0), range(8)),  # fine voxels: the 5 mm rule binds
    ],
)
def test_no_labelled_tumour_under_10_voxels_or_5_mm(shape, spacing, seeds) -> None:
    for seed in seeds:
        case = make_phantom(seed, shape, spacing=spacing)
        tumour = case.labels == 2
        if not tumour.any():
            continue
        voxel_mm3 = float(np.prod(case.spacing))
        for full in (False, True):  # 6- and 26-connectivity
            sizes = _components(tumour, full)[1]
            assert sizes.min() >= 10, (seed, sizes.min())
            assert np.cbrt(6 * sizes.min() * voxel_mm3 / np.pi) >= 5.0


def test_tumours_contrast_sizes_counts_and_boundary(cases: list) -> None:
    counts, sizes, contrasts, touching = [], [], [], 0
    for case in cases:
        tumour, liver = case.labels == 2, case.labels == 1
        components, voxels = _components(tumour)
        counts.append(voxels.size)
        if voxels.size == 0:
            continue
        sizes += (voxels * float(np.prod(case.spacing))).tolist()
        v = case.volume.astype(np.float32)
        medians = ndimage.median(v, components, np.arange(1, voxels.size + 1))
        contrasts += (np.asarray(medians) - np.median(v[liver])).tolist()
        outside = ~ndimage.binary_dilation(case.labels > 0)
        touching += int((ndimage.binary_dilation(tumour, iterations=2) & outside).any())
    assert max(counts) >= 3
    # from 10 voxels (each about 41 mm^3 here) to several cm (r = 2 cm is 33,500 mm^3)
    assert min(sizes) >= 10 * 40.8 and max(sizes) > 33_500
    contrasts_hu = np.asarray(contrasts)
    assert np.mean(contrasts_hu) < -10  # mostly hypodense
    assert (contrasts_hu < 0).mean() > 0.6 and (contrasts_hu > 0).any()  # a few hyperdense
    assert (np.abs(contrasts_hu) > 8).mean() > 0.85  # visible through blur and noise
    assert np.abs(contrasts_hu).max() < 130
    assert touching >= 2  # some tumours reach the liver boundary


def test_lesions_are_exophytic_on_some_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    # the convex hull of the parenchyma cannot tell a bulge from a lesion that replaced a
    # lobe tip, so compare with the liver as it was just before the lesions were painted
    from featsup.data import _phantom_lesions as lesions

    paint, before = lesions.paint_tumours, []

    def recording(rng, grid, an, hu, code, *args):  # type: ignore[no-untyped-def]
        before.append(code == 1)
        return paint(rng, grid, an, hu, code, *args)

    monkeypatch.setattr(lesions, "paint_tumours", recording)
    bulging = 0
    for seed in range(12):
        labels = make_phantom(seed, SMALL).labels
        exophytic = (labels == 2) & ~before.pop()  # tumour where there was no liver
        bulging += int(exophytic.sum() >= 10)
    assert bulging >= 3, bulging


def test_lesions_sit_anywhere_in_the_liver(cases: list) -> None:
    sides, dome, left = np.zeros(6, dtype=int), 0, 0
    for case in cases:
        tumour, organ = case.labels == 2, case.labels > 0
        if not tumour.any():
            continue
        for k, (axis, step) in enumerate((a, s) for a in range(3) for s in (-1, 1)):
            beyond = np.roll(~organ, step, axis=axis)  # outside, one voxel along -step
            sides[k] += int((tumour & beyond).sum())
        rows = np.flatnonzero(organ.any(axis=(1, 2)))
        dome += int(tumour[rows[-1] - (rows[-1] - rows[0]) // 4 :].sum())
        left += int(tumour[:, :, case.labels.shape[2] // 2 + 8 :].sum())  # 22 mm left of centre
    assert (sides > 0).all(), sides  # boundary lesions face every direction
    assert dome > 0 and left > 0


def test_necrotic_centres_are_fluid_never_fat() -> None:
    for seed in range(8):
        case = make_phantom(seed, (48, 128, 128), noise_std=0.0)
        inner = ndimage.binary_erosion(case.labels == 2, iterations=2)
        if inner.any():
            assert case.volume[inner].min() > -20, seed  # fat is below -80 HU


def test_some_cases_have_no_tumour_and_some_several() -> None:
    counts = [ndimage.label(make_phantom(s, (24, 64, 64)).labels == 2)[1] for s in range(40)]
    assert 0 in counts and max(counts) >= 3


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


def test_reuse_keeps_a_dataset_only_when_its_settings_match(tmp_path) -> None:
    first = write_phantom_dataset(tmp_path, 2, seed=3, shape=(16, 32, 32))
    stamps = [p.stat().st_mtime_ns for pair in first for p in pair]
    again = write_phantom_dataset(tmp_path, 2, seed=3, shape=(16, 32, 32), reuse=True)
    assert again == first and [p.stat().st_mtime_ns for pair in again for p in pair] == stamps
    # another seed rewrites the cases, and they hold the new phantoms
    other = write_phantom_dataset(tmp_path, 2, seed=4, shape=(16, 32, 32), reuse=True)
    np.testing.assert_array_equal(load_case(other[0]).labels, make_phantom(4, (16, 32, 32)).labels)
    # a missing file is written again although the record matches
    other[1][1].unlink()
    write_phantom_dataset(tmp_path, 2, seed=4, shape=(16, 32, 32), reuse=True)
    assert other[1][1].is_file()
    # without reuse the cases are always written
    write_phantom_dataset(tmp_path, 2, seed=4, shape=(16, 32, 32))
    assert other[0][0].stat().st_mtime_ns > stamps[0]


def test_reuse_keeps_a_larger_dataset_and_extends_a_smaller_one(tmp_path) -> None:
    shape = (16, 32, 32)
    three = write_phantom_dataset(tmp_path, 3, seed=3, shape=shape, start_index=10)
    stamps = {p: p.stat().st_mtime_ns for pair in three for p in pair}
    # fewer cases than recorded: the first ones, nothing written, the record kept
    two = write_phantom_dataset(tmp_path, 2, seed=3, shape=shape, start_index=10, reuse=True)
    assert two == three[:2] and all(p.stat().st_mtime_ns == stamps[p] for pair in two for p in pair)
    assert json.loads((tmp_path / "phantom.json").read_text())[0] == 3
    # more: only the new ones are written, and they are the phantoms a fresh write holds
    five = write_phantom_dataset(tmp_path, 5, seed=3, shape=shape, start_index=10, reuse=True,
                                 num_workers=2)  # fmt: skip
    assert five[:3] == three and all(p.stat().st_mtime_ns == stamps[p] for p in stamps)
    assert [p.name for p in five[4]] == ["volume-14.nii.gz", "segmentation-14.nii.gz"]
    np.testing.assert_array_equal(load_case(five[4]).labels, make_phantom(7, shape).labels)
    assert json.loads((tmp_path / "phantom.json").read_text())[0] == 5
    fresh = write_phantom_dataset(tmp_path / "fresh", 5, seed=3, shape=shape, start_index=10)
    for a, b in zip(five, fresh, strict=True):
        np.testing.assert_array_equal(load_case(a).volume, load_case(b).volume)
    # another start or seed matches nothing: every case is written again
    write_phantom_dataset(tmp_path, 2, seed=3, shape=shape, start_index=11, reuse=True)
    assert json.loads((tmp_path / "phantom.json").read_text())[:2] == [2, 3]
