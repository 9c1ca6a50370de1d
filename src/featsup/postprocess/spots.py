"""Dark spots in the liver: a second source of tumour candidates for the tumour filter.

In the liver's interior a plain local mean with no learning ranks small hypodense lesions
above the tumour model at the low false-positive rates the per-case Dice can afford
(``benchmarks/lesion_froc.py``, docs/cascade-record.md), but spots added to the cascade's
tumours as they are bring mostly noise. :func:`add_dark_spots` adds them as *candidates*
instead, for the learned tumour filter (:mod:`~featsup.postprocess.lesion_filter`) to
keep or drop with the model's own components: ``Cascade(tumour_spots=)``.

A spot is a 26-connected region of the liver mask where the darkness
(:func:`~featsup.data.darkness_channel`, in-plane Gaussian means over the mask) reaches
half the threshold, that holds a seed reaching the whole threshold deep in the liver (at
least ``depth`` pixels in-plane from its edge, and not in its top or bottom slice, where
it meets the lung), and that has at most ``max_voxels`` voxels (a larger region is the
liver's edge or a big lesion the model finds itself).

Example:
    >>> liver = np.zeros((5, 48, 48), bool)
    >>> liver[:, 4:44, 4:44] = True
    >>> image = np.where(liver, 0.55, 0.0).astype(np.float32)  # 115 HU in -50..250 HU
    >>> image[1:4, 20:28, 20:28] = 0.40  # an 8-pixel spot 45 HU below the liver
    >>> spots = dark_spots(image, liver, 25.0)
    >>> int(spots[2].sum()) > 0, bool(spots[0].any()), bool(spots[2, 5, 5])
    (True, False, False)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from featsup._checks import check_positive

__all__ = ["SPOT_DEPTH", "SPOT_MAX_VOXELS", "add_dark_spots", "dark_spots", "seeded_regions"]

SPOT_DEPTH = 6
"""Pixels in-plane a spot's seed lies inside the liver mask, at least (8.4 mm at the
phantom's 1.4 mm: ``benchmarks/lesion_froc.py``'s 8 mm, past the liver's edge)."""

SPOT_MAX_VOXELS = 500
"""The largest spot kept, in voxels (``benchmarks/lesion_froc.py``'s)."""

_CUBE = np.ones((3, 3, 3), bool)


def _deep(mask: np.ndarray, depth: int) -> np.ndarray:
    """Voxels of ``mask`` ``depth`` pixels in-plane from its edge, in it above and below."""
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    inner = mask[box]
    yy, xx = np.mgrid[-depth : depth + 1, -depth : depth + 1]
    disk = (yy**2 + xx**2 <= depth**2)[None]  # (1, 2d+1, 2d+1): in-plane only
    eroded = ndimage.binary_erosion(inner, disk, border_value=0)
    eroded[1:] &= inner[:-1]
    eroded[:-1] &= inner[1:]
    eroded[[0, -1]] = False  # the box's top and bottom slices have no neighbour inside
    out[box] = eroded
    return out


def dark_spots(
    image: np.ndarray,
    liver_mask: np.ndarray,
    threshold_hu: float,
    *,
    window: Sequence[float] = (-50.0, 250.0),
    depth: int = SPOT_DEPTH,
    max_voxels: int = SPOT_MAX_VOXELS,
) -> np.ndarray:
    """Bool (D, H, W) mask of the liver's dark spots (the module's definition).

    Args:
        image: (D, H, W) float tumour-model input, a min-max HU window (0..1 over
            ``window``; the cascade's ``LiverStage.image``).
        liver_mask: (D, H, W) bool.
        threshold_hu: how far (HU) a seed's local mean lies below the liver around it,
            at least; a spot's region reaches half of it.
        window: the (low, high) HU window of ``image``, to read HU from it.
        depth: pixels in-plane a seed lies inside the mask, at least.
        max_voxels: the largest spot kept.

    Raises:
        ValueError: for a non-positive threshold, depth or size, a bad window, or arrays
            of different or non-3D shapes.
    """
    from featsup.data.preprocess import darkness_channel

    check_positive("threshold_hu", threshold_hu)
    check_positive("depth", depth)
    check_positive("max_voxels", max_voxels)
    low, high = (float(v) for v in window)
    if not high > low:
        raise ValueError(f"window: expected (low, high) HU with high > low, got {tuple(window)}")
    liver_mask = np.asarray(liver_mask, dtype=bool)
    if np.ndim(image) != 3 or np.shape(image) != liver_mask.shape:
        raise ValueError(f"image, liver_mask: expected one (D, H, W) shape, got "
                         f"{np.shape(image)} and {liver_mask.shape}")  # fmt: skip
    scale = 10.0  # darkness_channel's: 1.0 is (high - low) / 10 HU
    threshold = float(threshold_hu) * scale / (high - low)
    darkness = darkness_channel(np.asarray(image, np.float32), liver_mask, scale=scale)
    seeds = (darkness >= threshold) & _deep(liver_mask, int(depth))
    if not seeds.any():
        return np.zeros(liver_mask.shape, bool)
    regions, keep = seeded_regions((darkness >= threshold / 2) & liver_mask, seeds, max_voxels)
    return keep[regions]


def seeded_regions(
    candidates: np.ndarray, seeds: np.ndarray, max_voxels: int
) -> tuple[np.ndarray, np.ndarray]:
    """The 26-connected regions of bool ``candidates``, and which hold a seed and are small.

    A region is kept when it holds a ``seeds`` voxel and has at most ``max_voxels`` voxels.
    Returns ``(regions, keep)``: (D, H, W) int labels (0: none) and bool (count + 1,)
    (``keep[0]`` False), so that ``keep[regions]`` is the mask of the kept regions.

    Example:
        >>> candidates = np.array([[[1, 1, 0, 1, 0, 1, 1, 1]]], bool)
        >>> seeds = np.array([[[1, 0, 0, 0, 0, 0, 1, 0]]], bool)
        >>> regions, keep = seeded_regions(candidates, seeds, max_voxels=2)
        >>> keep[regions].astype(int).tolist()
        [[[1, 1, 0, 0, 0, 0, 0, 0]]]
    """
    regions, count = ndimage.label(candidates, structure=_CUBE)
    keep = np.zeros(count + 1, bool)
    keep[np.unique(regions[seeds & candidates])] = True
    keep &= np.bincount(regions.ravel(), minlength=count + 1) <= max_voxels
    keep[0] = False
    return regions, keep


def add_dark_spots(labels: np.ndarray, spots: np.ndarray) -> np.ndarray:
    """A copy of ``labels`` {0, 1, 2} with the liver (label 1) voxels of ``spots`` made tumour.

    They join any tumour component they touch, as candidates of one component.

    Example:
        >>> labels = np.array([[[0, 1, 1, 2]]], np.uint8)
        >>> add_dark_spots(labels, np.array([[[True, True, False, True]]])).tolist()
        [[[0, 2, 1, 2]]]
    """
    labels = np.asarray(labels)
    spots = np.asarray(spots, dtype=bool)
    if spots.shape != labels.shape:
        raise ValueError(f"labels, spots: expected one shape, got {labels.shape} and {spots.shape}")
    out = np.array(labels, copy=True)
    out[spots & (labels == 1)] = 2
    return out
