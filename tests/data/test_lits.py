from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from featsup.data import (
    LazyCases,
    LitsCase,
    check_dataset,
    find_cases,
    load_case,
    load_segmentation,
    load_volume,
    make_phantom,
    save_prediction,
    validate_case,
    write_phantom_dataset,
)

SHAPE = (32, 96, 96)  # as written by the phantom_folder fixture


def _write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _pair(folder: Path, n: int, vol: np.ndarray, seg: np.ndarray, seg_affine=None) -> LitsCase:
    v = _write(folder / f"volume-{n}.nii", vol)
    s = _write(folder / f"segmentation-{n}.nii", seg, seg_affine)
    return LitsCase(str(n), v, s)


def test_find_cases_in_a_folder(phantom_folder: Path) -> None:
    cases = find_cases(phantom_folder)
    assert [c.case_id for c in cases] == ["0", "1", "2"]
    assert cases[2].volume_path.name == "volume-2.nii.gz"
    assert cases[2].segmentation_path.name == "segmentation-2.nii.gz"


def test_find_cases_sorts_numerically_and_searches_subfolders(tmp_path: Path) -> None:
    vol, seg = np.zeros((4, 4, 4), np.int16), np.zeros((4, 4, 4), np.uint8)
    (tmp_path / "Training Batch 2").mkdir()
    for n in (10, 2):
        _pair(tmp_path / "Training Batch 2" if n == 10 else tmp_path, n, vol, seg)
    assert [c.case_id for c in find_cases(tmp_path)] == ["2", "10"]


def test_find_cases_from_pairs_and_manifests(phantom_folder: Path, tmp_path: Path) -> None:
    reference = find_cases(phantom_folder)
    pairs = [(c.volume_path, c.segmentation_path) for c in reference]
    assert find_cases(pairs) == reference
    rows = [{"volume": str(v), "segmentation": str(s)} for v, s in pairs]
    (tmp_path / "m.json").write_text(json.dumps({"cases": rows}))
    assert find_cases(tmp_path / "m.json") == reference
    csv_text = "id,volume,segmentation\n" + "".join(
        f"c{i},{v},{s}\n" for i, (v, s) in enumerate(pairs)
    )
    (tmp_path / "m.csv").write_text(csv_text)
    from_csv = find_cases(tmp_path / "m.csv")
    assert [c.case_id for c in from_csv] == ["c0", "c1", "c2"]
    assert [c.volume_path for c in from_csv] == [c.volume_path for c in reference]


def test_manifest_paths_are_relative_to_the_manifest(phantom_folder: Path) -> None:
    manifest = phantom_folder / "relative.csv"
    manifest.write_text("volume,segmentation\nvolume-1.nii.gz,segmentation-1.nii.gz\n")
    try:
        (case,) = find_cases(manifest)
        assert case.case_id == "1" and case.volume_path == phantom_folder / "volume-1.nii.gz"
    finally:
        manifest.unlink()


def test_discovery_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="found none"):
        find_cases(tmp_path)
    _write(tmp_path / "volume-3.nii", np.zeros((4, 4, 4), np.int16))
    with pytest.raises(ValueError, match=r"volume-3.nii: expected a matching segmentation-3"):
        find_cases(tmp_path)
    assert find_cases(tmp_path, require_segmentation=False)[0].segmentation_path is None
    (tmp_path / "bad.csv").write_text("path,label\na,b\n")
    with pytest.raises(ValueError, match=r"bad\.csv: expected a CSV header"):
        find_cases(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="not found"):
        find_cases(tmp_path / "nowhere")


def test_duplicate_case_ids_are_rejected(tmp_path: Path) -> None:
    _write(tmp_path / "volume-1.nii", np.zeros((4, 4, 4), np.int16))
    _write(tmp_path / "volume-1.nii.gz", np.zeros((4, 4, 4), np.int16))
    with pytest.raises(ValueError, match="one file per case id"):
        find_cases(tmp_path)


def test_load_case_in_processing_order(phantom_folder: Path) -> None:
    loaded = load_case(find_cases(phantom_folder)[1])
    expected = make_phantom(12, SHAPE)
    assert loaded.volume.dtype == np.float32 and loaded.labels.dtype == np.uint8
    np.testing.assert_array_equal(loaded.volume, expected.volume)
    np.testing.assert_array_equal(loaded.labels, expected.labels)
    assert loaded.spacing == pytest.approx(expected.spacing, rel=1e-6)
    assert loaded.case_id == "1" and loaded.affine.shape == (4, 4)


