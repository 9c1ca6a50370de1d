"""The cascade's tumour-stage input and its 3D path (used by :class:`~featsup.inference.Cascade`).

:func:`masked_crop` builds the tumour model's input: the liver-ROI box of the
preprocessed volume, zeroed outside the (predicted) liver. A 2D tumour model predicts
it slice by slice after an in-plane resize; a 3D one (:func:`predict_box`) predicts the
box at its own resolution with Gaussian-blended windows (:func:`predict_patches`), as
:class:`~featsup.data.TumourPatchDataset` served it in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from featsup._wrappers import supervised_student, unwrap
from featsup.data.preprocess import darkness_channel, resize
from featsup.inference.patches import _patch, predict_patches
from featsup.inference.predict import TTA, PreparedModel, tta_flips

__all__ = ["check_tumour_patch", "masked_crop", "predict_box"]

#: voxels per chunk of slices of the tumour model's input (16 MiB of float32).
_CHUNK_VOXELS = 2**22


def check_tumour_patch(model: nn.Module, patch: Sequence[int] | None) -> tuple[int, ...] | None:
    """Validate the 3D window of a tumour model: given for 3D models, None for 2D ones.

    A model that reports no ``spatial_dims`` (not a featsup UNet++) is taken at its word:
    ``patch`` decides.

    Args:
        model: the tumour model (a FeatureSupervisor answers for its student).
        patch: (D, H, W) window, or None for a 2D model.

    Returns:
        ``patch`` as a tuple of ints, or None.

    Raises:
        ValueError: for a bad ``patch``, a 3D model without one or a 2D model with one.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> check_tumour_patch(UNetPlusPlus(1, 2, widths=(4, 8), spatial_dims=3), [8, 16, 16])
        (8, 16, 16)
    """
    dims = getattr(supervised_student(model) or unwrap(model), "spatial_dims", None)
    if patch is None:
        if dims == 3:
            raise ValueError(
                "tumour_patch: expected a (D, H, W) window for a 3D tumour model, got None; "
                "fix: tumour_patch= the patch size it was trained on"
            )
        return None
    if dims == 2:
        raise ValueError(
            f"tumour_patch: expected None for a 2D tumour model, got {tuple(patch)!r}; "
            "fix: drop tumour_patch (2D models use tumour_size) or pass a 3D model"
        )
    return _patch(patch, 3)


def masked_crop(
    image: np.ndarray,
    liver: np.ndarray | None,
    roi: Any,
    context: int,
    darkness: tuple[float, float] | None = None,
) -> np.ndarray:
    """The tumour model's input: 2.5D slices zeroed outside ``liver``, cropped to ``roi``.

    Only the box is stacked and masked (neighbours still come from the whole volume,
    clamped at its ends), then resized in-plane as :func:`featsup.data.apply_crop` does
    (not at all when ``roi.size`` is None). With ``darkness``, each slice's
    :func:`~featsup.data.darkness_channel` over the same mask is added last, before the
    resize, as :class:`~featsup.data.TumourSliceDataset` adds it in training.

    Args:
        image: (D, H, W) float32 preprocessed volume.
        liver: (D, H, W) bool liver mask; None zeroes nothing (the whole box).
        roi: its :class:`~featsup.data.RoiCrop`.
        context: 2.5D neighbours on each side.
        darkness: (local, background) sigmas in pixels of a darkness channel; None: none.

    Returns:
        (d, C, rows, cols) float32, ``C = 2 * context + 1`` (+ 1 with ``darkness``).

    Example:
        >>> from featsup.data import find_roi
        >>> liver = np.zeros((3, 8, 8), bool)
        >>> liver[1, 2:5, 3:6] = True
        >>> roi = find_roi(liver, margin=(0, 1, 1))
        >>> masked_crop(np.ones((3, 8, 8), np.float32), liver, roi, 0)[0, 0].sum()
        np.float32(9.0)
    """
    (d0, d1), (h0, h1), (w0, w1) = roi.bbox
    offsets = np.arange(-context, context + 1)
    index = np.clip(np.arange(d0, d1)[:, None] + offsets[None, :], 0, image.shape[0] - 1)
    rows, cols = roi.size if roi.size is not None else (h1 - h0, w1 - w0)
    channels = index.shape[1] + (darkness is not None)
    out = np.empty((channels, d1 - d0, rows, cols), np.float32)  # (C, d, rows, cols)
    step = max(1, _CHUNK_VOXELS // max(1, channels * (h1 - h0) * (w1 - w0)))
    for start in range(0, d1 - d0, step):  # a few slices at a time: no box-sized copies
        box = (index[start : start + step], slice(h0, h1), slice(w0, w1))
        inside = None if liver is None else liver[box]
        masked = image[box] if inside is None else np.where(inside, image[box], np.float32(0))
        masked = masked.transpose(1, 0, 2, 3)
        if darkness is not None:  # the centre slices' darkness over their own mask
            centre = np.ones(masked.shape[1:], bool) if inside is None else inside[:, context]
            dark = darkness_channel(masked[context], centre, darkness)
            masked = np.concatenate([masked, dark[None]])
        if roi.size is not None:
            masked = resize(masked, roi.size, mode="linear")
        out[:, start : start + step] = masked
    return out.transpose(1, 0, 2, 3)


def predict_box(
    model: PreparedModel,
    box: np.ndarray,
    *,
    patch: Sequence[int],
    overlap: float,
    batch_size: int,
    tta: TTA,
    classes: Sequence[int] | None,
) -> np.ndarray:
    """Class probabilities of the masked liver box from a 3D model, window by window.

    Args:
        model: the prepared 3D tumour model.
        box: (d, h, w) float32 masked ROI crop (no resize).
        patch: (D, H, W) window; a smaller box is zero-padded to it (the masked value).
        overlap: share of a window shared with its neighbour.
        batch_size: windows per forward pass.
        tta: also predict the left-right (W) mirrored box (True), or every in-plane
            flip (``"flips"``: W, H and both), and average.
        classes: indices of the classes to return; None returns all K.

    Returns:
        (K or len(classes), d, h, w) float32 probabilities.

    Example:
        >>> from featsup.inference import prepare_model
        >>> from featsup.models import UNetPlusPlus
        >>> net = prepare_model(UNetPlusPlus(1, 2, widths=(4, 8), spatial_dims=3), device="cpu")
        >>> box = np.zeros((5, 20, 12), np.float32)
        >>> predict_box(net, box, patch=(4, 8, 8), overlap=0.5, batch_size=2, tta=True,
        ...             classes=[1]).shape
        (1, 5, 20, 12)
    """

    def run(volume: np.ndarray) -> np.ndarray:
        return predict_patches(model, volume, patch=patch, overlap=overlap, batch_size=batch_size)

    flips = tta_flips(tta)
    probs = run(box)
    for dims in flips[1:]:  # axes of the box (d, h, w): -2 is h, -1 is w
        probs = probs + np.flip(run(np.ascontiguousarray(np.flip(box, dims))), dims)
    probs = probs / len(flips)
    if classes is not None:
        probs = probs[list(classes)]
    return np.ascontiguousarray(probs, dtype=np.float32)
