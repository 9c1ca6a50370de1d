"""CT preprocessing (paper section 4.1.2-4.1.3): HU window, CLAHE, normalisation, ROI crop.

All functions take and return numpy arrays in processing order: a volume is ``(D, H, W)``
(axial slices first), a slice ``(H, W)``. OpenCV (``featsup[data]``) is needed by
:func:`clahe` and rotations only; everything else runs on numpy, scipy and torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

from featsup._checks import check_choice, check_positive, check_same_shape, import_cv2
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
    "DARKNESS_SIGMAS",
    "HU_WINDOW",
    "Preprocessing",
    "ResizeMode",
    "RoiCrop",
    "apply_crop",
    "clahe",
    "crop_to_roi",
    "darkness_channel",
    "find_roi",
    "hu_window",
    "largest_connected_component",
    "normalize",
    "preprocess_volume",
    "preprocess_window",
    "resize",
    "uncrop",
]


#: The paper's liver window in Hounsfield units (section 4.1.2), the default everywhere.
HU_WINDOW: tuple[float, float] = (-100.0, 400.0)


@dataclass(frozen=True)
class Preprocessing:
    """The one preprocessing definition (paper 4.1.2): HU window, CLAHE, normalisation.

    Slice datasets expose theirs as ``.preprocessing``; checkpoints store :meth:`to_dict`;
    :func:`preprocess_volume`, :func:`~featsup.inference.predict_volume` and
    :class:`~featsup.inference.Cascade` take it, so training and inference agree.

    Args:
        hu_window: ``(low, high)`` HU window, ``low < high``.
        clahe: apply CLAHE to the uint8 window (else it is only rescaled).
        clip_limit: CLAHE clip limit (> 0).
        tile_grid_size: CLAHE tiles along (rows, columns), each >= 1.
        normalization: ``"minmax"`` (to [0, 1]) or ``"zscore"``, over the whole volume.

    Raises:
        ValueError: if an option is out of range.
        TypeError: if a field has the wrong type.

    Example:
        >>> p = Preprocessing(hu_window=(-200.0, 300.0), clahe=False)
        >>> Preprocessing.from_dict(p.to_dict()) == p
        True
    """

    hu_window: tuple[float, float] = HU_WINDOW
    clahe: bool = True
    clip_limit: float = 4.0
    tile_grid_size: tuple[int, int] = (8, 8)
    normalization: Literal["minmax", "zscore"] = "minmax"

    def __post_init__(self) -> None:
        window, tiles = (
            _pair("hu_window", self.hu_window),
            _pair("tile_grid_size", self.tile_grid_size),
        )
        if not window[0] < window[1]:
            raise ValueError(f"hu_window: expected (low, high) with low < high, got {window}")
        if not isinstance(self.clahe, (bool, np.bool_)):
            raise TypeError(f"clahe: expected bool, got {type(self.clahe).__name__}")
        check_positive("clip_limit", self.clip_limit)
        if min(tiles) < 1 or any(int(t) != t for t in tiles):
            raise ValueError(f"tile_grid_size: expected two integers >= 1, got {tiles!r}")
        check_choice("normalization", self.normalization, ("minmax", "zscore"))
        object.__setattr__(self, "hu_window", (float(window[0]), float(window[1])))
        object.__setattr__(self, "clahe", bool(self.clahe))
        object.__setattr__(self, "clip_limit", float(self.clip_limit))
        object.__setattr__(self, "tile_grid_size", (int(tiles[0]), int(tiles[1])))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists for pairs), as stored in checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict`'s output; missing keys take their defaults.

        Raises:
            ValueError: on an unknown key or an invalid value.
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"preprocessing: expected keys among {known}, got unknown {unknown}; "
                "fix: pass what Preprocessing.to_dict() wrote"
            )
        return cls(**values)


def _pair(name: str, value: Any) -> tuple[Any, Any]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{name}: expected a pair of numbers, got {value!r}")
    return value[0], value[1]


DARKNESS_SIGMAS = (2.5, 8.5)
"""In-plane Gaussian sigmas (pixels) of :func:`darkness_channel`: 3.5 and 12 mm at 1.4 mm."""


def darkness_channel(
    image: np.ndarray,
    mask: np.ndarray,
    sigmas: tuple[float, float] = DARKNESS_SIGMAS,
    scale: float = 10.0,
) -> np.ndarray:
    """How much darker each pixel's neighbourhood is than the liver around it, per slice.

    ``scale * (background - local)``: ``local`` and ``background`` are Gaussian means of
    ``image`` in-plane (sigmas ``sigmas[0]`` and ``sigmas[1]`` pixels) over ``mask`` only,
    so tissue outside the mask does not darken or brighten the liver's edge. 0 outside the
    mask and where over half the local kernel falls outside it. A hypodense lesion a few
    millimetres wide reads positive, the noise of the parenchyma near 0; the value does not
    depend on the liver's own level. With the tumour stage's min-max window (-50..250 HU)
    and ``scale`` 10, 1.0 is 30 HU. The cascade's tumour stage can take it as an extra
    input channel (:class:`~featsup.data.TumourSliceDataset` ``darkness``, ``Cascade``
    ``tumour_darkness``), computed on the mask the model sees.

    Args:
        image: (..., H, W) float preprocessed slices.
        mask: (..., H, W) bool liver mask, same shape.
        sigmas: (local, background) Gaussian sigmas in pixels, ``0 < local < background``.
        scale: factor on the difference.

    Returns:
        (..., H, W) float32.

    Example:
        >>> liver = np.zeros((40, 40), bool)
        >>> liver[4:36, 4:36] = True
        >>> image = np.where(liver, 0.5, 0.0).astype(np.float32)
        >>> image[17:24, 17:24] = 0.4  # a 7-pixel spot 30 HU below the liver
        >>> d = darkness_channel(image, liver)
        >>> round(float(d[20, 20]), 2), bool(abs(d[6, 20]) < 0.05), float(d[0, 0])
        (0.59, True, 0.0)
    """
    cv2 = import_cv2("the darkness channel")
    image, mask = np.asarray(image, dtype=np.float32), np.asarray(mask, dtype=bool)
    check_same_shape("image", image, "mask", mask)
    if image.ndim < 2:
        raise ValueError(f"image: expected (..., H, W), got shape {image.shape}")
    checked = darkness_sigmas("sigmas", sigmas)
    if checked is None:
        raise ValueError("sigmas: expected (local, background) sigmas in pixels, got None")
    local_sigma, background_sigma = checked
    shape = image.shape
    image, mask = image.reshape(-1, *shape[-2:]), mask.reshape(-1, *shape[-2:])
    out = np.zeros(image.shape, np.float32)
    for i in np.flatnonzero(mask.any(axis=(1, 2))):
        weight = mask[i].astype(np.float32)
        values = image[i] * weight
        means = []
        for sigma in (local_sigma, background_sigma):  # OpenCV: ~7x scipy on a 190-px slice
            share, total = (cv2.GaussianBlur(a, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
                            for a in (weight, values))  # fmt: skip
            means.append((total / np.maximum(share, 1e-6), share))
        (local, share), (background, _) = means
        dark = np.float32(scale) * (background - local)
        dark[~mask[i] | (share <= 0.5)] = 0.0
        out[i] = dark
    return out.reshape(shape)


def darkness_sigmas(name: str, value: Any) -> tuple[float, float] | None:
    """Check ``value``: None, or (local, background) sigmas with ``0 < local < background``.

    Returns None or a tuple of two floats; raises ValueError naming ``name`` otherwise.
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{name}: expected (local, background) sigmas in pixels, got {value!r}")
    local, background = float(value[0]), float(value[1])
    if not 0 < local < background:
        raise ValueError(f"{name}: expected 0 < local < background sigmas, got {value!r}")
    return local, background


