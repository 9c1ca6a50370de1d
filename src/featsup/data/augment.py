"""Deterministic 2D augmentation applied consistently to an image and its label map."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from featsup._checks import check_choice, check_in_range, import_cv2

__all__ = ["SliceAugment"]

FlipAxis = Literal["horizontal", "vertical"]


class SliceAugment:
    """Random flips, rotations, intensity jitter, lesion contrast reversal: ``(C, H, W)``.

    Geometry is applied identically to the image (bilinear) and the target (nearest), so
    labels stay aligned; intensity jitter touches the image only. All randomness comes
    from the generator passed in, so the slice datasets make augmentation reproducible
    per (seed, epoch, sample) whatever the number of loader workers.

    Note that left-right (``"horizontal"``) flips move the liver to the other side of the
    body and so remove the position cue; drop them with ``flip_axes=("vertical",)`` or
    ``flip_p=0``.

    Args:
        flip_p: probability of flipping along each axis in ``flip_axes``.
        flip_axes: ``"horizontal"`` (columns) and / or ``"vertical"`` (rows).
        max_rotation: largest rotation in degrees (uniform in [-max, max]).
        rotation_p: probability of rotating.
        intensity_scale: image multiplied by ``1 + u``, ``u`` uniform in [-scale, scale].
        intensity_shift: image shifted by ``v`` uniform in [-shift, shift].
        lesion_reversal_p: probability of reversing the contrast of the labelled
            foreground (``target > 0``, grown by one pixel for its blurred edge) about the
            median of a ring 3-5 pixels around it: ``2 * median - image`` there, so a dark
            lesion turns as bright above its surroundings as it was dark below them, its
            texture and noise mirrored. For a tumour stage whose training lesions are
            mostly hypodense while some test lesions are hyperdense. 0 (the default) draws
            no number for it, so the other draws are as without the option.

    Example:
        >>> aug = SliceAugment(max_rotation=0.0, intensity_scale=0.0, intensity_shift=0.0)
        >>> image, target = np.zeros((1, 8, 8), np.float32), np.zeros((8, 8), np.int64)
        >>> out_image, out_target = aug(image, target, np.random.default_rng(0))
        >>> out_image.shape, out_target.shape
        ((1, 8, 8), (8, 8))
    """

    def __init__(
        self,
        *,
        flip_p: float = 0.5,
        flip_axes: Sequence[FlipAxis] = ("horizontal", "vertical"),
        max_rotation: float = 10.0,
        rotation_p: float = 0.5,
        intensity_scale: float = 0.1,
        intensity_shift: float = 0.05,
        lesion_reversal_p: float = 0.0,
    ) -> None:
        for axis in flip_axes:
            check_choice("flip_axes", axis, ("horizontal", "vertical"))
        check_in_range("flip_p", flip_p, 0.0, 1.0)
        check_in_range("rotation_p", rotation_p, 0.0, 1.0)
        check_in_range("max_rotation", max_rotation, 0.0, 180.0)
        check_in_range("intensity_scale", intensity_scale, 0.0, 1.0)
        check_in_range("intensity_shift", intensity_shift, 0.0, 10.0)
        check_in_range("lesion_reversal_p", lesion_reversal_p, 0.0, 1.0)
        self.flip_p = flip_p
        self.flip_axes = tuple(flip_axes)
        self.max_rotation = max_rotation
        self.rotation_p = rotation_p
        self.intensity_scale = intensity_scale
        self.intensity_shift = intensity_shift
        self.lesion_reversal_p = lesion_reversal_p

    def __repr__(self) -> str:
        return (
            f"SliceAugment(flip_p={self.flip_p}, flip_axes={self.flip_axes}, "
            f"max_rotation={self.max_rotation}, rotation_p={self.rotation_p}, "
            f"intensity_scale={self.intensity_scale}, intensity_shift={self.intensity_shift}"
            + (f", lesion_reversal_p={self.lesion_reversal_p})" if self.lesion_reversal_p else ")")
        )

    def __call__(
        self, image: np.ndarray, target: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one sample.

        Args:
            image: (C, H, W) float32.
            target: (H, W) integer labels.
            rng: the generator that decides every random choice.

        Returns:
            ``(image, target)`` with the same shapes and dtypes.
        """
        # draw every number first so the stream does not depend on which branches run
        flips = rng.random(2) < self.flip_p
        rotate = rng.random() < self.rotation_p
        angle = float(rng.uniform(-self.max_rotation, self.max_rotation))
        gain = 1.0 + float(rng.uniform(-self.intensity_scale, self.intensity_scale))
        shift = float(rng.uniform(-self.intensity_shift, self.intensity_shift))
        # drawn only when enabled: without it the stream is the one before the option
        reverse = self.lesion_reversal_p > 0 and rng.random() < self.lesion_reversal_p
        if flips[0] and "horizontal" in self.flip_axes:
            image, target = image[..., ::-1], target[..., ::-1]
        if flips[1] and "vertical" in self.flip_axes:
            image, target = image[..., ::-1, :], target[..., ::-1, :]
        if rotate and angle != 0.0:
            image, target = _rotate(image, target, angle)
        image = np.ascontiguousarray(image, dtype=np.float32)
        if reverse:
            image = _reverse_lesions(image, target)
        if gain != 1.0 or shift != 0.0:
            image = image * np.float32(gain) + np.float32(shift)
        return image, np.ascontiguousarray(target)


def _reverse_lesions(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``2 * median(ring) - image`` on the foreground grown by a pixel.

    The ring lies 3-5 pixels outside the foreground. Unchanged without either.
    """
    cv2 = import_cv2("lesion contrast reversal")
    mask = np.ascontiguousarray(target > 0, dtype=np.uint8)
    if not mask.any():
        return image
    kernel = np.ones((3, 3), np.uint8)
    grown = [cv2.dilate(mask, kernel, iterations=n).astype(bool) for n in (1, 2, 5)]
    ring = grown[2] & ~grown[1]
    if not ring.any():
        return image
    out = image.copy()
    for c in range(image.shape[0]):  # each channel about its own surroundings (2.5D)
        level = np.float32(np.median(image[c][ring]))
        out[c][grown[0]] = 2 * level - image[c][grown[0]]
    return out


def _rotate(image: np.ndarray, target: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    cv2 = import_cv2("rotation")
    h, w = target.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    out = np.empty(image.shape, dtype=np.float32)
    for c in range(image.shape[0]):
        channel = np.ascontiguousarray(image[c], dtype=np.float32)
        out[c] = cv2.warpAffine(
            channel,
            matrix,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=float(channel.min()),
        )
    labels = cv2.warpAffine(
        np.ascontiguousarray(target, dtype=np.uint8),
        matrix,
        (w, h),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return out, labels.astype(target.dtype)
