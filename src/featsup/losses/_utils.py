"""Helpers shared by the losses: input checks, activations and one-hot targets.

:func:`one_hot` is public (``featsup.losses.one_hot``): the supervision's teacher input
uses it too.
"""

from __future__ import annotations

from typing import Literal

import torch

from featsup._checks import check_choice, check_ndim, check_type

Activation = Literal["auto", "softmax", "sigmoid"]
Reduction = Literal["mean", "sum", "none"]

ACTIVATIONS: tuple[str, ...] = ("auto", "softmax", "sigmoid")
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")
LOGITS_LAYOUT = "(B, C, H, W) or (B, C, D, H, W)"


def check_logits(logits: torch.Tensor) -> torch.Tensor:
    """Check that ``logits`` is a floating 4D or 5D tensor and return it."""
    check_type("logits", logits, torch.Tensor)
    check_ndim("logits", logits, (4, 5), LOGITS_LAYOUT)
    if not logits.is_floating_point():
        raise TypeError(
            f"logits: expected a floating-point tensor, got {logits.dtype}; fix: .float()"
        )
    return logits


def resolve_activation(activation: str, num_classes: int) -> str:
    """Return ``"softmax"`` or ``"sigmoid"``; ``"auto"`` is sigmoid for one channel."""
    check_choice("activation", activation, ACTIVATIONS)
    if activation == "auto":
        return "sigmoid" if num_classes == 1 else "softmax"
    if activation == "softmax" and num_classes == 1:
        raise ValueError(
            "activation: expected 'sigmoid' or 'auto' for single-channel logits, got 'softmax'; "
            "fix: use activation='sigmoid' or give 2 channels"
        )
    return activation


def one_hot_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Turn ``target`` into a float tensor shaped like ``logits``.

    ``target`` is an integer label map ``(B, *spatial)`` (also ``(B, 1, *spatial)`` when
    ``C > 1``) or a one-hot / soft target ``(B, C, *spatial)``. With ``C == 1`` a label map
    holds 0/1 (bool or float accepted).
    """
    check_type("target", target, torch.Tensor)
    num_classes = logits.shape[1]
    is_int = not target.is_floating_point()
    if target.ndim == logits.ndim and target.shape[1] == 1 and num_classes > 1 and is_int:
        target = target[:, 0]
    if target.ndim == logits.ndim:
        _check_spatial(target, logits)
        if target.shape[1] != num_classes:
            raise ValueError(
                f"target: expected {num_classes} channels like logits {tuple(logits.shape)}, "
                f"got shape {tuple(target.shape)}; fix: pass an integer label map (B, *spatial)"
            )
        return target.to(logits.dtype)
    if target.ndim != logits.ndim - 1:
        raise ValueError(
            f"target: expected a label map (B, *spatial) or one-hot (B, C, *spatial) for logits "
            f"{tuple(logits.shape)}, got shape {tuple(target.shape)}"
        )
    _check_spatial(target, logits, offset=1)
    if num_classes == 1:
        _check_labels(target, 2)
        return target.unsqueeze(1).to(logits.dtype)
    if not is_int:
        raise TypeError(
            f"target: expected an integer label map, got {target.dtype}; fix: target.long()"
        )
    # (B, 1, *spatial): one_hot squeezes the channel, never a spatial axis of size 1
    return one_hot(target[:, None], num_classes, dtype=logits.dtype)


def one_hot(
    target: torch.Tensor, num_classes: int, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One-hot ``(B, K, *spatial)`` map of an integer ``(B, *spatial)`` or ``(B, 1, ...)`` target.

    A floating ``(B, K, *spatial)`` target (``K = num_classes``, 2 or more spatial axes)
    is taken as one-hot already and only cast.

    Args:
        target: (B, *spatial) or (B, 1, *spatial) integer labels in [0, K).
        num_classes: K.
        dtype: dtype of the result.

    Returns:
        (B, K, *spatial) tensor of 0 and 1 on the target's device.

    Raises:
        ValueError: if labels fall outside ``[0, num_classes)``.

    Example:
        >>> one_hot(torch.tensor([[[0, 2]]]), 3)[0, :, 0].tolist()
        [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    if target.is_floating_point() and target.ndim >= 4 and target.shape[1] == num_classes:
        return target.to(dtype)
    if target.ndim >= 4 and target.shape[1] == 1:
        target = target[:, 0]
    target = target.long()
    _check_labels(target, num_classes)
    shape = (target.shape[0], num_classes, *target.shape[1:])
    return torch.zeros(shape, dtype=dtype, device=target.device).scatter_(1, target[:, None], 1.0)


def _check_spatial(target: torch.Tensor, logits: torch.Tensor, offset: int = 2) -> None:
    if target.shape[0] != logits.shape[0] or target.shape[offset:] != logits.shape[2:]:
        raise ValueError(
            f"target: expected batch and spatial size of logits {tuple(logits.shape)}, "
            f"got shape {tuple(target.shape)}"
        )


def _check_labels(target: torch.Tensor, num_classes: int) -> None:
    if target.numel() == 0:
        return
    low, high = target.min().item(), target.max().item()
    if low < 0 or high > num_classes - 1:
        raise ValueError(
            f"target: expected labels in [0, {num_classes}) for {num_classes} classes "
            f"(integer labels in [0, {num_classes - 1}]), got values in [{low}, {high}]; "
            "fix: num_classes"
        )


def probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Softmax over channels or element-wise sigmoid."""
    return logits.softmax(dim=1) if activation == "softmax" else logits.sigmoid()


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a PyTorch-style reduction."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def spatial_dims(tensor: torch.Tensor) -> list[int]:
    """Indices of the spatial dimensions of a ``(B, C, *spatial)`` tensor."""
    return list(range(2, tensor.ndim))
