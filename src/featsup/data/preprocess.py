"""CT preprocessing (paper section 4.1.2-4.1.3): HU window, CLAHE, normalisation, ROI crop.

All functions take and return numpy arrays in processing order: a volume is ``(D, H, W)``
(axial slices first), a slice ``(H, W)``. OpenCV (``featsup[data]``) is needed by
:func:`clahe` and rotations only; everything else runs on numpy, scipy and torch.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from featsup._checks import check_choice, check_positive, check_same_shape
from featsup.data._arrays import ResizeMode, as_array, resize
from featsup.data._roi import (
    RoiCrop,
    apply_crop,
    crop_to_roi,
    find_roi,
    largest_connected_component,
    uncrop,
)

__all__ = [
    "ResizeMode",
    "RoiCrop",
    "apply_crop",
    "clahe",
    "crop_to_roi",
    "find_roi",
    "hu_window",
    "largest_connected_component",
    "normalize",
    "preprocess_volume",
    "resize",
    "uncrop",
]


def hu_window(
    volume: np.ndarray,
    *,
    low: float = -100.0,
    high: float = 400.0,
    output: Literal["uint8", "unit", "hu"] = "uint8",
) -> np.ndarray:
    """Clip Hounsfield units to ``[low, high]`` (the paper's liver window is [-100, 400]).

    Args:
        volume: (H, W) or (D, H, W) Hounsfield units.
        low: lower bound of the window in HU.
        high: upper bound of the window in HU.
        output: ``"uint8"`` maps the window to 0..255 (the input of :func:`clahe`),
            ``"unit"`` to float32 [0, 1], ``"hu"`` keeps clipped float32 HU.

    Returns:
        Array of the input's shape, dtype uint8 or float32.

    Raises:
        ValueError: if ``low >= high``, ``output`` is unknown or the array is not 2D/3D.

    Example:
        >>> hu_window(np.array([[-1000.0, 150.0, 3000.0]])).tolist()
        [[0, 128, 255]]
    """
    check_choice("output", output, ("uint8", "unit", "hu"))
    if not low < high:
        raise ValueError(f"low, high: expected low < high, got {low} and {high}")
    array = as_array("volume", volume, (2, 3))
    clipped = np.clip(array.astype(np.float32, copy=False), low, high)
    if output == "hu":
        return clipped
    unit = (clipped - np.float32(low)) * np.float32(1.0 / (high - low))
    if output == "unit":
        return unit
    return np.rint(unit * np.float32(255.0)).astype(np.uint8)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the environment
        msg = 'CLAHE needs OpenCV; install it with pip install "featsup[data]"'
        raise ImportError(msg) from err
    return cv2


def clahe(
    image: np.ndarray, *, clip_limit: float = 4.0, tile_grid_size: tuple[int, int] = (8, 8)
) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation, slice by slice (OpenCV).

    The paper uses clip limit 4 and 8 x 8 tiles on the HU-windowed image.

    Args:
        image: (H, W) or (D, H, W) uint8, for example from :func:`hu_window`.
        clip_limit: OpenCV clip limit.
        tile_grid_size: number of tiles along (rows, columns).

    Returns:
        uint8 array of the input's shape.

    Raises:
        TypeError: if ``image`` is not uint8.
        ValueError: if the shape or an option is invalid.

    Example:
        >>> out = clahe(np.tile(np.arange(64, dtype=np.uint8), (64, 1)))
        >>> out.shape, out.dtype
        ((64, 64), dtype('uint8'))
    """
    array = as_array("image", image, (2, 3))
    if array.dtype != np.uint8:
        raise TypeError(
            f"image: expected uint8, got {array.dtype}; fix: apply hu_window(..., output='uint8')"
        )
    check_positive("clip_limit", clip_limit)
    if len(tile_grid_size) != 2 or min(tile_grid_size) < 1:
        raise ValueError(f"tile_grid_size: expected two integers >= 1, got {tile_grid_size!r}")
    op = _cv2().createCLAHE(
        clipLimit=float(clip_limit), tileGridSize=(int(tile_grid_size[1]), int(tile_grid_size[0]))
    )
    if array.ndim == 2:
        return op.apply(np.ascontiguousarray(array))
    out = np.empty_like(array)
    for k in range(array.shape[0]):
        out[k] = op.apply(np.ascontiguousarray(array[k]))
    return out


def normalize(
    image: np.ndarray,
    *,
    mode: Literal["minmax", "zscore"] = "minmax",
    mask: np.ndarray | None = None,
    eps: float = 1e-6,
) -> np.ndarray:
    """Rescale intensities to [0, 1] (``"minmax"``) or to zero mean, unit std (``"zscore"``).

    Args:
        image: array of any shape.
        mode: ``"minmax"`` or ``"zscore"``.
        mask: optional boolean array of the same shape; statistics come from it only.
        eps: guard against division by zero for constant images (which map to 0).

    Returns:
        float32 array of the input's shape.

    Raises:
        ValueError: if ``mode`` is unknown or ``mask`` has another shape or is empty.

    Example:
        >>> normalize(np.array([2.0, 4.0, 6.0])).tolist()
        [0.0, 0.5, 1.0]
    """
    check_choice("mode", mode, ("minmax", "zscore"))
    array = np.asarray(image, dtype=np.float32)
    values = array
    if mask is not None:
        check_same_shape("image", array, "mask", mask)
        values = array[np.asarray(mask, dtype=bool)]
        if values.size == 0:
            raise ValueError("mask: expected at least one True voxel, got an empty mask")
    if mode == "minmax":
        lo, hi = float(values.min()), float(values.max())
        return (array - np.float32(lo)) * np.float32(1.0 / max(hi - lo, eps))
    mean, std = float(values.mean()), float(values.std())
    return (array - np.float32(mean)) * np.float32(1.0 / max(std, eps))


def preprocess_volume(
    volume: np.ndarray,
    *,
    window: tuple[float, float] = (-100.0, 400.0),
    use_clahe: bool = True,
    clip_limit: float = 4.0,
    tile_grid_size: tuple[int, int] = (8, 8),
    normalization: Literal["minmax", "zscore"] = "minmax",
) -> np.ndarray:
    """The paper's chain: HU window, CLAHE on the uint8 window, normalisation.

    Args:
        volume: (H, W) or (D, H, W) Hounsfield units.
        window: ``(low, high)`` HU window.
        use_clahe: apply CLAHE (else the window is only rescaled).
        clip_limit: CLAHE clip limit.
        tile_grid_size: CLAHE tiles along (rows, columns).
        normalization: ``"minmax"`` (to [0, 1]) or ``"zscore"``, over the whole volume.

    Returns:
        float32 array of the input's shape.

    Example:
        >>> out = preprocess_volume(np.full((2, 16, 16), 60.0))
        >>> out.shape, out.dtype
        ((2, 16, 16), dtype('float32'))
    """
    windowed = hu_window(volume, low=window[0], high=window[1], output="uint8")
    if use_clahe:
        windowed = clahe(windowed, clip_limit=clip_limit, tile_grid_size=tile_grid_size)
    return normalize(windowed, mode=normalization)
