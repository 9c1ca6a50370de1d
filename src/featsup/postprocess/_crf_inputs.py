"""Input checks, conversions and parameters shared by ``crf.py`` and both CRF backends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featsup._checks import check_ndim, check_positive, check_spacing, check_type

__all__ = [
    "PROB_CLIP",
    "CRFParams",
    "as_tensor",
    "check_image",
    "check_mask",
    "check_params",
    "check_probs",
    "relative_spacing",
]

#: probabilities are clipped to this value before the log (as ``unary_from_softmax``).
PROB_CLIP = 1e-5


@dataclass(frozen=True)
class CRFParams:
    """Parameters of eq. 5 plus inference settings (already validated)."""

    theta_alpha: float
    theta_beta: float
    theta_gamma: float
    w1: float
    w2: float
    iterations: int


_FLOAT_DTYPES = (torch.float16, torch.float32, torch.float64)
#: tolerance of the [0, 1] range and of the sum over classes, per dtype.
_TOLERANCE = {torch.float16: 1e-2, torch.float32: 1e-3, torch.float64: 1e-3}


def as_tensor(name: str, value: Any) -> torch.Tensor:
    """A numpy array (shared memory where possible) or tensor as a tensor.

    Raises:
        TypeError: if ``value`` is neither a numpy array nor a tensor, or is not numeric.
    """
    check_type(name, value, (np.ndarray, torch.Tensor))
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise TypeError(f"{name}: expected a numeric array, got dtype {value.dtype}")
        if not value.dtype.isnative:  # e.g. big-endian NIfTI data
            value = value.astype(value.dtype.newbyteorder("="))
        return torch.from_numpy(np.ascontiguousarray(value))
    return value.detach()


def check_probs(probs: torch.Tensor) -> None:
    """Probabilities: (K, H, W) / (K, D, H, W), K >= 2, float, finite, in [0, 1], sum 1.

    Raises:
        ValueError: naming the failed condition and the fix.
    """
    check_ndim("probs", probs, (3, 4), "(K, H, W) or (K, D, H, W)")
    if probs.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"probs: expected dtype float16, float32 or float64, got {probs.dtype}; "
            "convert with .astype(np.float32) or .float()"
        )
    if probs.shape[0] < 2:
        raise ValueError(
            f"probs: expected at least 2 classes on axis 0, got shape {tuple(probs.shape)}; "
            "stack the background: np.stack([1 - p, p])"
        )
    if probs.numel() == 0:
        raise ValueError(f"probs: expected a non-empty array, got shape {tuple(probs.shape)}")
    finite, low, high, error = _prob_stats(probs)
    if not finite:
        raise ValueError("probs: expected finite values, got NaN or inf; check the network output")
    tol = _TOLERANCE[probs.dtype]
    if low < -tol or high > 1 + tol:
        raise ValueError(
            f"probs: expected probabilities in [0, 1], got values in [{low:.4g}, {high:.4g}]; "
            "apply a softmax over the class axis to the logits first"
        )
    if error > tol:
        raise ValueError(
            f"probs: expected the classes on axis 0 to sum to 1 (tolerance {tol:g}), got a "
            f"largest deviation of {error:.3g}; apply a softmax over axis 0"
        )


def _prob_stats(probs: torch.Tensor) -> tuple[bool, float, float, float]:
    """(all finite, min, max, largest |sum over classes - 1|), a few slices at a time."""
    finite, low, high, error = True, float("inf"), float("-inf"), 0.0
    step = max(1, 2**22 // max(1, probs[0, 0].numel())) if probs.ndim == 4 else 1
    parts = probs.split(step, dim=1) if probs.ndim == 4 else (probs,)
    for part in parts:  # float temporaries of one part only
        values = part.double() if part.dtype == torch.float64 else part.float()
        finite &= bool(torch.isfinite(values).all())
        low, high = min(low, float(values.min())), max(high, float(values.max()))
        error = max(error, float((values.sum(0) - 1).abs().max()))
    return finite, low, high, error


def check_image(image: torch.Tensor, probs: torch.Tensor) -> None:
    """Image of the same spatial shape as ``probs``, real-valued and finite.

    Raises:
        ValueError: on a shape mismatch, a complex or boolean dtype, or NaN / inf.
    """
    expected = tuple(probs.shape[1:])
    if tuple(image.shape) != expected:
        raise ValueError(
            f"image: expected shape {expected} to match probs {tuple(probs.shape)} without its "
            f"class axis, got {tuple(image.shape)}; pass the CT slice or volume of the prediction"
        )
    if image.dtype.is_complex or image.dtype == torch.bool:
        raise ValueError(f"image: expected a real-valued image, got dtype {image.dtype}")
    if image.dtype.is_floating_point and not bool(torch.isfinite(image).all()):
        raise ValueError("image: expected finite values, got NaN or inf; window and rescale first")


def check_mask(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the image's shape (bool, or integers in {0, 1}).

    Raises:
        ValueError: on a shape mismatch or values other than 0 / 1.
    """
    if tuple(mask.shape) != tuple(image.shape):
        raise ValueError(
            f"mask: expected the image's shape {tuple(image.shape)}, got {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(f"mask: expected dtype bool (or 0/1 integers), got {mask.dtype}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask: expected values 0 and 1 only; pass a boolean mask (liver > 0)")
    return mask != 0


def relative_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Spacing scaled so that the finest in-plane (last two) axis has size 1.

    Raises:
        ValueError: if the length is not ``ndim`` or a value is not a positive number.
    """
    values = check_spacing(spacing, ndim)
    unit = min(float(v) for v in values[-2:])
    return tuple(float(v) / unit for v in values)


def check_params(
    *,
    theta_alpha: float,
    theta_beta: float,
    theta_gamma: float,
    w1: float,
    w2: float,
    iterations: int,
    workers: int,
) -> None:
    """Kernel widths > 0, weights >= 0, integer iterations >= 0 and workers >= 1.

    Raises:
        TypeError: if a count is not an ``int``.
        ValueError: if a value is out of range.
    """
    for name, value in (
        ("theta_alpha", theta_alpha),
        ("theta_beta", theta_beta),
        ("theta_gamma", theta_gamma),
    ):
        check_type(name, value, (int, float))
        check_positive(name, value)
    for name, value in (("w1", w1), ("w2", w2)):
        check_type(name, value, (int, float))
        check_positive(name, value, strict=False)
    for name, value, low in (("iterations", iterations, 0), ("workers", workers, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value}")
