"""The encoding teacher's training data: label maps or volumes, and crops of them.

One implementation for images and volumes: a label tensor is (N, *spatial) with 2
(H, W) or 3 (D, H, W) spatial dims, and crops are taken along every spatial axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from featsup.models.blocks import check_spatial_dims
from featsup.supervision.cache import unpack_item
from featsup.training.distributed import epoch_seed

__all__ = ["_LabelCrops", "_crop_size", "_sample_batch", "label_tensor"]


def label_tensor(labels: Any, spatial_dims: int | None, num_classes: int) -> torch.Tensor:
    """All label maps or volumes of ``labels`` as one (N, *spatial) int64 tensor.

    Args:
        labels: (N, H, W) or (N, D, H, W) integer tensor or array, either with a channel
            axis of 1 after N, or a dataset whose items are label maps, ``(image, target,
            ...)`` tuples or ``{"target": ...}`` dicts (3D patch datasets).
        spatial_dims: 2 or 3; None infers it from the rank (N, 1, H, W) is 2D.
        num_classes: classes of the labels, to recognise a one-hot (N, K, H, W) tensor.

    Raises:
        ValueError: for one-hot or floating labels, a rank that does not fit
            ``spatial_dims``, or no labels at all.

    Example:
        >>> label_tensor(torch.zeros(3, 4, 8, 8, dtype=torch.int64), None, 2).shape
        torch.Size([3, 4, 8, 8])
    """
    if spatial_dims is not None:
        check_spatial_dims(spatial_dims)
    if isinstance(labels, torch.Tensor | np.ndarray):
        data = torch.as_tensor(labels)
    else:
        data = torch.stack([torch.as_tensor(unpack_item(labels[i])[1]) for i in range(len(labels))])
    dims = spatial_dims or (2 if data.ndim == 3 or (data.ndim == 4 and data.shape[1] == 1) else 3)
    if data.ndim == dims + 2 and data.shape[1] == 1:
        data = data[:, 0]
    if data.ndim != dims + 1 or data.is_floating_point() or len(data) == 0:
        axes = "(N, H, W)" if dims == 2 else "(N, D, H, W)"
        raise ValueError(
            f"labels: expected integer label maps {axes} for spatial_dims={dims}, got "
            f"{tuple(data.shape)} {data.dtype}; fix: pass class indices, not one-hot"
        )
    if spatial_dims is None and dims == 3 and _looks_one_hot(data, num_classes):
        raise ValueError(
            f"labels: expected integer label maps (N, H, W), got one-hot maps "
            f"{tuple(data.shape)}; fix: pass class indices, or spatial_dims=3 for volumes"
        )
    return data.long()


def _looks_one_hot(data: torch.Tensor, num_classes: int) -> bool:
    """Whether (N, K, H, W) ``data`` holds one-hot maps of ``num_classes`` classes."""
    if data.shape[1] != num_classes or bool(((data != 0) & (data != 1)).any()):
        return False
    return bool((data.sum(1) == 1).all())


def _crop_size(
    crop: int | Sequence[int] | None, shape: torch.Size, multiple: int | Sequence[int]
) -> tuple[int, ...] | None:
    """The training crop per spatial axis of (N, *spatial) ``shape``; None: whole maps.

    Each side is rounded down to a multiple of ``multiple`` (per axis, or one for all),
    at least one multiple, and no larger than the maps.
    """
    if crop is None:
        return None
    spatial = tuple(shape[1:])
    crops = (crop,) * len(spatial) if isinstance(crop, int) else tuple(crop)
    multiples = (multiple,) * len(spatial) if isinstance(multiple, int) else tuple(multiple)
    if len(crops) != len(spatial) or any(c < 1 for c in crops):
        raise ValueError(
            f"crop: expected an int or {len(spatial)} sizes >= 1 for maps of shape {spatial}, "
            f"got {crop!r}; fix: crop={spatial[-1]} or None for whole maps"
        )
    size = tuple(
        min(n, max(m, min(c, n) // m * m))
        for c, n, m in zip(crops, spatial, multiples, strict=True)
    )
    return None if size == spatial else size


def _sample_batch(
    data: torch.Tensor,
    batch_size: int,
    size: tuple[int, ...] | None,
    foreground_fraction: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """(B, *size) label crops; ``foreground_fraction`` of them centred on a foreground voxel."""
    maps = data[torch.randint(0, len(data), (batch_size,), generator=gen)]
    if size is None:
        return maps
    crops = []
    for m in maps:
        fg = (m > 0).nonzero()
        if len(fg) and torch.rand((), generator=gen) < foreground_fraction:
            centre = fg[torch.randint(0, len(fg), (), generator=gen)].tolist()
            starts = [
                min(max(c - s // 2, 0), n - s)
                for c, s, n in zip(centre, size, m.shape, strict=True)
            ]
        else:
            starts = [
                int(torch.randint(0, n - s + 1, (), generator=gen))
                for s, n in zip(size, m.shape, strict=True)
            ]
        crops.append(m[tuple(slice(a, a + s) for a, s in zip(starts, size, strict=True))])
    return torch.stack(crops)


class _LabelCrops(Dataset[torch.Tensor]):
    """``length`` label crops (*size); crop ``k`` is a pure function of ``(seed, k)``.

    ``foreground_fraction`` is a share, or ``(start, end)`` shares that crop ``k`` of
    ``length`` interpolates linearly (crops are drawn in index order, one pass).

    Sampling per index (rather than from one running generator) makes the crops a
    map-style data set for the Trainer, so that a resumed run sees the same crops.
    """

    def __init__(
        self,
        maps: torch.Tensor,
        size: tuple[int, ...] | None,
        foreground_fraction: float | tuple[float, float],
        *,
        seed: int,
        length: int,
    ) -> None:
        fraction = foreground_fraction
        self.maps, self.size = maps, size
        self.fraction = (fraction, fraction) if isinstance(fraction, (int, float)) else fraction
        self.seed, self.length = seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, k))
        start, end = self.fraction
        fraction = start + (end - start) * k / max(1, self.length - 1)
        return _sample_batch(self.maps, 1, self.size, fraction, gen)[0]
