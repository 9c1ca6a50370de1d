"""Soft Dice loss (paper eq. 8), the weighted Dice loss (eq. 11) and the Tversky loss.

Both work on logits and take targets as integer label maps or one-hot tensors, in 2D
``(B, C, H, W)`` or 3D ``(B, C, D, H, W)``.
"""

from __future__ import annotations

import torch
from torch import nn

from featsup._checks import check_choice, check_positive, check_type
from featsup.losses._utils import (
    REDUCTIONS,
    Activation,
    Reduction,
    check_logits,
    one_hot_target,
    probabilities,
    reduce,
    resolve_activation,
    spatial_dims,
)

__all__ = [
    "DiceLoss",
    "TverskyLoss",
    "WeightedDiceLoss",
    "dice_loss",
    "tversky_loss",
    "weighted_dice_loss",
]


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: Activation = "auto",
    include_background: bool = True,
    smooth: float = 1e-5,
    squared: bool = False,
    batch: bool = False,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Soft Dice loss, paper eq. 8: :math:`1 - (2|G \cap P| + s) / (|G| + |P| + s)`.

    ``P`` is the softmax (or sigmoid) of ``logits``, ``G`` the one-hot target, sums run over
    the spatial dimensions (and the batch if ``batch``), one value per sample and class.

    Empty masks never give NaN: a class absent from both target and prediction gives
    ``1 - s / s = 0``; absent from the target but predicted gives
    ``1 - s / (|P| + s)``, close to 1. With ``smooth=0`` the first case is defined as 0.

    Args:
        logits: (B, C, H, W) or (B, C, D, H, W) raw scores.
        target: (B, H, W) / (B, D, H, W) integer label map (also (B, 1, ...) when C > 1),
            or (B, C, ...) one-hot or soft target. With C == 1 the label map holds 0/1.
        activation: ``"softmax"`` over channels, ``"sigmoid"`` per channel, or ``"auto"``
            (sigmoid when C == 1, else softmax).
        include_background: keep channel 0; ``False`` drops it after the activation.
        smooth: s >= 0, added to numerator and denominator (MONAI's ``smooth_nr = smooth_dr``).
        squared: sum squares in the denominator (V-Net), ``|G|^2 + |P|^2``.
        batch: pool the sums over the batch before dividing (one value per class).
        reduction: ``"mean"`` or ``"sum"`` over the values, or ``"none"``.

    Returns:
        A scalar, or with ``reduction="none"`` a (B, C') tensor ((C',) if ``batch``), where
        C' is C, or C - 1 without the background.

    Raises:
        ValueError: on bad shapes, labels out of range or bad option values.
        TypeError: if ``logits`` or ``target`` is not a tensor of a usable dtype.

    Example:
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])  # (1, 2, 1, 2)
        >>> round(dice_loss(logits, torch.tensor([[[0, 1]]])).item(), 4)
        0.0
    """
    return _dice(
        logits, target, None, activation, include_background, smooth, squared, batch, reduction
    )


def weighted_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    *,
    activation: Activation = "auto",
    include_background: bool = True,
    smooth: float = 1e-5,
    squared: bool = False,
    batch: bool = False,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Weighted Dice loss, paper eq. 11: :math:`1 - 2|W G \cap P| / (|W G| + |W P|)`.

    Every pixel's contribution to the intersection and to both volumes is multiplied by
    ``weight`` (for example :func:`~featsup.losses.boundary_weight_map`); an all-ones
    weight gives exactly :func:`dice_loss`. Options and empty-mask behaviour are those of
    :func:`dice_loss` (an all-zero weight counts as an empty mask: loss 0).

    Args:
        logits: (B, C, H, W) or (B, C, D, H, W) raw scores.
        target: label map or one-hot target, as in :func:`dice_loss`.
        weight: (B, H, W), (B, 1, H, W) or (B, C, H, W) non-negative pixel weights
            (3D alike).
        activation: see :func:`dice_loss`.
        include_background: see :func:`dice_loss`.
        smooth: see :func:`dice_loss`.
        squared: see :func:`dice_loss`.
        batch: see :func:`dice_loss`.
        reduction: see :func:`dice_loss`.

    Returns:
        As :func:`dice_loss`.

    Raises:
        ValueError: on bad shapes or option values, as :func:`dice_loss`.
        TypeError: if an input is not a tensor.

    Example:
        >>> logits = torch.zeros(1, 2, 4, 4)
        >>> target = torch.zeros(1, 4, 4, dtype=torch.long)
        >>> w = torch.ones(1, 4, 4)
        >>> bool(weighted_dice_loss(logits, target, w) == dice_loss(logits, target))
        True
    """
    return _dice(
        logits, target, weight, activation, include_background, smooth, squared, batch, reduction
    )


def tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    activation: Activation = "auto",
    include_background: bool = True,
    smooth: float = 1e-5,
    batch: bool = False,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Tversky loss: :math:`1 - (2 TP + s) / (2 TP + 2 \alpha FP + 2 \beta FN + s)`.

    The Tversky index (Salehi et al., 2017) weighs false positives by ``alpha`` and false
    negatives (missed voxels) by ``beta``; ``beta > alpha`` favours recall, which suits
    small lesions that a Dice-trained model tends to leave out. Soft counts:
    ``TP = sum(P G)``, ``FP = sum(P (1 - G))``, ``FN = sum((1 - P) G)``. With
    ``alpha = beta = 0.5`` it is exactly :func:`dice_loss` (or, with ``weight``,
    :func:`weighted_dice_loss`); the factor 2 keeps ``smooth`` on Dice's scale. Empty masks
    behave as in :func:`dice_loss`.

    Args:
        logits: (B, C, H, W) or (B, C, D, H, W) raw scores.
        target: label map or one-hot target, as in :func:`dice_loss`.
        weight: optional pixel weights, as in :func:`weighted_dice_loss`.
        alpha: weight of false positives, >= 0.
        beta: weight of false negatives, >= 0; ``alpha + beta > 0``.
        activation: see :func:`dice_loss`.
        include_background: see :func:`dice_loss`.
        smooth: see :func:`dice_loss`.
        batch: see :func:`dice_loss`.
        reduction: see :func:`dice_loss`.

    Returns:
        As :func:`dice_loss`.

    Raises:
        ValueError: on bad shapes or option values, as :func:`dice_loss`.
        TypeError: if an input is not a tensor.

    Example:
        >>> logits = torch.tensor([[[[9.0, 9.0, -9.0, -9.0]]]])  # (1, 1, 1, 4): finds 2 of 3
        >>> target = torch.tensor([[[1, 1, 1, 0]]])
        >>> round(tversky_loss(logits, target, alpha=0.5, beta=0.5).item(), 3)  # Dice: 1 - 4/5
        0.2
        >>> round(tversky_loss(logits, target, alpha=0.3, beta=0.7).item(), 3)  # 1 - 4/5.4
        0.259
    """
    _check_tversky_weights(alpha, beta)
    return _dice(
        logits, target, weight, activation, include_background, smooth, False, batch, reduction,
        alpha=alpha, beta=beta,
    )  # fmt: skip


def _dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    activation: str,
    include_background: bool,
    smooth: float,
    squared: bool,
    batch: bool,
    reduction: str,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
) -> torch.Tensor:
    check_logits(logits)
    check_choice("reduction", reduction, REDUCTIONS)
    check_positive("smooth", smooth, strict=False)
    _check_background(include_background, logits.shape[1])
    act = resolve_activation(activation, logits.shape[1])
    onehot = one_hot_target(target, logits)
    prob = probabilities(logits, act)
    if weight is not None:
        weight = _weight_like(weight, logits)
    if not include_background:
        prob, onehot = prob[:, 1:], onehot[:, 1:]
        if weight is not None and weight.shape[1] > 1:
            weight = weight[:, 1:]
    dims = ([0] if batch else []) + spatial_dims(prob)
    wp = prob if weight is None else prob * weight
    wg = onehot if weight is None else onehot * weight
    intersection = (wp * onehot).sum(dims)
    if squared:
        denominator = (wp * prob).sum(dims) + (wg * onehot).sum(dims)
    elif alpha == beta == 0.5:
        denominator = wp.sum(dims) + wg.sum(dims)
    else:  # 2 (TP + alpha FP + beta FN), FP = |P| - TP, FN = |G| - TP
        predicted, reference = wp.sum(dims), wg.sum(dims)
        denominator = 2 * ((1 - alpha - beta) * intersection + alpha * predicted + beta * reference)
    numerator, denominator = 2 * intersection + smooth, denominator + smooth
    empty = denominator == 0
    ratio = torch.where(
        empty, torch.ones_like(numerator), numerator / denominator.masked_fill(empty, 1)
    )
    return reduce(1 - ratio, reduction)


def _check_tversky_weights(alpha: float, beta: float) -> tuple[float, float]:
    check_positive("alpha", alpha, strict=False)
    check_positive("beta", beta, strict=False)
    if alpha + beta <= 0:
        raise ValueError(
            f"alpha, beta: expected a positive sum, got {alpha} and {beta}; "
            "fix: alpha = beta = 0.5 is the Dice loss"
        )
    return float(alpha), float(beta)


def _check_background(include_background: bool, num_classes: int) -> None:
    if not include_background and num_classes == 1:
        raise ValueError(
            "include_background: expected True for single-channel logits, got False; "
            "fix: keep it True (the one channel is the foreground)"
        )


def _weight_like(weight: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    check_type("weight", weight, torch.Tensor)
    if weight.ndim == logits.ndim - 1:
        weight = weight.unsqueeze(1)
    ok = (
        weight.ndim == logits.ndim
        and weight.shape[0] == logits.shape[0]
        and weight.shape[1] in (1, logits.shape[1])
        and weight.shape[2:] == logits.shape[2:]
    )
    if not ok:
        raise ValueError(
            f"weight: expected shape (B, *spatial), (B, 1, *spatial) or (B, C, *spatial) for "
            f"logits {tuple(logits.shape)}, got shape {tuple(weight.shape)}"
        )
    return weight.to(logits.dtype)


class _DiceBase(nn.Module):
    def __init__(
        self,
        *,
        activation: Activation = "auto",
        include_background: bool = True,
        smooth: float = 1e-5,
        squared: bool = False,
        batch: bool = False,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        resolve_activation(activation, 2)
        self.activation = activation
        self.include_background = include_background
        self.smooth = check_positive("smooth", smooth, strict=False)
        self.squared = squared
        self.batch = batch
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)

    def _options(self) -> dict:
        return {
            "activation": self.activation,
            "include_background": self.include_background,
            "smooth": self.smooth,
            "squared": self.squared,
            "batch": self.batch,
            "reduction": self.reduction,
        }

    def extra_repr(self) -> str:
        """Options shown in ``repr``."""
        return ", ".join(f"{k}={v!r}" for k, v in self._options().items())


class DiceLoss(_DiceBase):
    """Module form of :func:`dice_loss` (paper eq. 8); options are checked here.

    Example:
        >>> loss = DiceLoss(include_background=False)
        >>> loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss; see :func:`dice_loss` for shapes."""
        return dice_loss(logits, target, **self._options())


class TverskyLoss(_DiceBase):
    """Module form of :func:`tversky_loss`; options are checked here.

    Example:
        >>> loss = TverskyLoss(alpha=0.3, beta=0.7, include_background=False)
        >>> loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        beta: float = 0.7,
        activation: Activation = "auto",
        include_background: bool = True,
        smooth: float = 1e-5,
        batch: bool = False,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(
            activation=activation, include_background=include_background, smooth=smooth,
            batch=batch, reduction=reduction,
        )  # fmt: skip
        self.alpha, self.beta = _check_tversky_weights(alpha, beta)

    def _options(self) -> dict:
        options = {"alpha": self.alpha, "beta": self.beta, **super()._options()}
        del options["squared"]
        return options

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss; see :func:`tversky_loss` for shapes."""
        return tversky_loss(logits, target, weight, **self._options())


class WeightedDiceLoss(_DiceBase):
    """Module form of :func:`weighted_dice_loss` (paper eq. 11); options are checked here.

    Example:
        >>> loss = WeightedDiceLoss()
        >>> logits, target = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
        >>> value = loss(logits, target, torch.rand(2, 8, 8))
        >>> 0.0 <= value.item() <= 1.0
        True
    """

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """Compute the loss; see :func:`weighted_dice_loss` for shapes."""
        return weighted_dice_loss(logits, target, weight, **self._options())