def test_lazy_cases_load_each_case_when_read(phantom_folder: Path, tmp_path: Path) -> None:
    cases = find_cases(phantom_folder)
    lazy = LazyCases(cases)
    assert len(lazy) == len(cases) and len(lazy[1:]) == len(cases) - 1
    for read, case in ((lazy[1], cases[1]), (lazy[-1], cases[-1]), (lazy[1:][0], cases[1])):
        expected = load_case(case)
        assert read.case_id == expected.case_id
        np.testing.assert_array_equal(read.volume, expected.volume)
        np.testing.assert_array_equal(read.labels, expected.labels)
    assert [c.case_id for c in lazy] == [c.case_id for c in cases]
    assert lazy[0] is not lazy[0]  # loaded on each read, never held
    with pytest.raises(IndexError):
        lazy[len(cases)]
    gone = LazyCases([(tmp_path / "gone.nii", None)])  # nothing is read before access
    with pytest.raises(ValueError, match=r"gone\.nii"):
        gone[0]


def test_loading_is_orientation_invariant(tmp_path: Path) -> None:
    a = write_phantom_dataset(tmp_path / "a", 1, seed=4, shape=(12, 24, 20), axcodes="LPS")
    b = write_phantom_dataset(tmp_path / "b", 1, seed=4, shape=(12, 24, 20), axcodes="ARI")
    va, sa, _ = load_volume(a[0][0])
    vb, sb, _ = load_volume(b[0][0])
    np.testing.assert_array_equal(va, vb)
    assert sa == pytest.approx(sb)
    np.testing.assert_array_equal(load_segmentation(a[0][1])[0], load_segmentation(b[0][1])[0])


def _bad_cases(folder: Path) -> dict[str, str]:
    """Write one bad case per kind; returns case id -> expected message fragment."""
    good_vol = np.zeros((6, 5, 4), np.int16)
    good_seg = np.zeros((6, 5, 4), np.uint8)
    nan_vol = good_vol.astype(np.float32)
    nan_vol[1, 1, 1] = np.nan
    inf_vol = good_vol.astype(np.float32)
    inf_vol[0, 0, 0] = np.inf
    bad_labels = good_seg.copy()
    bad_labels[0, 0, 0] = 3
    frac_labels = good_seg.astype(np.float32)
    frac_labels[0, 0, 1] = 0.5
    _pair(folder, 1, good_vol, good_seg)
    _pair(folder, 2, good_vol, np.zeros((6, 5, 3), np.uint8))
    _pair(folder, 3, good_vol, good_seg, np.diag([2.0, 1.0, 1.0, 1.0]))
    _pair(folder, 4, good_vol, bad_labels)
    _pair(folder, 5, good_vol, frac_labels)
    _pair(folder, 6, nan_vol, good_seg)
    _pair(folder, 7, inf_vol, good_seg)
    _pair(folder, 8, np.zeros((6, 5), np.int16), np.zeros((6, 5), np.uint8))
    _pair(folder, 9, np.zeros((6, 5, 4, 2), np.int16), np.zeros((6, 5, 4, 2), np.uint8))
    (folder / "volume-10.nii").write_bytes(b"not a nifti file at all")
    _write(folder / "segmentation-10.nii", good_seg)
    _write(folder / "volume-11.nii", good_vol)  # its segmentation is missing
    return {
        "2": r"segmentation-2.nii: expected the shape of volume-2.nii \(6, 5, 4\), got \(6, 5, 3\)",
        "3": r"segmentation-3.nii: expected the affine of volume-3.nii",
        "4": r"segmentation-4.nii: expected labels in \{0, 1, 2\}, found values \[3\]",
        "5": r"segmentation-5.nii: expected labels in \{0, 1, 2\}, found values \[0.5\]",
        "6": r"volume-6.nii: expected finite voxels, found 1 NaN/Inf",
        "7": r"volume-7.nii: expected finite voxels, found 1 NaN/Inf",
        "8": r"volume-8.nii: expected a 3D volume \(X, Y, Z\), got shape \(6, 5\)",
        "9": r"volume-9.nii: expected a 3D volume \(X, Y, Z\), got shape \(6, 5, 4, 2\)",
        "10": r"volume-10.nii: expected a readable NIfTI file",
        "11": r"volume-11.nii: expected a matching segmentation-11",
    }


