"""Liver-ROI crop with a fixed output size and its exact inverse, and 3D mask cleaning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage

from featsup._checks import check_choice, check_same_shape
from featsup.data._arrays import ResizeMode, as_array, resize
from featsup.metrics import bounding_box

#: voxels per chunk of slices resized at once by :func:`uncrop` (16 MiB of float32).
_CHUNK_VOXELS = 2**22


class RoiCrop(NamedTuple):
    """Where a crop came from, so :func:`uncrop` can put it back."""

    bbox: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    """``(start, stop)`` along (D, H, W) in the original grid."""
    original_shape: tuple[int, int, int]
    """(D, H, W) of the original volume."""
    size: tuple[int, int] | None
    """In-plane size the crop was resized to, or None (no resize)."""

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """The bounding box as slices into the original volume."""
        return tuple(slice(a, b) for a, b in self.bbox)  # type: ignore[return-value]

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """(D, H, W) of the bounding box before resizing."""
        return tuple(b - a for a, b in self.bbox)  # type: ignore[return-value]


def _margin3(margin: int | Sequence[int]) -> tuple[int, int, int]:
    values = (margin,) * 3 if isinstance(margin, (int, np.integer)) else tuple(margin)
    if len(values) != 3 or any(int(v) < 0 for v in values):
        raise ValueError(f"margin: expected an int >= 0 or three of them (D, H, W), got {margin!r}")
    return int(values[0]), int(values[1]), int(values[2])


def find_roi(
    mask: np.ndarray,
    *,
    margin: int | Sequence[int] = (1, 8, 8),
    size: Sequence[int] | None = None,
    if_empty: Literal["raise", "full"] = "raise",
) -> RoiCrop:
    """Bounding box of a (liver) mask plus a margin, clipped to the volume.

    Args:
        mask: (D, H, W) boolean or label array; any non-zero voxel is foreground.
        margin: voxels added on each side, one int or one per axis (D, H, W).
        size: ``(rows, columns)`` the crop will be resized to, or None.
        if_empty: ``"raise"`` or ``"full"`` (use the whole volume) for an empty mask.

    Returns:
        A :class:`RoiCrop`.

    Raises:
        ValueError: if the mask is empty and ``if_empty="raise"``, or an option is invalid.
    """
    check_choice("if_empty", if_empty, ("raise", "full"))
    array = as_array("mask", mask, (3,))
    pad = _margin3(margin)
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size: expected (rows, columns) >= 1, got {tuple(size)!r}")
    box = bounding_box(array, margin=pad)
    if box is None:
        if if_empty == "raise":
            raise ValueError(
                "mask: expected at least one foreground voxel, got an empty mask; "
                "fix: check the liver prediction or pass if_empty='full'"
            )
        box = tuple(slice(0, n) for n in array.shape)
    bbox = [(int(b.start), int(b.stop)) for b in box]
    shape = (array.shape[0], array.shape[1], array.shape[2])
    out_size = None if size is None else (int(size[0]), int(size[1]))
    return RoiCrop((bbox[0], bbox[1], bbox[2]), shape, out_size)


def apply_crop(volume: np.ndarray, roi: RoiCrop, *, mode: ResizeMode = "linear") -> np.ndarray:
    """Crop a (D, H, W) volume (or (C, D, H, W) channels) to ``roi`` and resize in-plane.

    Use ``mode="linear"`` for images and ``"nearest"`` for labels.
    """
    array = as_array("volume", volume, (3, 4))
    if tuple(array.shape[-3:]) != roi.original_shape:
        raise ValueError(
            f"volume: expected (..., D, H, W) = {roi.original_shape} as the ROI's volume, "
            f"got {array.shape}"
        )
    index = (Ellipsis, *roi.slices)
    crop = array[index]
    return crop if roi.size is None else resize(crop, roi.size, mode=mode)


def crop_to_roi(
    volume: np.ndarray,
    mask: np.ndarray,
    *,
    margin: int | Sequence[int] = (1, 8, 8),
    size: Sequence[int] | None = None,
    mode: ResizeMode = "linear",
    if_empty: Literal["raise", "full"] = "raise",
) -> tuple[np.ndarray, RoiCrop]:
    """Crop a volume to the bounding box of ``mask`` plus a margin, then resize in-plane.

    This is the tumour stage's input (paper section 4.1.3). :func:`uncrop` is the exact
    inverse back onto the original grid: with ``mode="nearest"`` and a ``size`` no
    smaller than the box, ``uncrop(crop_to_roi(x, m)[0], roi) == x`` inside the box.

    Args:
        volume: (D, H, W) image or labels.
        mask: (D, H, W) region of interest (non-zero = inside).
        margin: voxels added around the box, one int or (D, H, W).
        size: ``(rows, columns)`` of the output slices, or None to keep the box size.
        mode: ``"linear"`` for images, ``"nearest"`` for labels.
        if_empty: ``"raise"`` or ``"full"`` (crop nothing) when ``mask`` is empty.

    Returns:
        ``(crop, roi)``: crop of shape (d, rows, columns) and its :class:`RoiCrop`.

    Raises:
        ValueError: for mismatched shapes, an empty mask or invalid options.

    Example:
        >>> x = np.zeros((4, 32, 32), np.uint8)
        >>> x[1:3, 10:20, 12:18] = 1
        >>> crop, roi = crop_to_roi(x, x, margin=0, size=(16, 16), mode="nearest")
        >>> crop.shape, roi.bbox
        ((2, 16, 16), ((1, 3), (10, 20), (12, 18)))
        >>> bool((uncrop(crop, roi, mode="nearest") == x).all())
        True
    """
    check_same_shape("volume", volume, "mask", mask)
    roi = find_roi(mask, margin=margin, size=size, if_empty=if_empty)
    return apply_crop(volume, roi, mode=mode), roi


def uncrop(
    crop: np.ndarray, roi: RoiCrop, *, mode: ResizeMode = "nearest", fill: float = 0
) -> np.ndarray:
    """Put a crop (or a prediction on it) back onto the original grid.

    Args:
        crop: (d, rows, columns) or (C, d, rows, columns) as made by :func:`crop_to_roi`.
        roi: the :class:`RoiCrop` of that crop.
        mode: ``"nearest"`` for labels, ``"linear"`` for probabilities or images.
        fill: value outside the box.

    Returns:
        (D, H, W) or (C, D, H, W) array; dtype of ``crop`` for nearest, float32 for linear.

    Raises:
        ValueError: if the crop does not match ``roi``.
    """
    array = as_array("crop", crop, (3, 4))
    d, h, w = roi.crop_shape
    expected = (d, *roi.size) if roi.size is not None else (d, h, w)
    if tuple(array.shape[-3:]) != tuple(expected):
        raise ValueError(
            f"crop: expected (..., d, rows, columns) = {tuple(expected)} from the ROI, "
            f"got {array.shape}"
        )
    dtype = array.dtype if roi.size is None or mode == "nearest" else np.dtype(np.float32)
    out = np.full((*array.shape[:-3], *roi.original_shape), fill, dtype=dtype)
    (d0, _), rows, cols = roi.bbox
    step = max(1, _CHUNK_VOXELS // max(1, h * w))  # a few slices at a time: no box-sized copy
    for start in range(0, d, step):
        part = array[..., start : start + step, :, :]
        back = part if roi.size is None else resize(part, (h, w), mode=mode)
        out[..., d0 + start : d0 + start + back.shape[-3], rows[0] : rows[1], cols[0] : cols[1]] = (
            back
        )
    return out


def largest_connected_component(mask: np.ndarray, *, connectivity: int = 1) -> np.ndarray:
    """Keep the largest 3D connected component of a mask (removes stray false positives).

    Args:
        mask: (D, H, W) (or any-dimensional) mask; non-zero is foreground.
        connectivity: 1 (faces), 2 (edges) or 3 (corners) neighbourhood, as in
            ``scipy.ndimage.generate_binary_structure``.

    Returns:
        Boolean array of the same shape; all False for an empty mask.

    Example:
        >>> m = np.zeros((1, 1, 7), bool)
        >>> m[0, 0, [0, 2, 3, 4]] = True
        >>> largest_connected_component(m)[0, 0].astype(int).tolist()
        [0, 0, 1, 1, 1, 0, 0]
    """
    array = np.asarray(mask)
    if not 1 <= connectivity <= max(array.ndim, 1):
        raise ValueError(
            f"connectivity: expected an int in [1, {array.ndim}], got {connectivity!r}"
        )
    structure = ndimage.generate_binary_structure(array.ndim, connectivity)
    labelled, count = ndimage.label(array != 0, structure=structure)
    if count == 0:
        return np.zeros(array.shape, dtype=bool)
    sizes = np.zeros(count + 1, dtype=np.intp)
    for part in np.array_split(labelled.reshape(-1), max(1, labelled.size // 2**22)):
        sizes += np.bincount(part, minlength=count + 1)  # bincount copies to intp: in parts
    sizes[0] = 0
    return labelled == int(sizes.argmax())
