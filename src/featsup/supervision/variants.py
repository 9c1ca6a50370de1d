"""The paper's six training variants (section 4.3) and a Trainer step for any of them.

A variant is ``"{UN|BS|ES}-{NS|DS}"``: plain UNet++ (UN), bottleneck feature supervision
(BS) or encoding feature supervision at every encoder level (ES), each with normal (NS,
the X0,4 head alone) or deep supervision (DS, every head, eq. 14).

Example:
    >>> from featsup.models import UNetPlusPlus
    >>> teacher = UNetPlusPlus(2, 2, widths=(4, 8, 16), skip_connections=False)
    >>> model = build_variant("ES-DS", in_channels=1, num_classes=2, widths=(4, 8, 16),
    ...                       teacher=teacher)
    >>> batch = {"image": torch.randn(2, 1, 32, 32), "target": torch.randint(0, 2, (2, 32, 32))}
    >>> loss, logs = segmentation_step()(model, batch)
    >>> sorted(logs)
    ['feature', 'seg']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from featsup._checks import check_choice
from featsup._wrappers import supervised_student
from featsup.losses import DeepSupervisionLoss, SegLoss, TotalLoss
from featsup.models.unetpp import UNetPlusPlus
from featsup.supervision.supervisor import FeatureSupervisor

__all__ = ["VARIANTS", "build_variant", "parse_variant", "segmentation_step"]

VARIANTS = ("UN-NS", "UN-DS", "BS-NS", "BS-DS", "ES-NS", "ES-DS")
Supervision = Literal["UN", "BS", "ES"]


def parse_variant(variant: str) -> tuple[Supervision, bool]:
    """``"ES-DS"`` -> ``("ES", True)``: the feature supervision and deep supervision.

    Raises:
        ValueError: for an unknown variant (with the closest valid one).
    """
    check_choice("variant", variant.upper(), VARIANTS)
    supervision, heads = variant.upper().split("-")
    return supervision, heads == "DS"  # type: ignore[return-value]


def build_variant(
    variant: str,
    *,
    in_channels: int,
    num_classes: int,
    widths: Sequence[int] = (32, 64, 128, 256, 512),
    teacher: nn.Module | None = None,
    student: UNetPlusPlus | None = None,
    **supervisor_options: Any,
) -> nn.Module:
    """Build the network of a variant: a UNet++, or a FeatureSupervisor around one.

    The feature-loss weight w2 of eq. 17 is not part of the network: it is
    ``segmentation_step(feature_weight=...)``.

    Args:
        variant: one of :data:`VARIANTS`.
        in_channels: image channels of the student.
        num_classes: classes (logits) of each head.
        widths: UNet++ channels per depth.
        teacher: the trained encoding UNet++ (needed for BS and ES).
        student: an existing UNet++ to use (e.g. initialised from another task for
            transfer learning); its deep-supervision flag is set from the variant.
        **supervisor_options: further keyword arguments of :class:`FeatureSupervisor`
            (for example ``loss=FeatureLoss(beta=0.5)``), for BS and ES.

    Returns:
        ``UNetPlusPlus`` for UN variants, else a :class:`FeatureSupervisor`.

    Raises:
        ValueError: for an unknown variant or a BS/ES variant without ``teacher``.
    """
    supervision, deep = parse_variant(variant)
    if student is None:
        student = UNetPlusPlus(in_channels, num_classes, widths=widths, deep_supervision=deep)
    student.deep_supervision = deep
    if supervision == "UN":
        return student
    if teacher is None:
        raise ValueError(f"teacher: expected a trained encoding UNet++ for {variant}, got None")
    levels = "bottleneck" if supervision == "BS" else "all"
    return FeatureSupervisor(student, teacher, levels=levels, **supervisor_options)


def segmentation_step(
    loss: Callable[..., torch.Tensor] | None = None,
    *,
    feature_weight: float = 1.0,
) -> Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Return a :class:`~featsup.training.Trainer` step for any variant's network.

    The loss is eq. 17, :class:`~featsup.losses.TotalLoss`: the (deep-supervision)
    Seg-Loss of the heads plus, for a :class:`FeatureSupervisor` (also inside DDP or
    :func:`torch.compile`), w2 times its feature loss. Logged (weighted): ``seg``,
    ``feature``.

    Args:
        loss: segmentation loss of one head or the list of heads; default
            ``DeepSupervisionLoss(SegLoss())`` (Dice + CE, heads averaged).
        feature_weight: w2 of eq. 17, ``TotalLoss(feature_weight=)``.

    Returns:
        ``step(model, batch) -> (loss, logs)`` for batches ``{"image", "target"}``.
    """
    total = TotalLoss(seg=loss or DeepSupervisionLoss(SegLoss()), feature_weight=feature_weight)

    def step(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target = batch["image"], batch["target"]
        if supervised_student(model) is not None:
            out = model(image, target)
            parts = total.terms(out.output, target, feature=out.feature_loss)
            return parts["total"], {
                "seg": parts["seg"].detach(),
                "feature": parts["feature"].detach(),
            }
        parts = total.terms(model(image), target)
        return parts["total"], {"seg": parts["seg"].detach()}

    return step
