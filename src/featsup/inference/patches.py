"""Patch-wise prediction of a 3D volume: overlapping windows with Gaussian blending.

:func:`predict_patches` runs a 3D model (``(B, C, D, H, W)`` -> logits) over windows of
a fixed size that overlap by a share ``overlap`` and blends their class probabilities
with a Gaussian weight centred on each window, which down-weights the window borders
where the model saw the least context (nnU-Net; MONAI's ``mode="gaussian"``). The
Gaussian is MONAI's ``compute_importance_map`` exactly; two things differ from MONAI's
``sliding_window_inference``:

- windows are spread evenly over each axis (``linspace``, as nnU-Net) instead of at a
  fixed step with the last window pushed back to the edge, so every overlap is alike;
  when the step divides ``size - patch`` the two sets of windows are identical;
- probabilities are blended (MONAI blends whatever the predictor returns; blending
  logits and then taking the softmax is not the same).

The input volume stays where it is (the CPU for an array) and only a batch of windows
moves to the device; the blended sum and the weight sum are accumulated in place there,
so memory is ``(K + 1) * D * H * W`` floats plus one batch of windows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from featsup._checks import check_in_range, check_ndim, check_positive
from featsup.inference.predict import PreparedModel, _prepared, _probabilities

__all__ = ["gaussian_weights", "patch_starts", "predict_patches"]


def _patch(patch: Sequence[int], ndim: int) -> tuple[int, ...]:
    values = tuple(patch) if isinstance(patch, Sequence) else ()
    if len(values) != ndim or any(not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        raise ValueError(
            f"patch: expected {ndim} ints >= 1 (one per spatial axis), got {patch!r}; "
            "fix: e.g. patch=(32, 64, 64)"
        )
    return tuple(int(v) for v in values)


def patch_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``patch`` covering ``size``, evenly spread.

    The step is at most ``patch * (1 - overlap)`` (at least 1); the first window starts
    at 0 and the last ends at ``size``. A ``size`` up to ``patch`` gives one window.

    Example:
        >>> patch_starts(64, 32, 0.5), patch_starts(70, 32, 0.5), patch_starts(20, 32, 0.5)
        ([0, 16, 32], [0, 13, 25, 38], [0])
    """
    if size <= patch:
        return [0]
    step = max(int(patch * (1.0 - overlap)), 1)
    count = -(-(size - patch) // step) + 1
    return np.round(np.linspace(0, size - patch, count)).astype(int).tolist()


def gaussian_weights(
    patch: Sequence[int], *, sigma_scale: float = 0.125, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Separable Gaussian centred on a window, ``sigma = sigma_scale * patch`` per axis.

    The same map as MONAI's ``compute_importance_map(patch, "gaussian", sigma_scale)``:
    centred at ``(n - 1) / 2``, peak about 1, floored at ``max(min, 1e-3)`` so that no
    voxel of a window has zero weight.

    Returns:
        Float32 tensor of shape ``patch``.

    Example:
        >>> w = gaussian_weights((5, 5), sigma_scale=0.5)
        >>> w.shape, bool(w[2, 2] == w.max()), bool(torch.equal(w, w.flip(0)))
        (torch.Size([5, 5]), True, True)
    """
    check_positive("sigma_scale", sigma_scale)
    weights = torch.ones((), device=device)
    for n in patch:
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2.0
        axis = torch.exp(x**2 / (-2.0 * (sigma_scale * n) ** 2))
        weights = weights.unsqueeze(-1) * axis
    return weights.clamp_(min=max(float(weights.min()), 1e-3))


def _pad_to(x: torch.Tensor, patch: tuple[int, ...]) -> tuple[torch.Tensor, list[slice]]:
    """Pad (C, *spatial) symmetrically with zeros up to ``patch``; the slices undo it."""
    pads: list[int] = []
    crop = [slice(None)]
    for n, p in zip(x.shape[1:], patch, strict=True):
        before = max(p - n, 0) // 2
        crop.append(slice(before, before + n))
    for n, p in reversed(list(zip(x.shape[1:], patch, strict=True))):
        diff = max(p - n, 0)
        pads += [diff // 2, diff - diff // 2]
    return (F.pad(x, pads) if any(pads) else x), crop


@torch.inference_mode()
def predict_patches(
    model: nn.Module,
    volume: np.ndarray | torch.Tensor,
    *,
    patch: Sequence[int],
    overlap: float = 0.5,
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    head: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Predict class probabilities of a volume window by window, Gaussian-blended.

    Args:
        model: a :class:`~featsup.inference.PreparedModel` (used as it is), or a 3D model
            returning logits (B, K, D, H, W) of its input's size, or a list of them (deep
            supervision), prepared for this call as in :func:`predict_volume`.
        volume: (D, H, W) or (C, D, H, W) float image, preprocessed as in training (for
            the tumour stage: the liver ROI crop, zeroed outside the liver).
        patch: (D, H, W) window size; volumes smaller along an axis are zero-padded
            (symmetrically) to it and the padding cropped from the result.
        overlap: share of a window shared with its neighbour, in [0, 1).
        sigma_scale: Gaussian sigma as a share of the window size (0.125 as nnU-Net
            and MONAI).
        batch_size: windows per forward pass.
        head: the deep-supervision head (1-based) to use; None = the last.
        device: ``"auto"`` / None (CUDA if available, or a prepared model's device),
            ``"cpu"``, ``"cuda"``...
        progress: show a progress bar over batches.

    Returns:
        (K, D, H, W) float32 probabilities summing to 1 over K (K = 2 for a one-logit
        model), on the volume's grid.

    Raises:
        ValueError: for a volume that is not 3D or 4D, a bad ``patch``, ``overlap``,
            ``sigma_scale`` or ``batch_size``, or a model that changes the window size.

    Example:
        >>> net = nn.Conv3d(1, 2, 3, padding=1)
        >>> volume = np.zeros((10, 40, 24), np.float32)
        >>> predict_patches(net, volume, patch=(8, 16, 16), device="cpu").shape
        (2, 10, 40, 24)
    """
    check_ndim("volume", volume, (3, 4), "(D, H, W) or (C, D, H, W)")
    size = _patch(patch, 3)
    check_in_range("overlap", overlap, 0.0, 0.999)
    check_positive("batch_size", batch_size)
    net = _prepared(model, head, device)
    x = torch.as_tensor(volume).float()
    x, crop = _pad_to(x[None] if x.ndim == 3 else x, size)
    weights = gaussian_weights(size, sigma_scale=sigma_scale, device=net.device)
    starts = [patch_starts(n, p, overlap) for n, p in zip(x.shape[1:], size, strict=True)]
    boxes = [
        tuple(slice(o, o + n) for o, n in zip(w, size, strict=True))
        for w in itertools.product(*starts)
    ]
    total = torch.zeros(x.shape[1:], device=net.device)
    blended: torch.Tensor | None = None
    batches = range(0, len(boxes), batch_size)
    for first in tqdm(batches, desc="patches", disable=not progress, leave=False):
        batch = boxes[first : first + batch_size]
        probs = _window_probabilities(net, x, batch, size)
        if blended is None:  # K is known after the first batch
            blended = torch.zeros((probs.shape[1], *x.shape[1:]), device=net.device)
        for box, p in zip(batch, probs, strict=True):
            channels = (slice(None), *box)
            blended[channels] += p * weights
            total[box] += weights
    assert blended is not None  # there is always at least one window
    return blended.div_(total)[tuple(crop)].cpu().numpy()


def _window_probabilities(
    net: PreparedModel, x: torch.Tensor, boxes: list[tuple[slice, ...]], size: tuple[int, ...]
) -> torch.Tensor:
    """(B, K, *size) probabilities of the windows ``boxes`` of ``x`` (C, *spatial)."""
    tiles = torch.stack([x[:, box[0], box[1], box[2]] for box in boxes]).to(net.device)
    probs = _probabilities(net(tiles))
    if tuple(probs.shape[2:]) != size:
        raise ValueError(
            f"model: expected logits of the window size {size}, got {tuple(probs.shape[2:])}; "
            "fix: a patch the model keeps (e.g. multiples of 16 for a UNet++)"
        )
    return probs