def hu_window(
    volume: np.ndarray,
    *,
    low: float = HU_WINDOW[0],
    high: float = HU_WINDOW[1],
    output: Literal["uint8", "unit", "hu"] = "uint8",
) -> np.ndarray:
    """Clip Hounsfield units to ``[low, high]`` (default: the paper's liver window, HU_WINDOW).

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
    out = np.empty(array.shape, dtype=np.uint8 if output == "uint8" else np.float32)
    step = max(1, _CHUNK_VOXELS // max(1, array[0].size))  # float temporaries stay small
    for start in range(0, array.shape[0], step):
        out[start : start + step] = _window_chunk(array[start : start + step], low, high, output)
    return out


#: voxels per chunk of the element-wise steps (float32 temporaries of 16 MiB).
_CHUNK_VOXELS = 2**22


def _window_chunk(chunk: np.ndarray, low: float, high: float, output: str) -> np.ndarray:
    """:func:`hu_window` of one chunk of rows or slices, in place after the clip."""
    clipped = np.clip(chunk.astype(np.float32, copy=False), low, high)  # a new array
    if output == "hu":
        return clipped
    clipped -= np.float32(low)
    clipped *= np.float32(1.0 / (high - low))
    if output == "unit":
        return clipped
    clipped *= np.float32(255.0)
    return np.rint(clipped, out=clipped).astype(np.uint8)


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
    op = import_cv2("CLAHE").createCLAHE(
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
    out = np.array(image, dtype=np.float32)  # a new array, normalised in place
    values = out
    if mask is not None:
        check_same_shape("image", out, "mask", mask)
        values = out[np.asarray(mask, dtype=bool)]
        if values.size == 0:
            raise ValueError("mask: expected at least one True voxel, got an empty mask")
    offset, scale = _normalization_constants(values, mode, eps=eps)
    out -= np.float32(offset)
    out *= np.float32(scale)
    return out


def _normalization_constants(
    values: np.ndarray, mode: str, *, eps: float = 1e-6
) -> tuple[float, float]:
    """``(offset, scale)`` with ``normalize(x) == (x - offset) * scale`` (float32 maths)."""
    array = np.asarray(values, dtype=np.float32)
    if mode == "minmax":
        lo, hi = float(array.min()), float(array.max())
        return lo, 1.0 / max(hi - lo, eps)
    return float(array.mean()), 1.0 / max(float(array.std()), eps)


def preprocess_volume(
    volume: np.ndarray, *, preprocessing: Preprocessing | None = None
) -> np.ndarray:
    """The paper's chain: HU window, CLAHE on the uint8 window, normalisation.

    Args:
        volume: (H, W) or (D, H, W) Hounsfield units.
        preprocessing: the settings; None uses :class:`Preprocessing`'s defaults.

    Returns:
        float32 array of the input's shape.

    Example:
        >>> out = preprocess_volume(np.full((2, 16, 16), 60.0))
        >>> out.shape, out.dtype
        ((2, 16, 16), dtype('float32'))
    """
    settings = Preprocessing() if preprocessing is None else preprocessing
    return normalize(_equalized_uint8(volume, settings), mode=settings.normalization)


def preprocess_window(windowed: np.ndarray, *, preprocessing: Preprocessing) -> np.ndarray:
    """:func:`preprocess_volume` from its uint8 HU window on: CLAHE (when set), normalisation.

    For a caller that keeps the window anyway (the cascade's CRF image), so that the
    window is computed once; ``preprocess_volume(hu, preprocessing=p)`` equals
    ``preprocess_window(hu_window(hu, low=.., high=..), preprocessing=p)`` bit for bit.

    Args:
        windowed: (H, W) or (D, H, W) uint8 from :func:`hu_window` with
            ``preprocessing.hu_window``.
        preprocessing: the settings.

    Returns:
        float32 array of the input's shape.
    """
    return normalize(_equalize(windowed, preprocessing), mode=preprocessing.normalization)


def _equalized_uint8(volume: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 HU window, CLAHE-equalised when ``preprocessing.clahe``: the cached image."""
    low, high = preprocessing.hu_window
    return _equalize(hu_window(volume, low=low, high=high, output="uint8"), preprocessing)


def _equalize(windowed: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    if not preprocessing.clahe:
        return windowed
    return clahe(
        windowed, clip_limit=preprocessing.clip_limit, tile_grid_size=preprocessing.tile_grid_size
    )
