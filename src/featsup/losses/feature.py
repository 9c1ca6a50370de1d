"""Feature loss between student and teacher encoder features (paper eq. 15-16).

The paper's SL1-Loss compares the flattened encoder features X(1,0)..X(4,0) of the
segmentation UNet++ (student) with those of the frozen encoding UNet++ (teacher). This
module is the one home of the feature-loss maths: the distance (:func:`feature_loss`),
the optional per-channel standardisation (``feature_norm="channel"``) and the weighting
of the levels (:class:`FeatureLoss`, which :class:`~featsup.supervision.FeatureSupervisor`
uses). The weight w2 of the whole term belongs to
:class:`~featsup.losses.TotalLoss` (eq. 17), not here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from featsup._checks import check_choice, check_positive, check_same_shape, check_type

__all__ = ["FeatureLoss", "feature_loss", "standardise_channels"]

FeatureKind = Literal["smooth_l1", "huber", "mse"]
FeatureNorm = Literal["none", "channel"]
LevelLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FEATURE_KINDS: tuple[str, ...] = ("smooth_l1", "huber", "mse")
FEATURE_NORMS: tuple[str, ...] = ("none", "channel")
_REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def standardise_channels(x: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    r"""Standardise each (sample, channel) map over space to zero mean and unit variance.

    :math:`(x - \mu) / \sqrt{\sigma^2 + \epsilon}` per map (biased variance): a
    parameter-free instance norm, which makes a feature loss blind to the scale and offset
    of each channel.

    Args:
        x: (B, C, *spatial) features.
        eps: added to the variance.

    Returns:
        A tensor of ``x``'s shape, zero mean and unit variance over ``*spatial``.

    Example:
        >>> y = standardise_channels(torch.arange(8.0).reshape(1, 2, 2, 2))
        >>> y.mean((2, 3)).abs().max().item() < 1e-6
        True
    """
    dims = tuple(range(2, x.ndim))
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


def feature_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    kind: FeatureKind = "smooth_l1",
    beta: float = 1.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
    feature_norm: FeatureNorm = "none",
) -> torch.Tensor:
    r"""Element-wise distance between two feature maps (paper eq. 15-16).

    With :math:`d = x - y`:

    * ``"smooth_l1"``: :math:`0.5 d^2 / \beta` if :math:`|d| < \beta`, else
      :math:`|d| - 0.5 \beta` (``F.smooth_l1_loss``; ``beta=0`` is L1).
    * ``"huber"``: :math:`0.5 d^2` if :math:`|d| < \beta`, else
      :math:`\beta (|d| - 0.5 \beta)`, eq. 16 as printed (``F.huber_loss``).
    * ``"mse"``: :math:`d^2` (the Euclidean loss of BS-UNet).

    With ``beta=1`` smooth-L1 and Huber coincide: that is the paper's SL1-Loss. Eq. 15 sums
    the terms (``reduction="sum"``); the default ``"mean"`` divides by the element count so
    that levels of different sizes are comparable. The teacher is not detached here.
    ``feature_norm="channel"`` first applies :func:`standardise_channels` to both maps
    (each sample and channel to zero mean and unit variance over space).

    Args:
        student: (B, C, H, W) features of the network being trained (any shape works).
        teacher: features of the same shape (cast to the student's dtype).
        kind: ``"smooth_l1"``, ``"huber"`` or ``"mse"``.
        beta: transition point: >= 0 for smooth-L1, > 0 for Huber; ignored by MSE.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (element-wise, student's shape).
        feature_norm: ``"none"`` or ``"channel"`` (standardise both maps first; needs a
            (B, C, *spatial) shape).

    Returns:
        A scalar, or the element-wise loss with ``reduction="none"``.

    Raises:
        ValueError: if the shapes differ or an option is out of range.
        TypeError: if an input is not a tensor.

    Example:
        >>> s, t = torch.zeros(1, 2, 4, 4), torch.full((1, 2, 4, 4), 3.0)
        >>> feature_loss(s, t).item()  # |d| - 0.5 = 2.5
        2.5
    """
    check_type("student", student, torch.Tensor)
    check_type("teacher", teacher, torch.Tensor)
    check_same_shape("student", student, "teacher", teacher)
    check_choice("kind", kind, FEATURE_KINDS)
    check_choice("reduction", reduction, _REDUCTIONS)
    check_positive("beta", beta, strict=kind == "huber")
    check_choice("feature_norm", feature_norm, FEATURE_NORMS)
    if teacher.dtype != student.dtype:
        teacher = teacher.to(student.dtype)
    if feature_norm == "channel":
        student, teacher = standardise_channels(student), standardise_channels(teacher)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(student, teacher, beta=beta, reduction=reduction)
    if kind == "huber":
        return F.huber_loss(student, teacher, delta=beta, reduction=reduction)
    return F.mse_loss(student, teacher, reduction=reduction)


class FeatureLoss(nn.Module):
    r"""Weighted sum of :func:`feature_loss` over one or several feature levels (eq. 16).

    ``forward(student, teacher)`` takes two tensors or two equally long sequences of
    tensors (one per level, e.g. X(1,0)..X(4,0)) and returns
    :math:`\sum_i w_i \, \mathrm{feature\_loss}(s_i, t_i)`; :meth:`terms` also returns the
    unweighted loss of each level. All feature-loss settings live here; the weight w2 of
    the whole term is :class:`~featsup.losses.TotalLoss`'s ``feature_weight``.

    Args:
        kind: ``"smooth_l1"``, ``"huber"``, ``"mse"``, or a callable
            ``kind(student, teacher) -> scalar`` computing one level's loss.
        beta: see :func:`feature_loss`; ``beta=1`` is the paper's SL1-Loss.
        weights: one non-negative weight per level; ``None`` averages the levels
            (1 / n each).
        reduction: ``"mean"`` or ``"sum"`` inside each level; ``"none"`` only for a
            single tensor pair.
        feature_norm: ``"none"``, or ``"channel"``: standardise each (B, C) map of both
            sides over space first (:func:`standardise_channels`), so that the loss
            ignores the teacher's feature scale and offset per channel.

    Raises:
        ValueError: on bad options, or at call time if the levels or shapes do not match.

    Example:
        >>> loss = FeatureLoss(weights=[1.0, 0.5])
        >>> s = [torch.zeros(1, 8, 16, 16), torch.zeros(1, 16, 8, 8)]
        >>> t = [torch.ones(1, 8, 16, 16), torch.ones(1, 16, 8, 8)]
        >>> loss(s, t).item()  # 1.0 * 0.5 + 0.5 * 0.5
        0.75
    """

    def __init__(
        self,
        *,
        kind: FeatureKind | LevelLoss = "smooth_l1",
        beta: float = 1.0,
        weights: Sequence[float] | None = None,
        reduction: Literal["mean", "sum", "none"] = "mean",
        feature_norm: FeatureNorm = "none",
    ) -> None:
        super().__init__()
        self.kind = kind if callable(kind) else check_choice("kind", kind, FEATURE_KINDS)
        self.beta = check_positive("beta", beta, strict=kind == "huber")
        self.reduction = check_choice("reduction", reduction, _REDUCTIONS)
        self.feature_norm = check_choice("feature_norm", feature_norm, FEATURE_NORMS)
        self.weights = None if weights is None else _check_weights("weights", weights)

    def level_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The unweighted loss of one level: :func:`feature_loss` or the ``kind`` callable."""
        if not callable(self.kind):
            return feature_loss(
                student, teacher, kind=self.kind, beta=self.beta,  # type: ignore[arg-type]
                reduction=self.reduction, feature_norm=self.feature_norm,  # type: ignore[arg-type]
            )  # fmt: skip
        if self.feature_norm == "channel":
            student, teacher = standardise_channels(student), standardise_channels(teacher)
        return self.kind(student, teacher)

    def level_weights(self, count: int) -> tuple[float, ...]:
        """The weight of each of ``count`` levels: ``weights``, or ``1 / count`` each.

        Raises:
            ValueError: if ``weights`` has another length.
        """
        weights = self.weights or (1.0 / count,) * count
        if len(weights) != count:
            raise ValueError(
                f"weights: expected one weight per level ({count}), got {len(weights)}; "
                f"fix: FeatureLoss(weights=[...]) with {count} values"
            )
        return weights

    def terms(
        self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The weighted sum over levels and the unweighted loss of each level.

        Args:
            student: one (B, C, H, W) map per level.
            teacher: the same number of maps, shaped like the student's.

        Returns:
            ``(total, parts)``: a scalar and one scalar per level.
        """
        students, teachers = _as_levels(student, teacher)
        if self.reduction == "none":
            raise ValueError(
                "reduction: expected 'mean' or 'sum' for several feature levels, got 'none'; "
                "fix: call feature_loss per level"
            )
        weights = self.level_weights(len(students))
        parts = [self.level_loss(s, t) for s, t in zip(students, teachers, strict=True)]
        if len(parts) == 1:
            return weights[0] * parts[0], parts
        return torch.stack([w * p for w, p in zip(weights, parts, strict=True)]).sum(), parts

    def forward(
        self,
        student: torch.Tensor | Sequence[torch.Tensor],
        teacher: torch.Tensor | Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Compute the (weighted) feature loss; see the class docstring."""
        if isinstance(student, torch.Tensor) and isinstance(teacher, torch.Tensor):
            weight = 1.0 if self.weights is None else _single_weight(self.weights)
            return weight * self.level_loss(student, teacher)
        return self.terms(student, teacher)[0]  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        """Options shown in ``repr``."""
        kind = getattr(self.kind, "__name__", self.kind)
        return (
            f"kind={kind!r}, beta={self.beta}, weights={self.weights}, "
            f"reduction={self.reduction!r}, feature_norm={self.feature_norm!r}"
        )


def _check_weights(name: str, weights: Sequence[float]) -> tuple[float, ...]:
    check_type(name, weights, (list, tuple))
    values = tuple(float(w) for w in weights)
    if not values:
        raise ValueError(f"{name}: expected at least one weight, got an empty sequence")
    for value in values:
        check_positive(name, value, strict=False)
    return values


def _single_weight(weights: tuple[float, ...]) -> float:
    if len(weights) != 1:
        raise ValueError(
            f"weights: expected one weight for a single feature map, got {len(weights)}"
        )
    return weights[0]


def _as_levels(
    student: torch.Tensor | Sequence[torch.Tensor], teacher: torch.Tensor | Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if isinstance(student, torch.Tensor) or isinstance(teacher, torch.Tensor):
        raise TypeError(
            "student and teacher: expected two tensors or two sequences of tensors, got a mix"
        )
    students, teachers = list(student), list(teacher)
    if len(students) != len(teachers) or not students:
        raise ValueError(
            f"student and teacher: expected the same non-zero number of levels, got "
            f"{len(students)} and {len(teachers)}"
        )
    return students, teachers
