"""Focal loss (paper eq. 12, Lin et al. 2017), binary and multi-class, on logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featsup._checks import check_choice, check_in_range, check_positive
from featsup.losses._utils import (
    REDUCTIONS,
    Activation,
    Reduction,
    check_logits,
    one_hot_target,
    reduce,
    resolve_activation,
)

__all__ = ["FocalLoss", "focal_loss"]


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | None = None,
    activation: Activation = "auto",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Focal loss, paper eq. 12: :math:`-\alpha_t (1 - p_t)^\gamma \log p_t`.

    Softmax (multi-class): one value per pixel, :math:`-\sum_c \alpha_c t_c
    (1 - p_c)^\gamma \log p_c`; with ``gamma=0`` and no ``alpha`` it equals
    ``F.cross_entropy``. Sigmoid (binary or multi-label): one value per pixel and channel,
    :math:`-\alpha_t (1 - p_t)^\gamma \log p_t`; with ``gamma=0`` it equals
    ``F.binary_cross_entropy_with_logits``. Logs come from ``log_softmax`` /
    ``logsigmoid`` (never ``log(0)``); half-precision logits are computed in float32.

    Args:
        logits: (B, C, H, W) or (B, C, D, H, W) raw scores.
        target: (B, H, W) / (B, D, H, W) integer label map (0/1 when C == 1), or a
            (B, C, ...) one-hot target.
        gamma: focusing parameter >= 0.
        alpha: class balance. A float in [0, 1]: sigmoid weighs positives by alpha and
            negatives by 1 - alpha; softmax weighs channel 0 (background) by 1 - alpha and
            the others by alpha (as MONAI). A sequence of C non-negative floats multiplies
            channel c's term by ``alpha[c]``. ``None``: no weighting.
        activation: ``"softmax"``, ``"sigmoid"`` or ``"auto"`` (sigmoid when C == 1).
        reduction: ``"mean"`` / ``"sum"`` over the values, or ``"none"``.

    Returns:
        A scalar, or with ``reduction="none"`` a (B, *spatial) tensor for softmax and a
        (B, C, *spatial) tensor for sigmoid. ``"mean"`` is a plain mean over pixels (unlike
        ``F.cross_entropy(weight=...)``, it does not divide by the sum of the weights).

    Raises:
        ValueError: on bad shapes, labels out of range or bad option values.
        TypeError: if an input is not a tensor of a usable dtype.

    Example:
        >>> logits = torch.randn(2, 3, 8, 8)
        >>> target = torch.randint(0, 3, (2, 8, 8))
        >>> ce = torch.nn.functional.cross_entropy(logits, target)
        >>> torch.allclose(focal_loss(logits, target, gamma=0.0), ce)
        True
    """
    check_logits(logits)
    check_positive("gamma", gamma, strict=False)
    check_choice("reduction", reduction, REDUCTIONS)
    act = resolve_activation(activation, logits.shape[1])
    alpha = _check_alpha(alpha)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    onehot = one_hot_target(target, logits)
    alpha_t = _alpha_tensor(alpha, act, logits)
    if act == "softmax":
        loss = _softmax_focal(logits, onehot, gamma, alpha_t)
    else:
        loss = _sigmoid_focal(logits, onehot, gamma, alpha, alpha_t)
    return reduce(loss, reduction)


def _softmax_focal(
    logits: torch.Tensor, onehot: torch.Tensor, gamma: float, alpha_t: torch.Tensor | None
) -> torch.Tensor:
    logp = logits.log_softmax(dim=1)
    loss = -logp * onehot
    if gamma != 0:
        # (1 - p) from expm1 is exact near p = 0; the clamp keeps a saturated p = 1 from
        # sending an infinite gradient through pow when gamma < 1 (it gets 0 instead).
        one_minus_p = (-torch.expm1(logp)).clamp_min(torch.finfo(logp.dtype).tiny)
        loss = loss * one_minus_p.pow(gamma)
    if alpha_t is not None:
        loss = loss * alpha_t
    return loss.sum(dim=1)


def _sigmoid_focal(
    logits: torch.Tensor,
    onehot: torch.Tensor,
    gamma: float,
    alpha: float | Sequence[float] | None,
    alpha_t: torch.Tensor | None,
) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    if gamma != 0:
        # log(1 - p_t) = logsigmoid(-x) for t = 1 and logsigmoid(x) for t = 0: finite always.
        loss = loss * torch.exp(gamma * F.logsigmoid(-logits * (2 * onehot - 1)))
    if isinstance(alpha, (int, float)):
        loss = loss * (alpha * onehot + (1 - alpha) * (1 - onehot))
    elif alpha_t is not None:
        loss = loss * alpha_t
    return loss


def _alpha_tensor(
    alpha: float | Sequence[float] | None, activation: str, logits: torch.Tensor
) -> torch.Tensor | None:
    """Per-channel factors broadcastable to (B, C, *spatial), or None."""
    if alpha is None:
        return None
    num_classes = logits.shape[1]
    if isinstance(alpha, (int, float)):
        if activation == "sigmoid":
            return None  # applied per element from the target
        values = [1.0 - alpha] + [float(alpha)] * (num_classes - 1)
    else:
        values = [float(a) for a in alpha]
        if len(values) != num_classes:
            raise ValueError(
                f"alpha: expected {num_classes} values (one per channel), got {len(values)}"
            )
    shape = (1, num_classes) + (1,) * (logits.ndim - 2)
    return torch.tensor(values, dtype=logits.dtype, device=logits.device).view(shape)


def _check_alpha(alpha: float | Sequence[float] | None) -> float | tuple[float, ...] | None:
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return check_in_range("alpha", float(alpha), 0.0, 1.0)
    if isinstance(alpha, (bool, str)) or not isinstance(alpha, (Sequence, torch.Tensor)):
        raise TypeError(f"alpha: expected None, a float or a sequence, got {type(alpha).__name__}")
    values = tuple(float(a) for a in alpha)
    for value in values:
        check_positive("alpha", value, strict=False)
    return values


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss` (paper eq. 12); options are checked here.

    Args:
        gamma: focusing parameter >= 0.
        alpha: None, a float in [0, 1] or one non-negative weight per channel.
        activation: ``"softmax"``, ``"sigmoid"`` or ``"auto"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> loss = FocalLoss(gamma=2.0, alpha=0.25)
        >>> loss(torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        activation: Activation = "auto",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        self.gamma = check_positive("gamma", gamma, strict=False)
        self.alpha = _check_alpha(alpha)
        resolve_activation(activation, 2)
        self.activation = activation
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss; see :func:`focal_loss` for shapes."""
        return focal_loss(
            logits,
            target,
            gamma=self.gamma,
            alpha=self.alpha,
            activation=self.activation,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        """Options shown in ``repr``."""
        return (
            f"gamma={self.gamma}, alpha={self.alpha}, activation={self.activation!r}, "
            f"reduction={self.reduction!r}"
        )
