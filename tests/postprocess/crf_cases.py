"""Synthetic CRF test cases: a blob image, network-like degraded predictions, Dice."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage


class Case(NamedTuple):
    """An image, a degraded prediction of it and the truth."""

    image: np.ndarray  # (H, W) or (D, H, W) float32 on a 0..255 scale
    probs: np.ndarray  # (2, ...) float32 background / foreground probabilities
    truth: np.ndarray  # (H, W) or (D, H, W) bool


def degrade(
    truth: np.ndarray,
    seed: int,
    *,
    shift: float = 4.0,
    soft: float = 3.0,
    noise: float = 0.5,
    in_plane_only: bool = True,
) -> np.ndarray:
    """A network-like prediction of ``truth``: a displaced, blurred and noisy boundary.

    The logit is the signed distance to the boundary (pixels) plus a smooth random offset
    of about ``shift`` pixels, divided by ``soft``, plus smooth noise of std ``noise``.
    """
    rng = np.random.default_rng(seed)
    axes = tuple(range(truth.ndim - 2, truth.ndim)) if in_plane_only else None
    inside = ndimage.distance_transform_edt(truth, sampling=None)
    outside = ndimage.distance_transform_edt(~truth, sampling=None)
    sigma = [0.0] * truth.ndim
    for axis in axes if axes is not None else range(truth.ndim):
        sigma[axis] = 12.0
    offset = ndimage.gaussian_filter(rng.normal(size=truth.shape), sigma)
    offset *= shift / offset.std()
    grain = ndimage.gaussian_filter(rng.normal(size=truth.shape), [s / 6 for s in sigma])
    grain *= noise / grain.std()
    logit = (inside - outside + offset) / soft + grain
    fg = 1.0 / (1.0 + np.exp(-logit))
    return np.stack([1.0 - fg, fg]).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def blob(shape: tuple[int, ...], seed: int) -> Case:
    """A bright irregular blob on a darker background with noise, and a degraded prediction."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(
        sum((g / a) ** 2 for g, a in zip(axes, (0.6, 0.5, 0.55)[-len(shape) :], strict=True))
    )
    angle = np.arctan2(axes[-2], axes[-1])
    truth = radius < 0.9 + 0.1 * np.sin(3 * angle)
    image = np.where(truth, 140.0, 100.0) + rng.normal(0.0, 6.0, shape)
    image = ndimage.gaussian_filter(image, 0.7).clip(0, 255).astype(np.float32)
    return Case(image, degrade(truth, seed + 1, shift=2.0, soft=2.0), truth)
