"""Array-level pieces of :mod:`featsup.metrics`: input checks, counts and surface distances."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _binary(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    return x if x.dtype == np.bool_ else x != 0


def binary_pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = _binary(pred, "pred"), _binary(target, "target")
    if p.shape != g.shape:
        raise ValueError(f"pred and target: expected the same shape, got {p.shape} and {g.shape}")
    return p, g


def counts(p: np.ndarray, g: np.ndarray) -> tuple[int, int, int]:
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g))


def dice(inter: int, n_pred: int, n_target: int) -> float:
    total = n_pred + n_target
    return 1.0 if total == 0 else 2.0 * inter / total


def voe(inter: int, n_pred: int, n_target: int) -> float:
    union = n_pred + n_target - inter
    return 0.0 if union == 0 else 1.0 - inter / union


def rvd(inter: int, n_pred: int, n_target: int) -> float:
    if n_target == 0:
        return 0.0 if n_pred == 0 else float("inf")
    return (n_pred - n_target) / n_target


def assd(to_target: np.ndarray, to_pred: np.ndarray) -> float:
    count = to_target.size + to_pred.size
    return 0.0 if count == 0 else float((to_target.sum() + to_pred.sum()) / count)


def msd(to_target: np.ndarray, to_pred: np.ndarray) -> float:
    both = [d.max() for d in (to_target, to_pred) if d.size]
    return float(max(both)) if both else 0.0


def surface_distance_arrays(
    p: np.ndarray, g: np.ndarray, sampling: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    box = bounding_box(p | g, margin=1)
    if box is None:  # both empty
        return np.zeros(0), np.zeros(0)
    surf_p, surf_g = boundary(p[box], outside=False), boundary(g[box], outside=False)
    if not surf_p.any() or not surf_g.any():  # exactly one is empty
        return np.full(int(surf_p.sum()), np.inf), np.full(int(surf_g.sum()), np.inf)
    return _nearest(surf_p, surf_g, sampling), _nearest(surf_g, surf_p, sampling)


def _nearest(points: np.ndarray, features: np.ndarray, sampling: tuple[float, ...]) -> np.ndarray:
    """Distance from each ``points`` voxel to the nearest ``features`` voxel.

    Uses SciPy's exact Euclidean feature transform (the index half of
    ``distance_transform_edt``) and evaluates distances at ``points`` only, which skips
    the full float64 distance volume.
    """
    from scipy.ndimage import distance_transform_edt

    nearest = distance_transform_edt(
        ~features, sampling=sampling, return_distances=False, return_indices=True
    )
    coords = np.nonzero(points)
    index = (slice(None), *coords)
    delta = (nearest[index] - np.stack(coords)).astype(np.float64)
    delta *= np.asarray(sampling, dtype=np.float64)[:, None]
    return np.sqrt(np.einsum("ij,ij->j", delta, delta))


def bounding_box(mask: Any, *, margin: int | Sequence[int] = 0) -> tuple[slice, ...] | None:
    """Bounding box of the non-zero voxels, grown by ``margin`` and clipped to the array.

    Args:
        mask: nD numpy array or torch tensor (any device); non-zero is foreground.
        margin: voxels added on each side, one int or one per axis.

    Returns:
        One slice per axis, or None for an empty mask.

    Raises:
        ValueError: if ``margin`` is negative or has the wrong length.

    Example:
        >>> m = np.zeros((4, 5), bool)
        >>> m[1:3, 2] = True
        >>> bounding_box(m, margin=1)
        (slice(0, 4, None), slice(1, 4, None))
    """
    ndim = mask.ndim
    pads = (margin,) * ndim if isinstance(margin, (int, np.integer)) else tuple(margin)
    if len(pads) != ndim or min(pads, default=0) < 0:
        raise ValueError(f"margin: expected an int >= 0 or {ndim} of them, got {margin!r}")
    fg = mask != 0
    box: list[slice] = []
    for axis in range(ndim):
        others = tuple(a for a in range(ndim) if a != axis)
        line = fg.any(others) if others else fg
        if isinstance(line, torch.Tensor):
            line = line.cpu().numpy()
        hits = np.flatnonzero(line)
        if hits.size == 0:
            return None
        low = max(int(hits[0]) - int(pads[axis]), 0)
        box.append(slice(low, min(int(hits[-1]) + 1 + int(pads[axis]), mask.shape[axis])))
    return tuple(box)


def boundary(mask: np.ndarray, *, outside: bool) -> np.ndarray:
    """Foreground voxels with a background face-neighbour (nD boolean mask).

    Used by the surface distances and by the boundary weight map (eq. 9).

    Args:
        mask: nD boolean array.
        outside: the value assumed beyond the array's edges: False makes voxels on the
            edge boundary voxels (a surface), True does not (an inner boundary).

    Returns:
        Boolean array of the mask's shape.

    Example:
        >>> boundary(np.ones((1, 3), bool), outside=True).astype(int).tolist()
        [[0, 0, 0]]
        >>> boundary(np.ones((1, 3), bool), outside=False).astype(int).tolist()
        [[1, 1, 1]]
    """
    interior = mask.copy()
    for axis in range(mask.ndim):
        lead = [slice(None)] * mask.ndim
        trail = [slice(None)] * mask.ndim
        lead[axis], trail[axis] = slice(1, None), slice(None, -1)
        interior[tuple(lead)] &= mask[tuple(trail)]
        interior[tuple(trail)] &= mask[tuple(lead)]
        if not outside:
            edge: list[Any] = [slice(None)] * mask.ndim
            for index in (0, -1):
                edge[axis] = index
                interior[tuple(edge)] = False
    return mask & ~interior
