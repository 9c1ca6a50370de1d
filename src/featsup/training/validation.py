"""Validation of deep-supervised segmentation models: Dice of every head.

:func:`dice_per_head` is a ready ``val_fn`` for :class:`featsup.training.Trainer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from featsup._wrappers import supervised_student
from featsup.training.checkpoint import unwrap_model

__all__ = ["dice_per_head"]


def _image_target(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch["image"], batch["target"]
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"batch: expected a dict with 'image' and 'target' or a tuple (image, target, ...), "
        f"got {type(batch).__name__}"
    )


@torch.no_grad()
def dice_per_head(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    num_classes: int,
    head_names: list[str] | None = None,
) -> dict[str, float]:
    """Hard-label foreground Dice of every head, accumulated over the whole loader.

    Dice of class ``c`` is ``2 |P_c ∩ T_c| / (|P_c| + |T_c|)`` with ``P = argmax(logits)``,
    counted over all pixels of all batches (global Dice); a head's value is the mean over
    the foreground classes ``1..num_classes-1`` and 1.0 for a class absent from both.
    The model runs in eval mode (restored afterwards); a FeatureSupervisor (wrapped
    or not) is evaluated through its student, and a model with a
    ``deep_supervision`` flag is evaluated with it on, so that every head is scored.

    Args:
        model: returns a list of (B, C, H, W) head logits or one (B, C, H, W) tensor
            ((B, C, D, H, W) for a 3D model).
        loader: yields ``{"image": (B, C_in, H, W), "target": (B, H, W) int}`` dicts or
            ``(image, target, ...)`` tuples (3D: (B, C_in, D, H, W) and (B, D, H, W));
            a one-hot target has the logits' shape.
        num_classes: C, the number of classes (>= 2).
        head_names: names of the heads; default ``x0_1 .. x0_K`` for K heads.

    Returns:
        ``{"dice_<head name>": Dice}``, for example ``{"dice_x0_1": 0.91, ...}``.

    Raises:
        ValueError: if ``num_classes`` < 2, ``head_names`` has the wrong length or the
            loader is empty.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> net = UNetPlusPlus(1, 2, widths=(4, 8, 16))
        >>> data = [{"image": torch.randn(2, 1, 16, 16), "target": torch.ones(2, 16, 16).long()}]
        >>> sorted(dice_per_head(net, data, num_classes=2))
        ['dice_x0_1', 'dice_x0_2']
    """
    if num_classes < 2:
        raise ValueError(f"num_classes: expected >= 2 (background + foreground), got {num_classes}")
    net = supervised_student(model) or unwrap_model(model)
    was_training, flag = net.training, getattr(net, "deep_supervision", None)
    device = next(net.parameters()).device
    counts: torch.Tensor | None = None  # (heads, 3, classes): intersection, pred, true
    net.eval()
    if isinstance(flag, bool):
        net.deep_supervision = True  # type: ignore[assignment]
    try:
        for batch in loader:
            image, target = _image_target(batch)
            outputs = net(image.to(device))
            heads = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            target = target.to(device)
            # one-hot targets have the logits' rank: (B, C, H, W) in 2D; (B, D, H, W)
            # class indices of a 3D model have the rank of one-hot 2D targets
            target = target.max(1).indices if target.ndim == heads[0].ndim else target
            batch_counts = torch.stack([_class_counts(y, target, num_classes) for y in heads])
            counts = batch_counts if counts is None else counts + batch_counts
    finally:
        net.train(was_training)
        if isinstance(flag, bool):
            net.deep_supervision = flag  # type: ignore[assignment]
    if counts is None:
        raise ValueError("loader: expected at least one batch, got none")
    names = head_names or [f"x0_{j}" for j in range(1, counts.shape[0] + 1)]
    if len(names) != counts.shape[0]:
        raise ValueError(f"head_names: expected {counts.shape[0]} names, got {len(names)}")
    inter, pred, true = counts[:, 0, 1:], counts[:, 1, 1:], counts[:, 2, 1:]
    denom = pred + true
    dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom))
    return {f"dice_{n}": float(d) for n, d in zip(names, dice.mean(1).tolist(), strict=True)}


def _class_counts(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    pred = logits.max(1).indices.flatten()  # argmax over a strided axis is 20x slower
    true = target.flatten().long()
    n = num_classes
    inter = torch.bincount(true[pred == true], minlength=n)[:n]
    return torch.stack(
        [inter, torch.bincount(pred, minlength=n)[:n], torch.bincount(true, minlength=n)[:n]]
    ).double()
