"""Composed losses: Seg-Loss (paper eq. 13), deep supervision (eq. 14), total (eq. 17)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from featsup._checks import check_choice, check_positive, check_type
from featsup.losses._utils import Activation, resolve_activation
from featsup.losses.blob import blob_dice_loss
from featsup.losses.dice import _weight_like, dice_loss, tversky_loss, weighted_dice_loss
from featsup.losses.feature import FeatureLoss, _check_weights
from featsup.losses.focal import focal_loss

__all__ = [
    "DeepSupervisionLoss",
    "SegLoss",
    "TotalLoss",
    "deep_supervision_loss",
    "seg_loss",
]

_SEG_REDUCTIONS: tuple[str, ...] = ("mean", "sum")


def seg_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    focal_gamma: float = 0.0,
    activation: Activation = "auto",
    include_background: bool = True,
    smooth: float = 1e-5,
    batch_dice: bool = False,
    reduction: Literal["mean", "sum"] = "mean",
    weight_ce: bool = False,
    tversky_beta: float | None = None,
    blob_weight: float = 0.0,
) -> torch.Tensor:
    r"""Seg-Loss, paper eq. 13: :math:`w_1 \cdot \mathrm{Dice} + w_2 \cdot \mathrm{CE}`.

    The Dice term is :func:`~featsup.losses.dice_loss`, or the weighted Dice of eq. 11
    when a pixel ``weight`` map is given; with ``tversky_beta`` it is
    :func:`~featsup.losses.tversky_loss` instead (alpha = 1 - beta). The CE term is
    cross-entropy (softmax) or binary cross-entropy (sigmoid); ``focal_gamma > 0`` swaps it
    for the focal loss of eq. 12, which the paper uses for tumours. A term whose weight is 0
    is not computed. ``blob_weight > 0`` adds a third term,
    :func:`~featsup.losses.blob_dice_loss` (one Dice per lesion), weighted so.

    Args:
        logits: (B, C, H, W) or (B, C, D, H, W) raw scores.
        target: integer label map (B, *spatial) or one-hot (B, C, *spatial).
        weight: optional (B, *spatial) pixel weights for the Dice term (and, with
            ``weight_ce``, the CE term).
        dice_weight: w1 >= 0.
        ce_weight: w2 >= 0.
        focal_gamma: 0 for cross-entropy, > 0 for the focal loss.
        activation: ``"softmax"``, ``"sigmoid"`` or ``"auto"`` (sigmoid when C == 1).
        include_background: keep channel 0 in the Dice term (CE always uses all classes).
        smooth: Dice smoothing term, see :func:`~featsup.losses.dice_loss`.
        batch_dice: pool the Dice sums over the batch (one Dice per class, as if the
            batch were one volume) instead of one Dice per sample. Per sample, and with
            ``include_background=False``, a slice without foreground costs about 1 for
            any prediction but an exact zero (with almost no gradient), and a slice with
            a few foreground pixels weighs as much as one that a lesion fills.
        reduction: ``"mean"`` or ``"sum"``, applied to each term before weighting.
        weight_ce: weigh the CE (or focal) term's pixels by ``weight`` too. ``"mean"`` is
            then the weighted mean :math:`\sum w \ell / \sum w` (so uniform weights change
            nothing), ``"sum"`` the weighted sum. Ignored when ``weight`` is None.
        tversky_beta: None for Dice, or a weight in [0, 1] of missed voxels: the Dice term
            becomes the Tversky loss with false negatives weighted ``tversky_beta`` and
            false positives ``1 - tversky_beta`` (0.5 is Dice; above 0.5 favours recall).
        blob_weight: w3 >= 0, the weight of the blob Dice term (0: not computed); it
            takes ``activation``, ``smooth`` and ``reduction`` (over lesions), never
            ``weight``.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: on bad shapes or option values.
        TypeError: if an input is not a tensor.

    Example:
        >>> logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> ce = torch.nn.functional.cross_entropy(logits, target)
        >>> torch.allclose(seg_loss(logits, target, dice_weight=0.0), ce)
        True
        >>> weight = torch.ones(2, 8, 8)
        >>> torch.allclose(seg_loss(logits, target, weight, dice_weight=0.0, weight_ce=True), ce)
        True
    """
    check_positive("dice_weight", dice_weight, strict=False)
    check_positive("ce_weight", ce_weight, strict=False)
    check_positive("blob_weight", blob_weight, strict=False)
    check_choice("reduction", reduction, _SEG_REDUCTIONS)
    dice_options = {
        "activation": activation,
        "include_background": include_background,
        "smooth": smooth,
        "batch": batch_dice,
        "reduction": reduction,
    }
    if tversky_beta is not None:
        _check_tversky_beta(tversky_beta)
    total = torch.zeros((), dtype=logits.dtype, device=logits.device)
    if dice_weight:
        if tversky_beta is not None:
            dice = tversky_loss(
                logits, target, weight, alpha=1 - tversky_beta, beta=tversky_beta,
                **dice_options,  # type: ignore[arg-type]
            )  # fmt: skip
        elif weight is None:
            dice = dice_loss(logits, target, **dice_options)  # type: ignore[arg-type]
        else:
            dice = weighted_dice_loss(logits, target, weight, **dice_options)  # type: ignore[arg-type]
        total = total + dice_weight * dice
    if ce_weight:
        if weight_ce and weight is not None:
            ce = _weighted_ce(logits, target, weight, focal_gamma, activation, reduction)
        else:
            ce = focal_loss(
                logits, target, gamma=focal_gamma, activation=activation, reduction=reduction
            )
        total = total + ce_weight * ce
    if blob_weight:
        blob = blob_dice_loss(logits, target, activation=activation, smooth=smooth,
                              reduction=reduction)  # fmt: skip
        total = total + blob_weight * blob
    return total


def _check_tversky_beta(beta: float) -> float:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(
            f"tversky_beta: expected a weight in [0, 1] (or None for Dice), got {beta}"
        )
    return float(beta)


def _weighted_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    gamma: float,
    activation: Activation,
    reduction: Literal["mean", "sum"],
) -> torch.Tensor:
    """The CE / focal term with pixel weights, shaped as the Dice's; see :func:`seg_loss`."""
    per_pixel = focal_loss(logits, target, gamma=gamma, activation=activation, reduction="none")
    w = _weight_like(weight, logits).to(per_pixel.dtype)  # (B, 1 or C, *spatial)
    if per_pixel.ndim < logits.ndim:  # softmax: one value per pixel
        if w.shape[1] != 1:
            raise ValueError(
                f"weight: expected one weight per pixel for the softmax CE term, (B, *spatial) "
                f"or (B, 1, *spatial), got shape {tuple(weight.shape)}"
            )
        w = w[:, 0]
    w = w.expand_as(per_pixel)
    total = (per_pixel * w).sum()
    if reduction == "sum":
        return total
    return total / w.sum().clamp_min(torch.finfo(w.dtype).tiny)


