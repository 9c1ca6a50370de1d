"""Grow the cascade's dark tumours into the dark liver tissue around them.

On the phantom, the lesions the tumour stage finds are often found only in part: the
model outlines the darkest core of a hypodense lesion and leaves its paler outer zone to
the liver (docs/cascade-record.md, "Growing the found tumours by HU"). Where the missed
part is still clearly darker than the liver, a plain region growing by intensity
recovers it: :func:`grow_dark_tumours` grows each large enough tumour component whose
median HU lies well below the liver's, in-plane, into neighbouring organ voxels darker
than the midpoint of the two medians.

Only tumours are grown, never started: the step decides nothing about which lesions
exist, so it sits after the tumour filter (``Cascade(tumour_grow=)``, when set).

Example:
    >>> labels = np.zeros((3, 40, 40), np.uint8)
    >>> labels[:, 4:36, 4:36] = 1
    >>> labels[1, 16:24, 16:24] = 2  # the core the model found
    >>> image = np.where(labels > 0, 0.55, 0.0).astype(np.float32)  # 115 HU in -50..250
    >>> image[1, 12:28, 12:28] = 0.40  # the whole lesion, 45 HU below the liver
    >>> grown = grow_dark_tumours(labels, image, min_voxels=10, smooth=0)
    >>> int((labels == 2).sum()), int((grown == 2).sum())
    (64, 256)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from featsup._checks import check_positive

__all__ = ["GROW_CONTRAST_HU", "GROW_ITERATIONS", "GROW_MIN_VOXELS", "grow_dark_tumours"]

GROW_CONTRAST_HU = 20.0
"""How far (HU) a tumour component's median lies below the liver's, at least, to grow."""

GROW_ITERATIONS = 5
"""In-plane growing steps (pixels) from a component's edge, at most."""

GROW_MIN_VOXELS = 1000
"""The smallest tumour component grown, in voxels (small ones are mostly over-segmented
already at the filter's threshold)."""

_CUBE = np.ones((3, 3, 3), bool)
_PLANE = np.zeros((3, 3, 3), bool)
_PLANE[1] = True


def grow_dark_tumours(
    labels: np.ndarray,
    image: np.ndarray,
    *,
    window: Sequence[float] = (-50.0, 250.0),
    contrast_hu: float = GROW_CONTRAST_HU,
    iterations: int = GROW_ITERATIONS,
    min_voxels: int = GROW_MIN_VOXELS,
    smooth: int = 1,
) -> np.ndarray:
    """Labels whose dark tumour components are grown into the dark organ around them.

    The image is read back to HU and smoothed by an in-plane ``(2 * smooth + 1)``-square
    mean. The liver's HU is the median over the organ's voxels that are not tumour
    (``labels == 1``). Each 26-connected tumour component of at least ``min_voxels``
    voxels whose median HU lies at least ``contrast_hu`` below the liver's grows,
    ``iterations`` in-plane 8-connected steps at most, into voxels of the organ
    (``labels > 0``, dilated one pixel in-plane) whose smoothed HU is below the midpoint
    of its median and the liver's. Components brighter than that, smaller, or in a
    volume with no liver voxel are left as they are; nothing else changes.

    Args:
        labels: (D, H, W) uint8 labels, 0 background, 1 liver, 2 tumour (the cascade's).
        image: (D, H, W) float tumour-model input, a min-max HU window (0..1 over
            ``window``; the cascade's ``LiverStage.image``).
        window: the (low, high) HU window of ``image``.
        contrast_hu: how far (HU) a component's median lies below the liver's, at least.
        iterations: in-plane growing steps, at least 1.
        min_voxels: the smallest component grown, at least 1.
        smooth: the in-plane mean's half-width in pixels (0: none).

    Returns:
        (D, H, W) uint8 labels: ``labels`` with grown voxels set to 2.

    Raises:
        ValueError: for a non-positive ``contrast_hu``, ``iterations`` or ``min_voxels``,
            a negative ``smooth``, a bad window, or arrays of different or non-3D shapes.
    """
    check_positive("contrast_hu", contrast_hu)
    check_positive("iterations", iterations)
    check_positive("min_voxels", min_voxels)
    if int(smooth) != smooth or smooth < 0:
        raise ValueError(f"smooth: expected an integer >= 0, got {smooth!r}")
    low, high = (float(v) for v in window)
    if not high > low:
        raise ValueError(f"window: expected (low, high) HU with high > low, got {tuple(window)}")
    labels = np.asarray(labels)
    if labels.ndim != 3 or np.shape(image) != labels.shape:
        raise ValueError(f"labels, image: expected one (D, H, W) shape, got {labels.shape} "
                         f"and {np.shape(image)}")  # fmt: skip
    tumour = labels == 2
    liver = labels == 1
    out = labels.copy()
    if not tumour.any() or not liver.any():
        return out
    hu = low + np.asarray(image, np.float32) * np.float32(high - low)
    if smooth:
        size = 2 * int(smooth) + 1
        hu = ndimage.uniform_filter(hu, size=(1, size, size), mode="nearest")
    liver_hu = float(np.median(hu[liver]))
    organ = ndimage.binary_dilation(labels > 0, _PLANE)
    components, _ = ndimage.label(tumour, structure=_CUBE)
    reach = int(iterations)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        # the component's box, widened in-plane by as far as it can grow
        box = (box[0], *(slice(max(b.start - reach, 0), b.stop + reach) for b in box[1:]))
        component = components[box] == index
        if int(component.sum()) < min_voxels:
            continue
        median = float(np.median(hu[box][component]))
        if median > liver_hu - contrast_hu:
            continue
        allowed = (organ[box] & (hu[box] < (median + liver_hu) / 2)) | component
        grown = ndimage.binary_dilation(component, _PLANE, iterations=reach, mask=allowed)
        out[box][grown] = 2
    return out
