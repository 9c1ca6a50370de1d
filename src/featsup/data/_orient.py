"""Orientation between NIfTI voxel order and featsup's processing order.

On disk a NIfTI array is indexed ``(i, j, k)`` and its affine maps voxels to RAS+ world
millimetres. featsup processes every volume as a numpy array in the order ``(D, H, W)``:

- ``D`` (axis 0, axial slice index) runs from inferior to superior,
- ``H`` (axis 1, image rows) from anterior to posterior,
- ``W`` (axis 2, image columns) from the patient's right to the patient's left.

This is the voxel orientation "LPS" (i towards Left, j towards Posterior, k towards
Superior, as DICOM and ITK store images) read back to front, so ``volume[d]`` is an axial
slice in the radiological display convention (anterior at the top, the patient's right on
the left of the screen) and ``SimpleITK.GetArrayFromImage`` gives the same array. Spacing
tuples always follow the array axes: ``(slice spacing, row spacing, column spacing)``.
Reorientation only flips and permutes axes, so it is exact and reversible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LPS = ("L", "P", "S")


def nibabel() -> Any:
    """Import nibabel or explain which extra provides it."""
    try:
        import nibabel as nib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "featsup.data needs nibabel for NIfTI files; "
            'install it with pip install "featsup[data]"'
        ) from err
    return nib


def to_processing_ornt(affine: np.ndarray) -> np.ndarray:
    """Orientation transform from an image's voxel axes to LPS voxel axes."""
    orientations = nibabel().orientations
    return orientations.ornt_transform(
        orientations.io_orientation(affine), orientations.axcodes2ornt(LPS)
    )


def to_processing(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder a disk-order array ``(i, j, k)`` into processing order ``(D, H, W)``."""
    lps = nibabel().orientations.apply_orientation(data, to_processing_ornt(affine))
    return np.ascontiguousarray(np.transpose(lps, (2, 1, 0)))


def from_processing(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_processing`: ``(D, H, W)`` back to the image's voxel order."""
    orientations = nibabel().orientations
    back = orientations.ornt_transform(
        orientations.axcodes2ornt(LPS), orientations.io_orientation(affine)
    )
    return np.ascontiguousarray(
        orientations.apply_orientation(np.transpose(array, (2, 1, 0)), back)
    )


def processing_spacing(zooms: Sequence[float], affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in processing order ``(D, H, W)`` from the header zooms (disk order)."""
    ornt = to_processing_ornt(affine)
    lps = [0.0, 0.0, 0.0]
    for disk_axis, (lps_axis, _) in enumerate(ornt):
        lps[int(lps_axis)] = float(zooms[disk_axis])
    return lps[2], lps[1], lps[0]


def processing_affine(
    spacing: Sequence[float], shape: Sequence[int], axcodes: Sequence[str] = LPS
) -> tuple[np.ndarray, np.ndarray]:
    """Affine for a ``(D, H, W)`` array written with voxel axes ``axcodes``, centred at 0.

    Returns:
        ``(affine, ornt)`` where ``ornt`` turns the LPS-ordered array into ``axcodes`` order
        (apply it with ``nibabel.orientations.apply_orientation``).
    """
    orientations = nibabel().orientations
    sd, sh, sw = (float(v) for v in spacing)
    lps_shape = (int(shape[2]), int(shape[1]), int(shape[0]))
    base = np.diag([-sw, -sh, sd, 1.0])
    base[:3, 3] = -base[:3, :3] @ ((np.asarray(lps_shape, float) - 1.0) / 2.0)
    ornt = orientations.ornt_transform(
        orientations.axcodes2ornt(LPS), orientations.axcodes2ornt(tuple(axcodes))
    )
    return base @ orientations.inv_ornt_aff(ornt, lps_shape), ornt