class SegLoss(nn.Module):
    """Module form of :func:`seg_loss` (paper eq. 13); options are checked here.

    Example:
        >>> loss = SegLoss(dice_weight=1.0, ce_weight=1.0)
        >>> loss(torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        focal_gamma: float = 0.0,
        activation: Activation = "auto",
        include_background: bool = True,
        smooth: float = 1e-5,
        batch_dice: bool = False,
        reduction: Literal["mean", "sum"] = "mean",
        weight_ce: bool = False,
        tversky_beta: float | None = None,
        blob_weight: float = 0.0,
    ) -> None:
        super().__init__()
        resolve_activation(activation, 2)
        self.options = {
            "dice_weight": check_positive("dice_weight", dice_weight, strict=False),
            "ce_weight": check_positive("ce_weight", ce_weight, strict=False),
            "focal_gamma": check_positive("focal_gamma", focal_gamma, strict=False),
            "activation": activation,
            "include_background": include_background,
            "smooth": check_positive("smooth", smooth, strict=False),
            "batch_dice": bool(batch_dice),
            "reduction": check_choice("reduction", reduction, _SEG_REDUCTIONS),
            "weight_ce": bool(weight_ce),
            "tversky_beta": None if tversky_beta is None else _check_tversky_beta(tversky_beta),
            "blob_weight": check_positive("blob_weight", blob_weight, strict=False),
        }

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss; see :func:`seg_loss` for shapes."""
        return seg_loss(logits, target, weight, **self.options)

    def extra_repr(self) -> str:
        """Options shown in ``repr``."""
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


