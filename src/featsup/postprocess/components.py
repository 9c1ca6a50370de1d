"""Connected-component clean-up of tumour labels, and its validation sweep."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from featsup._checks import check_choice, check_in_range
from featsup.metrics._ops import dice

__all__ = [
    "TUMOUR_MIN_VOXELS",
    "TUMOUR_THRESHOLDS",
    "drop_small_tumours",
    "drop_surface_tumours",
    "inside_shares",
    "label_tumours",
    "surface_setting",
    "tumour_counts_by_min_voxels",
    "tumour_dice_by_min_voxels",
]

TUMOUR_MIN_VOXELS = (0, 25, 50, 100, 200, 400, 800)
"""Candidate smallest tumour components :func:`~featsup.inference.tune_on_validation` tries.

It ended at 200 until runs 9-12 of the cascade example each chose 200, its largest, with
the validation Dice still rising towards it (docs/cascade.md)."""

TUMOUR_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Candidate tumour probability thresholds :func:`~featsup.inference.tune_on_validation` tries.

0.5 is the argmax of a two-class model. A model trained with a Dice loss on slices that
mostly hold a lesion can be over- or under-confident on whole volumes, so the threshold
is chosen on validation cases like the smallest component.
"""


def _tumour_components(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected (3D; 8 in 2D) tumour components and their sizes (index 0: the rest)."""
    structure = np.ones((3,) * labels.ndim, bool)
    components, count = ndimage.label(labels == 2, structure=structure)
    return components, np.bincount(components.ravel(), minlength=count + 1)


def drop_small_tumours(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """Relabel tumour (2) components of fewer than ``min_voxels`` voxels as liver (1), in place.

    Components are 26-connected in 3D (8-connected in 2D), so that a lesion drawn
    diagonally across slices stays one.

    Args:
        labels: integer labels {0, 1, 2}, any number of dimensions.
        min_voxels: smallest tumour component kept; 0 (or 1) keeps all.

    Returns:
        ``labels``, changed in place.

    Example:
        >>> labels = np.ones((1, 6, 6), np.uint8)
        >>> labels[0, :3, :3], labels[0, 5, 5] = 2, 2
        >>> int((drop_small_tumours(labels, 2) == 2).sum())
        9
    """
    if min_voxels <= 1:
        return labels
    components, sizes = _tumour_components(labels)
    small = sizes < min_voxels
    small[0] = False
    labels[small[components]] = 1
    return labels


def drop_surface_tumours(labels: np.ndarray, depth: int, fraction: float) -> np.ndarray:
    """Relabel as liver (1) the tumour (2) components that lie on the liver's surface.

    A component goes when at least ``fraction`` of its voxels lie in the outer shell of
    the liver (``labels > 0``), ``depth`` voxels deep: what ``depth`` 6-connected
    erosions of the liver remove (``depth`` slices in z, ``depth`` pixels in-plane; the
    array's border counts as outside). Components are 26-connected in 3D. The liver,
    ``labels > 0``, is unchanged. It aims at false tumours that hug the liver's surface
    (partial volume with fat or lung darkens it there); true lesions touch the surface
    too. On the phantom's held-out cases it moved the tumour Dice by -0.001 to +0.009
    on the mean over six splits, so the cascade example leaves it off (docs/cascade.md,
    rules U-X).

    Args:
        labels: integer labels {0, 1, 2}, (D, H, W) or any number of dimensions.
        depth: the shell's depth in voxels, at least 1.
        fraction: the smallest share of a component in the shell that drops it, in (0, 1].

    Returns:
        A new array of ``labels``' dtype.

    Raises:
        ValueError: for a ``depth`` under 1 or a ``fraction`` outside (0, 1].

    Example:
        >>> labels = np.ones((5, 9, 9), np.uint8)
        >>> labels[2, 0, 3:6] = 2  # on the surface
        >>> labels[1:4, 3:6, 3:6] = 2  # deep inside
        >>> int((drop_surface_tumours(labels, 1, 0.95) == 2).sum())
        27
    """
    depth, fraction = surface_setting(depth, fraction)
    liver = np.asarray(labels) > 0
    components, sizes = _tumour_components(np.asarray(labels))
    shell = liver & ~ndimage.binary_erosion(liver, iterations=depth)
    in_shell = np.bincount(components[shell], minlength=len(sizes))
    drop = in_shell / np.maximum(sizes, 1) >= fraction
    drop[0] = False
    out = np.array(labels, copy=True)
    out[drop[components]] = 1
    return out


def surface_setting(depth: float, fraction: float) -> tuple[int, float]:
    """:func:`drop_surface_tumours`' ``(depth, fraction)`` checked: (int >= 1, float in (0, 1]).

    Raises:
        ValueError: for a ``depth`` under 1 or not whole, or a ``fraction`` outside (0, 1].
    """
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth: expected an integer >= 1, got {depth}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected a share in (0, 1], got {fraction}")
    return int(depth), float(fraction)


def label_tumours(
    liver_mask: np.ndarray,
    tumour_probability: np.ndarray,
    *,
    threshold: float = 0.5,
    min_voxels: int = 0,
    scope: Literal["liver", "roi"] = "liver",
    min_inside: float = 0.0,
) -> np.ndarray:
    """Labels {0, 1, 2}: liver where ``liver_mask``, tumour where above ``threshold``.

    With ``scope="liver"`` (paper 4.1.3) only voxels inside the liver mask can be tumour.
    With ``scope="roi"`` a tumour component (26-connected in 3D) that touches the liver
    mask is kept whole, the part outside it included, and joins the liver (LiTS: liver =
    label > 0); components that do not touch it are dropped. A predicted liver mask that
    leaves out part of a lesion at the liver's edge then no longer cuts the lesion.

    Args:
        liver_mask: (D, H, W) boolean liver mask (or any shape, matching the next).
        tumour_probability: tumour probabilities, the same shape.
        threshold: a voxel is tumour when its probability is above this (0.5: argmax).
        min_voxels: then :func:`drop_small_tumours` with this size (0 keeps all); a
            dropped component keeps only its part inside the liver mask, as liver.
        scope: ``"liver"`` or ``"roi"``, as above.
        min_inside: with ``scope="roi"``, the smallest share of a component's voxels
            that must lie inside the liver mask for it to be kept (0: any voxel, a touch).
            Dark tissue next to the liver that the tumour model takes for a lesion
            (such as a gallbladder, at the fluid density of a necrotic lesion's core)
            touches the liver but lies mostly outside it; a lesion at the liver's edge
            lies mostly inside. Unused with ``scope="liver"`` (every tumour voxel is inside).

    Returns:
        A new uint8 array.

    Raises:
        ValueError: if the shapes differ, ``scope`` is unknown or ``min_inside`` is
            outside [0, 1].

    Example:
        >>> mask = np.array([[[True, True, False]]])
        >>> prob = np.array([[[0.2, 0.7, 0.9]]], np.float32)
        >>> label_tumours(mask, prob).tolist(), label_tumours(mask, prob, scope="roi").tolist()
        ([[[1, 2, 0]]], [[[1, 2, 2]]])
        >>> label_tumours(mask, prob, scope="roi", min_inside=0.6).tolist()  # half inside
        [[[1, 1, 0]]]
    """
    check_choice("scope", scope, ("liver", "roi"))
    check_in_range("min_inside", min_inside, 0.0, 1.0)
    if np.shape(liver_mask) != np.shape(tumour_probability):
        raise ValueError(
            f"liver_mask, tumour_probability: expected one shape, got {np.shape(liver_mask)}"
            f" and {np.shape(tumour_probability)}"
        )
    mask = np.asarray(liver_mask, dtype=bool)
    tumour = np.asarray(tumour_probability) > threshold
    if scope == "liver":
        tumour &= mask
    else:
        components, count = ndimage.label(tumour, structure=np.ones((3,) * tumour.ndim, bool))
        shares = inside_shares(components, count, mask)
        tumour = ((shares > 0) & (shares >= min_inside))[components]  # the rest: share 0
    labels = mask.astype(np.uint8)
    labels[tumour] = 2
    labels = drop_small_tumours(labels, min_voxels)
    if scope == "roi":
        labels[(labels == 1) & ~mask] = 0  # dropped tumours leave the liver where it was
    return labels


def inside_shares(components: np.ndarray, count: int, mask: np.ndarray) -> np.ndarray:
    """Per labelled component (index 0: the rest, share 0), the share of it inside ``mask``.

    Example:
        >>> components = np.array([[0, 1, 1, 2]])
        >>> inside_shares(components, 2, np.array([[True, True, False, False]])).tolist()
        [0.0, 0.5, 0.0]
    """
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    inside = np.bincount(components[mask], minlength=count + 1)
    shares = inside / np.maximum(sizes, 1)
    shares[0] = 0.0
    return shares


def tumour_counts_by_min_voxels(
    pred: np.ndarray, truth: np.ndarray, sizes: Sequence[int] = TUMOUR_MIN_VOXELS
) -> np.ndarray:
    """Tumour overlap counts of ``pred`` after :func:`drop_small_tumours` with each of ``sizes``.

    The counts, not the Dice, so that a validation sweep can pool cases (a global Dice)
    as well as average them (a Dice per case). The components are found once, so a sweep
    costs one labelling, not one per size.

    Args:
        pred: predicted labels {0, 1, 2}.
        truth: true labels, the same shape (tumour = 2).
        sizes: smallest tumour components to try.

    Returns:
        An int64 array (len(sizes), 3): per size, the tumour voxels of both, of ``pred``
        and of ``truth``.

    Raises:
        ValueError: if the shapes differ.

    Example:
        >>> truth = np.zeros((1, 6, 6), np.uint8)
        >>> truth[0, :3, :3] = 2
        >>> pred = truth.copy()
        >>> pred[0, 5, 5] = 2
        >>> tumour_counts_by_min_voxels(pred, truth, (0, 2, 10)).tolist()
        [[9, 10, 9], [9, 9, 9], [0, 0, 9]]
    """
    if pred.shape != truth.shape:
        raise ValueError(f"pred, truth: expected one shape, got {pred.shape} and {truth.shape}")
    components, counts = _tumour_components(pred)
    target = truth == 2
    hits = np.bincount(components[target], minlength=len(counts))
    n_target = int(target.sum())
    rows = np.zeros((len(sizes), 3), np.int64)
    for row, size in zip(rows, sizes, strict=True):
        keep = counts >= size
        keep[0] = False
        row[:] = int(hits[keep].sum()), int(counts[keep].sum()), n_target
    return rows


def tumour_dice_by_min_voxels(
    pred: np.ndarray, truth: np.ndarray, sizes: Sequence[int] = TUMOUR_MIN_VOXELS
) -> list[float]:
    """Tumour Dice of ``pred`` after :func:`drop_small_tumours` with each of ``sizes``.

    The Dice of :func:`tumour_counts_by_min_voxels`'s rows (arguments and errors as
    there): the components are found once, so a sweep costs one labelling, not one per
    size.

    Returns:
        The tumour Dice (1.0 when both are empty) for each size, in order.

    Example:
        >>> truth = np.full((2, 4, 4), 2, np.uint8)
        >>> pred = np.ones_like(truth)
        >>> pred[0, 0, :2] = 2  # two true tumour voxels found
        >>> [round(d, 3) for d in tumour_dice_by_min_voxels(pred, truth, (0, 3))]
        [0.118, 0.0]
    """
    return [dice(*map(int, row)) for row in tumour_counts_by_min_voxels(pred, truth, sizes)]
