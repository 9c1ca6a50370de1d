"""Checked reading of NIfTI files: one-line ValueErrors naming the file, expected, found."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featsup.data._orient import nibabel

if TYPE_CHECKING:
    from featsup.data.lits import LitsCase


def open_nifti(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"{path}: expected an existing NIfTI file, found nothing")
    try:
        image = nibabel().load(str(path))
    except Exception as err:  # nibabel raises many types for broken files
        raise ValueError(f"{path}: expected a readable NIfTI file, got {err}") from err
    if len(image.shape) != 3:
        raise ValueError(
            f"{path}: expected a 3D volume (X, Y, Z), got shape {tuple(image.shape)}; "
            "fix: store one 3D volume per file"
        )
    return image


def read_voxels(image: Any, path: Path) -> np.ndarray:
    try:
        return np.asanyarray(image.dataobj)
    except Exception as err:
        raise ValueError(f"{path}: expected readable voxel data, got {err}") from err


def check_finite(data: np.ndarray, path: Path) -> None:
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise ValueError(f"{path}: expected finite voxels, found {bad} NaN/Inf voxels")


def check_labels(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype.kind == "f":
        check_finite(data, path)
    outside = (data < 0) | (data > 2)
    if data.dtype.kind == "f":
        outside |= data != np.floor(data)
    if outside.any():
        found = np.unique(data[outside])[:5].tolist()
        raise ValueError(
            f"{path}: expected labels in {{0, 1, 2}}, found values {found}; "
            "fix: map them to 0 background, 1 liver, 2 tumour"
        )
    return data.astype(np.uint8, copy=False)


def check_pair(case: LitsCase, vol_image: Any, seg_image: Any) -> None:
    seg = case.segmentation_path
    if tuple(vol_image.shape) != tuple(seg_image.shape):
        raise ValueError(
            f"{seg}: expected the shape of {case.volume_path.name} {tuple(vol_image.shape)}, "
            f"got {tuple(seg_image.shape)}"
        )
    if not np.allclose(vol_image.affine, seg_image.affine, rtol=1e-5, atol=1e-3):
        raise ValueError(
            f"{seg}: expected the affine of {case.volume_path.name} "
            f"{np.round(vol_image.affine, 3).tolist()}, "
            f"got {np.round(seg_image.affine, 3).tolist()}"
        )