def deep_supervision_loss(
    outputs: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    head_weights: Sequence[float] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""Deep-supervision loss, paper eq. 14: :math:`\sum_i w_i \, \mathrm{loss}(X^{0,i}, y)`.

    ``outputs`` is the list of head logits ``[X01, X02, X03, X04]`` returned by a
    deep-supervised UNet++, or one tensor (no deep supervision: only X04, ``i = 4``).
    A head whose spatial size differs from the target's gets the target (and ``weight``)
    resized to its size by nearest-neighbour interpolation, as MONAI's
    ``DeepSupervisionLoss``; featsup's UNet++ heads are all full resolution.

    Args:
        outputs: (B, C, H, W) logits or a sequence of them (3D alike).
        target: integer label map (B, *spatial) or one-hot (B, C, *spatial).
        weight: optional (B, *spatial) pixel weights passed to ``loss_fn`` as third argument.
        head_weights: one non-negative weight per head; ``None`` gives 1 / n each, the
            average of the heads used in the paper.
        loss_fn: ``loss_fn(logits, target[, weight])`` for each head; default
            :func:`seg_loss` with its defaults.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: if there are no heads or the number of weights does not match.
        TypeError: if ``outputs`` is neither a tensor nor a sequence of tensors.

    Example:
        >>> heads = [torch.randn(2, 2, 8, 8) for _ in range(4)]
        >>> target = torch.randint(0, 2, (2, 8, 8))
        >>> value = deep_supervision_loss(heads, target)
        >>> mean = sum(seg_loss(h, target) for h in heads) / 4
        >>> torch.allclose(value, mean)
        True
    """
    heads = _as_heads(outputs)
    if head_weights is None:
        weights: tuple[float, ...] = (1.0 / len(heads),) * len(heads)
    else:
        weights = _check_weights("head_weights", head_weights)
    if len(weights) != len(heads):
        raise ValueError(
            f"head_weights: expected one weight per head ({len(heads)}), got {len(weights)}"
        )
    fn = seg_loss if loss_fn is None else loss_fn
    total = torch.zeros((), dtype=heads[0].dtype, device=heads[0].device)
    for head, w in zip(heads, weights, strict=True):
        head_target = _resize_nearest(target, head, label_map=target.ndim == head.ndim - 1)
        if weight is None:
            part = fn(head, head_target)
        else:
            head_weight = _resize_nearest(weight, head, label_map=weight.ndim == head.ndim - 1)
            part = fn(head, head_target, head_weight)
        total = total + w * part
    return total


def _as_heads(outputs: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    check_type("outputs", outputs, (list, tuple))
    heads = list(outputs)
    if not heads:
        raise ValueError("outputs: expected at least one head, got an empty sequence")
    for i, head in enumerate(heads):
        check_type(f"outputs[{i}]", head, torch.Tensor)
    return heads


def _resize_nearest(tensor: torch.Tensor, head: torch.Tensor, *, label_map: bool) -> torch.Tensor:
    """Resize a label map / one-hot / weight tensor to ``head``'s spatial size (nearest)."""
    size = tuple(head.shape[2:])
    spatial = tuple(tensor.shape[1:] if label_map else tensor.shape[2:])
    if spatial == size or len(spatial) != len(size):
        return tensor  # same size, or a shape error that the loss reports itself
    x = tensor.unsqueeze(1) if label_map else tensor
    resized = F.interpolate(x.to(torch.float32), size=size, mode="nearest").to(tensor.dtype)
    return resized.squeeze(1) if label_map else resized


class DeepSupervisionLoss(nn.Module):
    """Module form of :func:`deep_supervision_loss` (paper eq. 14).

    Args:
        loss: the per-head loss module or callable; default ``SegLoss()``.
        head_weights: one weight per head, ``None`` for the average.

    Example:
        >>> loss = DeepSupervisionLoss(SegLoss(ce_weight=0.5))
        >>> heads = [torch.randn(2, 1, 8, 8, requires_grad=True) for _ in range(4)]
        >>> loss(heads, torch.randint(0, 2, (2, 8, 8))).backward()
    """

    def __init__(
        self,
        loss: Callable[..., torch.Tensor] | None = None,
        *,
        head_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if loss is not None and not callable(loss):
            raise TypeError(f"loss: expected a loss module or callable, got {type(loss).__name__}")
        self.loss = SegLoss() if loss is None else loss
        self.head_weights = (
            None if head_weights is None else _check_weights("head_weights", head_weights)
        )

    def forward(
        self,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the loss; see :func:`deep_supervision_loss` for shapes."""
        return deep_supervision_loss(
            outputs, target, weight, head_weights=self.head_weights, loss_fn=self.loss
        )

    def extra_repr(self) -> str:
        """Options shown in ``repr``."""
        return f"head_weights={self.head_weights}"


class TotalLoss(nn.Module):
    r"""Total loss, paper eq. 17: :math:`w_1 \cdot \mathrm{DS} + w_2 \cdot \mathrm{SL1}`.

    ``forward(outputs, target, feature=None, weight=None)``: ``outputs`` and ``target``
    go to the segmentation term (a list of heads or one tensor); ``feature`` is either an
    already computed feature loss (a tensor, e.g. from ``FeatureSupervisor``), a pair
    ``(student, teacher)`` of feature maps or of lists of them for the ``feature`` module,
    or ``None`` for a model without feature supervision (UN variants). ``terms(...)``
    returns the weighted parts and the total, for logging.

    Args:
        seg: segmentation loss; default ``DeepSupervisionLoss(SegLoss())``, which also
            accepts a single tensor.
        feature: feature loss for ``(student, teacher)`` pairs; default ``FeatureLoss()``
            (smooth-L1, ``beta=1``, levels averaged).
        seg_weight: w1 >= 0.
        feature_weight: w2 >= 0.

    Example:
        >>> total = TotalLoss(feature_weight=0.5)
        >>> heads = [torch.randn(2, 2, 8, 8) for _ in range(4)]
        >>> target = torch.randint(0, 2, (2, 8, 8))
        >>> parts = total.terms(heads, target, feature=torch.tensor(0.2))
        >>> sorted(parts)
        ['feature', 'seg', 'total']
        >>> torch.allclose(parts["total"], parts["seg"] + 0.5 * 0.2)
        True
    """

    def __init__(
        self,
        seg: Callable[..., torch.Tensor] | None = None,
        feature: Callable[..., torch.Tensor] | None = None,
        *,
        seg_weight: float = 1.0,
        feature_weight: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("seg", seg), ("feature", feature)):
            if value is not None and not callable(value):
                raise TypeError(
                    f"{name}: expected a loss module or callable, got {type(value).__name__}"
                )
        self.seg = DeepSupervisionLoss() if seg is None else seg
        self.feature = FeatureLoss() if feature is None else feature
        self.seg_weight = check_positive("seg_weight", seg_weight, strict=False)
        self.feature_weight = check_positive("feature_weight", feature_weight, strict=False)

    def terms(
        self,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        feature: torch.Tensor | tuple | None = None,
        weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"seg", "feature" (if given), "total"}``, each already weighted."""
        seg = self.seg(outputs, target) if weight is None else self.seg(outputs, target, weight)
        parts = {"seg": self.seg_weight * seg}
        if feature is not None:
            if isinstance(feature, torch.Tensor):
                value = feature
            elif isinstance(feature, (tuple, list)) and len(feature) == 2:
                value = self.feature(feature[0], feature[1])
            else:
                raise TypeError(
                    "feature: expected a loss tensor, a (student, teacher) pair or None, "
                    f"got {type(feature).__name__}"
                )
            parts["feature"] = self.feature_weight * value
        parts["total"] = sum(parts.values(), torch.zeros((), device=seg.device))
        return parts

    def forward(
        self,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        feature: torch.Tensor | tuple | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the weighted total; see the class docstring."""
        return self.terms(outputs, target, feature, weight)["total"]

    def extra_repr(self) -> str:
        """Options shown in ``repr``."""
        return f"seg_weight={self.seg_weight}, feature_weight={self.feature_weight}"
