"""Pooling factors, padding and cropping of the UNet++ grid, in 2D and 3D.

A UNet++ of depth ``d`` pools ``d`` times. In 2D every pooling halves both axes. In 3D
each level has a factor of 1 or 2 per axis (D, H, W): a volume with thick slices keeps its
slices at the first levels and pools only in-plane until the voxels are roughly
isotropic (:func:`pooling_for_spacing`). Inputs are padded at the far end of each axis
to a multiple of that axis' total reduction and the logits are cropped back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["check_pad_multiple", "check_pooling", "pad_to_multiple", "pooling_for_spacing"]

Pooling = tuple[tuple[int, ...], ...]


def pooling_for_spacing(spacing: Sequence[float], depth: int) -> list[list[int]]:
    """The per-level max-pool factors for voxels of ``spacing``, thick axes pooled later.

    The rule (that of nnU-Net): at each level an axis is halved unless its current voxel
    size is at least twice the smallest current voxel size; pooled axes then double
    their voxel size. Isotropic voxels are pooled 2x2x2 at every level; slices of
    2.5 mm with 0.7 mm pixels (a typical LiTS volume) are kept whole at the first level
    only, 5 mm slices at the first two. Pass the median spacing of the training volumes.

    Args:
        spacing: voxel size along (D, H, W), in any one unit.
        depth: number of poolings (``len(widths) - 1``).

    Returns:
        ``depth`` lists of per-axis factors (1 or 2), for ``UNetPlusPlus(pooling=...)``.

    Raises:
        ValueError: if ``spacing`` has a non-positive or non-finite value or ``depth`` < 1.

    Example:
        >>> pooling_for_spacing((2.5, 0.7, 0.7), depth=4)
        [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
        >>> pooling_for_spacing((5.0, 0.8, 0.8), depth=3)
        [[1, 2, 2], [1, 2, 2], [2, 2, 2]]
    """
    current = [float(s) for s in spacing]
    if not current or not all(math.isfinite(s) and s > 0 for s in current):
        raise ValueError(f"spacing: expected positive finite voxel sizes, got {tuple(spacing)}")
    if depth < 1:
        raise ValueError(f"depth: expected >= 1, got {depth}")
    levels = []
    for _ in range(depth):
        finest = min(current)
        factors = [1 if s >= 2 * finest else 2 for s in current]
        current = [s * f for s, f in zip(current, factors, strict=True)]
        levels.append(factors)
    return levels


def check_pooling(pooling: object, depth: int, spatial_dims: int) -> Pooling:
    """Validate ``pooling`` (None: 2 along every axis at every level) and return it.

    Raises:
        ValueError: if it has not ``depth`` levels of ``spatial_dims`` factors of 1 or 2,
            or pools nothing at some level, or is given for a 2D model.
    """
    if pooling is None:
        return ((2,) * spatial_dims,) * depth
    if spatial_dims == 2:
        raise ValueError(
            f"pooling: expected None for spatial_dims=2 (2D pools 2x2 at every level), got "
            f"{pooling!r}; fix: drop pooling or set spatial_dims=3"
        )
    try:
        levels = tuple(tuple(int(f) for f in level) for level in pooling)  # type: ignore[attr-defined]
    except TypeError:
        raise TypeError(
            f"pooling: expected a list of per-level (D, H, W) factors, got {pooling!r}"
        ) from None
    ok = len(levels) == depth and all(
        len(level) == spatial_dims and set(level) <= {1, 2} and 2 in level for level in levels
    )
    if not ok:
        raise ValueError(
            f"pooling: expected {depth} levels (one per pooling) of {spatial_dims} factors "
            f"(D, H, W), each 1 or 2 and at least one 2, got {pooling!r}; fix: use "
            f"featsup.models.pooling_for_spacing(spacing, depth={depth})"
        )
    return levels


def reduction(pooling: Pooling, level: int | None = None) -> tuple[int, ...]:
    """Per-axis reduction of depth ``level`` (default: the deepest) relative to the input."""
    levels = pooling if level is None else pooling[:level]
    return tuple(math.prod(factors) for factors in zip(*levels, strict=True))


def check_pad_multiple(
    pad_multiple: int | Sequence[int] | None, pooling: Pooling, spatial_dims: int
) -> int | tuple[int, ...]:
    """Validate ``pad_multiple``; None gives the least that works.

    In 2D the value stays an int (``2**depth`` by default); in 3D it is a tuple, one per
    axis (an int is repeated), by default the per-axis reduction.

    Raises:
        ValueError: if some axis' multiple is not a multiple of that axis' reduction.
    """
    least = reduction(pooling)
    if pad_multiple is None:
        return least[0] if spatial_dims == 2 else least
    if isinstance(pad_multiple, int):
        multiples = (int(pad_multiple),) * spatial_dims
    else:
        multiples = tuple(int(m) for m in pad_multiple)
    if len(multiples) != spatial_dims or any(
        m < 1 or m % r for m, r in zip(multiples, least, strict=False)
    ):
        raise ValueError(
            f"pad_multiple: expected a multiple of the reduction {least} along each axis, "
            f"got {pad_multiple}"
        )
    return multiples[0] if spatial_dims == 2 else multiples


def pad_to_multiple(image: torch.Tensor, multiples: Sequence[int]) -> torch.Tensor:
    """Pad the far end of each spatial axis of ``image`` by edge replication.

    Args:
        image: (B, C, *spatial) input.
        multiples: one multiple per spatial axis.

    Returns:
        (B, C, *padded) with each padded size the next multiple (``image`` if none).
    """
    pads = [-size % m for size, m in zip(image.shape[2:], multiples, strict=True)]
    if not any(pads):
        return image
    flat = [p for pad in reversed(pads) for p in (0, pad)]  # F.pad lists the last axis first
    return F.pad(image, flat, mode="replicate")
