"""The paper's six training variants (section 4.3), a Trainer step and a Trainer for them.

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
from featsup._wrappers import supervised_student, unwrap
from featsup.losses import DeepSupervisionLoss, SegLoss, TotalLoss
from featsup.models.unetpp import UNetPlusPlus
from featsup.supervision.supervisor import FeatureSupervisor
from featsup.training.trainer import Trainer
from featsup.training.validation import dice_per_head

__all__ = ["VARIANTS", "build_variant", "parse_variant", "segmentation_step", "variant_trainer"]

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
        ``step(model, batch) -> (loss, logs)`` for batches ``{"image", "target"}``, and
        an optional ``"weight"`` (B, *spatial) pixel-weight map for the Dice term (as
        ``LiverSliceDataset(lesion_weight=)`` serves).
    """
    total = TotalLoss(seg=loss or DeepSupervisionLoss(SegLoss()), feature_weight=feature_weight)

    def step(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target, weight = batch["image"], batch["target"], batch.get("weight")
        if supervised_student(model) is not None:
            out = model(image, target)
            parts = total.terms(out.output, target, feature=out.feature_loss, weight=weight)
            return parts["total"], {
                "seg": parts["seg"].detach(),
                "feature": parts["feature"].detach(),
            }
        parts = total.terms(model(image), target, weight=weight)
        return parts["total"], {"seg": parts["seg"].detach()}

    return step


def variant_trainer(
    model: nn.Module,
    train_data: Any,
    val_data: Any = None,
    *,
    num_classes: int,
    loss: Callable[..., torch.Tensor] | None = None,
    feature_weight: float = 1.0,
    **trainer_options: Any,
) -> Trainer:
    """A :class:`~featsup.training.Trainer` for a network of :func:`build_variant`.

    What follows from the variant is filled in: the step (:func:`segmentation_step`,
    eq. 17), the validation Dice of every head (``val/dice_x0_k``), the best checkpoint
    by the deepest head's, whole batches only, and, for NS (one head trains),
    ``find_unused_parameters`` for DDP. ``trainer_options`` may override any of them.

    Args:
        model: a UNet++ or a FeatureSupervisor around one (or any model of one head).
        train_data: dataset of ``{"image", "target"}`` items.
        val_data: validation dataset, or None.
        num_classes: classes of the targets, for the validation Dice.
        loss: segmentation loss, as for :func:`segmentation_step`.
        feature_weight: w2 of eq. 17.
        **trainer_options: the Trainer's other options (``max_steps``, ``lr``, ...).

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> data = [{"image": torch.randn(1, 16, 16), "target": torch.zeros(16, 16).long()}] * 4
        >>> model = build_variant("UN-NS", in_channels=1, num_classes=2, widths=(4, 8, 16))
        >>> trainer = variant_trainer(model, data, data, num_classes=2, max_steps=2,
        ...                           batch_size=2, progress=False)
        >>> trainer.find_unused_parameters, sorted(trainer.fit()[-1])[-2:]
        (True, ['val/dice_x0_1', 'val/dice_x0_2'])
    """
    student = supervised_student(model) or unwrap(model)
    deep = bool(getattr(student, "deep_supervision", True))
    options: dict[str, Any] = {"drop_last": True, "find_unused_parameters": not deep}
    if val_data is not None:
        options["val_fn"] = lambda m, loader: dice_per_head(m, loader, num_classes=num_classes)
        options["keep_best_by"] = f"val/dice_x0_{getattr(student, 'depth', 1)}"
    return Trainer(
        model, segmentation_step(loss, feature_weight=feature_weight), train_data,
        val_data=val_data, **{**options, **trainer_options},
    )  # fmt: skip
