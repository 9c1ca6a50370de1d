"""Private helpers shared by the losses: input checks, activations, one-hot targets."""

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
    num_classes, spatial = logits.shape[1], tuple(logits.shape[2:])
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
    _check_labels(target, num_classes)
    hot = torch.nn.functional.one_hot(target.long(), num_classes)
    return hot.movedim(-1, 1).to(logits.dtype).reshape(logits.shape[0], num_classes, *spatial)


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
            f"target: expected labels in [0, {num_classes - 1}] for {num_classes} classes, "
            f"got values in [{low}, {high}]"
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
