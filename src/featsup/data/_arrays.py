"""Small array helpers shared by the preprocessing modules: input checks and resizing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from featsup._checks import check_choice

ResizeMode = Literal["linear", "nearest"]


def as_array(name: str, value: Any, ndim: Sequence[int]) -> np.ndarray:
    """Accept a numpy array (or a torch tensor, converted) with an allowed ndim."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(value).__name__}")
    if value.ndim not in ndim:
        layouts = {2: "(H, W)", 3: "(D, H, W)"}
        want = " or ".join(layouts.get(n, f"{n}D") for n in ndim)
        raise ValueError(f"{name}: expected a {want} array, got shape {value.shape}")
    return value


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    # half-pixel nearest neighbour in exact integer arithmetic: floor((j + 0.5) * n_in / n_out)
    return ((2 * np.arange(n_out) + 1) * n_in) // (2 * n_out)


def resize(array: np.ndarray, size: Sequence[int], *, mode: ResizeMode = "linear") -> np.ndarray:
    """Resize the last two axes of an array to ``size`` (rows, columns).

    ``"nearest"`` (for labels) keeps the dtype and is exactly invertible when no axis
    shrinks; ``"linear"`` (for images and probabilities) is bilinear with half-pixel
    centres and returns float32.

    Args:
        array: (..., H, W) array.
        size: ``(rows, columns)`` of the output.
        mode: ``"linear"`` or ``"nearest"``.

    Returns:
        (..., rows, columns) array.

    Example:
        >>> resize(np.array([[0, 1], [2, 3]]), (4, 4), mode="nearest")[0].tolist()
        [0, 0, 1, 1]
    """
    check_choice("mode", mode, ("linear", "nearest"))
    rows, cols = int(size[0]), int(size[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"size: expected two integers >= 1, got {tuple(size)!r}")
    h, w = array.shape[-2:]
    if mode == "nearest":
        return array[..., _nearest_index(h, rows)[:, None], _nearest_index(w, cols)[None, :]]
    if (h, w) == (rows, cols):
        return array.astype(np.float32)
    flat = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).reshape(-1, 1, h, w)
    out = F.interpolate(flat, size=(rows, cols), mode="bilinear", align_corners=False)
    return out.reshape(*array.shape[:-2], rows, cols).numpy()