def test_each_bad_input_raises_a_clear_error(tmp_path: Path) -> None:
    expected = _bad_cases(tmp_path)
    validate_case(LitsCase("1", tmp_path / "volume-1.nii", tmp_path / "segmentation-1.nii"))
    for case_id, pattern in expected.items():
        if case_id == "11":
            continue
        case = LitsCase(
            case_id, tmp_path / f"volume-{case_id}.nii", tmp_path / f"segmentation-{case_id}.nii"
        )
        with pytest.raises(ValueError, match=pattern):
            load_case(case)
        with pytest.raises(ValueError, match=pattern):
            validate_case(case)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"gone.nii: expected an existing NIfTI file"):
        load_volume(tmp_path / "gone.nii")


def test_check_dataset_reports_every_bad_case(tmp_path: Path) -> None:
    expected = _bad_cases(tmp_path)
    _write(tmp_path / "segmentation-12.nii", np.zeros((6, 5, 4), np.uint8))  # orphan
    problems = check_dataset(tmp_path)
    by_id = {p.case_id: p for p in problems}
    assert set(by_id) == set(expected) | {"12"}  # all bad ones, and case 1 is fine
    for case_id, pattern in expected.items():
        assert re.search(pattern, by_id[case_id].message), (case_id, by_id[case_id].message)
    assert by_id["4"].path.name == "segmentation-4.nii"
    assert by_id["6"].path.name == "volume-6.nii"
    assert "expected a matching volume-12" in by_id["12"].message


def test_check_dataset_headers_only_skips_voxel_checks(tmp_path: Path) -> None:
    _bad_cases(tmp_path)
    ids = {p.case_id for p in check_dataset(tmp_path, read_data=False)}
    assert {"2", "3", "8", "9", "10", "11"} <= ids
    assert not ids & {"4", "5", "6", "7"}


def test_check_dataset_on_a_clean_folder(phantom_folder: Path) -> None:
    assert check_dataset(phantom_folder) == []


@pytest.mark.parametrize("axcodes", ["LPS", "RAS", "IAL"])
def test_saved_predictions_reload_with_the_source_affine(tmp_path: Path, axcodes: str) -> None:
    pairs = write_phantom_dataset(tmp_path, 1, seed=2, shape=(10, 20, 16), axcodes=axcodes)
    case = find_cases(tmp_path)[0]
    loaded = load_case(case)
    out = save_prediction(torch.from_numpy(loaded.labels), case, tmp_path / "out" / "pred.nii.gz")
    saved, source = nib.load(out), nib.load(pairs[0][0])
    np.testing.assert_allclose(saved.affine, source.affine)
    np.testing.assert_allclose(saved.header.get_zooms(), source.header.get_zooms())
    assert saved.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(saved.affine) == tuple(axcodes)
    np.testing.assert_array_equal(
        np.asarray(saved.dataobj), np.asarray(nib.load(pairs[0][1]).dataobj)
    )
    np.testing.assert_array_equal(load_segmentation(out)[0], loaded.labels)


def test_save_prediction_checks_the_shape(phantom_folder: Path, tmp_path: Path) -> None:
    case = find_cases(phantom_folder)[0]
    with pytest.raises(ValueError, match=r"labels: expected shape \(32, 96, 96\)"):
        save_prediction(np.zeros((32, 96, 95), np.uint8), case.volume_path, tmp_path / "p.nii")


def test_save_prediction_from_a_scaled_float_volume(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([-1.5, 2.0, 3.0, 1.0]))
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, str(tmp_path / "volume-0.nii"))
    labels = np.random.default_rng(0).integers(0, 3, (6, 5, 4)).astype(np.uint8)
    out = save_prediction(labels, tmp_path / "volume-0.nii", tmp_path / "pred.nii")
    np.testing.assert_array_equal(load_segmentation(out)[0], labels)


def test_copying_a_case_elsewhere_keeps_it_loadable(phantom_folder: Path, tmp_path: Path) -> None:
    for name in ("volume-0.nii.gz", "segmentation-0.nii.gz"):
        shutil.copy(phantom_folder / name, tmp_path / name)
    np.testing.assert_array_equal(
        load_case(find_cases(tmp_path)[0]).labels, make_phantom(11, SHAPE).labels
    )
