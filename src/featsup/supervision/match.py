"""An encoding teacher shaped after its student: same reductions, and by default same widths.

The teacher is featsup's encoding UNet++ (``skip_connections=False``), whose level X(i,0)
has reduction ``2**i``: a depth-``d`` teacher offers reductions 2..2**d. The student's
levels are measured once (:func:`~featsup.supervision.levels.encoder_levels`); the teacher gets the
depth of the student's deepest reduction, so that ``FeatureSupervisor(student, teacher)``
pairs every student level, and by default the student's channels at each reduction, so
that no adapter is needed. A 3D student gets a 3D teacher, with the student's per-axis
pooling where it pools anisotropically (reductions such as (1, 2, 2), then (2, 4, 4)).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from featsup.models.unetpp import UNetPlusPlus
from featsup.supervision.levels import EncoderLevel, encoder_levels
from featsup.supervision.teacher import train_encoding_teacher

__all__ = ["matching_pooling", "matching_teacher", "matching_widths"]

_log = logging.getLogger(__name__)


def _depth_of(level: EncoderLevel) -> int | None:
    """``log2`` of the largest per-axis reduction, if all are powers of two, else None.

    2D levels must be isotropic (featsup's 2D UNet++ pools by 2 along both axes); 3D
    levels may be anisotropic, such as (1, 2, 2).
    """
    r = level.reduction
    if max(r) < 2 or any(a < 1 or a & (a - 1) for a in r):
        return None
    if len(r) == 2 and len(set(r)) != 1:
        return None
    return int(math.log2(max(r)))


def matching_pooling(levels: Sequence[EncoderLevel]) -> list[list[int]] | None:
    """3D teacher pooling (per level, along D, H, W) that gives the student's reductions.

    None (2 along every axis) where every level is isotropic; else the ratio of the
    reductions of consecutive depths, which needs a student level at every depth.

    Raises:
        ValueError: if an anisotropic student lacks a depth, or two consecutive depths
            differ by other than 1 or 2 along an axis.

    Example:
        >>> lv = [EncoderLevel("a", "a", channels=4, reduction=(1, 2, 2)),
        ...       EncoderLevel("b", "b", channels=8, reduction=(2, 4, 4))]
        >>> matching_pooling(lv)
        [[1, 2, 2], [2, 2, 2]]
    """
    by_depth = {d: lv.reduction for lv in levels if (d := _depth_of(lv)) is not None}
    if all(len(set(r)) == 1 for r in by_depth.values()):
        return None
    pooling, previous = [], (1,) * len(next(iter(by_depth.values())))
    for depth in range(1, max(by_depth) + 1):
        current = by_depth.get(depth)
        if current is None or any(
            c not in (p, 2 * p) for c, p in zip(current, previous, strict=True)
        ):
            found = {d: by_depth[d] for d in sorted(by_depth)}
            raise ValueError(
                f"student: expected a level at every depth, each pooling by 1 or 2 per axis, "
                f"got reductions by depth {found}; fix: train_encoding_teacher(pooling=...)"
            )
        pooling.append([c // p for c, p in zip(current, previous, strict=True)])
        previous = current
    return pooling


def matching_widths(levels: Sequence[EncoderLevel]) -> tuple[int, ...]:
    """Teacher widths (depth 0..d) with the channels of the student's level at each reduction.

    ``d`` is the depth of the deepest power-of-two reduction (the largest per axis in
    3D); where the student has no
    level (full resolution, or ``mit`` encoders' missing 1/2), the nearest deeper level's
    channels are used. Where a student has several levels of one reduction, the deepest
    counts, as in the pairing.

    Raises:
        ValueError: if no level has a power-of-two reduction >= 2 (isotropic in 2D).

    Example:
        >>> lv = [EncoderLevel("a", "a", channels=8, reduction=(4, 4)),
        ...       EncoderLevel("b", "b", channels=16, reduction=(8, 8))]
        >>> matching_widths(lv)
        (8, 8, 8, 16)
    """
    by_depth = {d: lv.channels for lv in levels if (d := _depth_of(lv)) is not None}
    if not by_depth:
        found = [lv.reduction for lv in levels]
        raise ValueError(
            f"student: expected levels whose reduction is a power of two >= 2 (equal along "
            f"both axes in 2D), got {found}; fix: build a teacher yourself, pair by hand"
        )
    return tuple(by_depth[min(d for d in by_depth if d >= i)] for i in range(max(by_depth) + 1))


def matching_teacher(
    student: nn.Module,
    labels: Any,
    *,
    num_classes: int,
    widths: Sequence[int] | None = None,
    student_layers: Sequence[str] | None = None,
    probe_size: int | Sequence[int] = 64,
    probe_channels: int | None = None,
    **recipe: Any,
) -> UNetPlusPlus:
    """Build and train an encoding UNet++ whose levels have the student's reductions.

    The student's levels are measured by one probe pass; the teacher's depth is that of
    the student's deepest reduction (2..32 for an smp ResNet: depth 5, six widths), its
    widths those of the student (:func:`matching_widths`) unless given. It is trained on
    the label maps with the encoding-teacher recipe
    (:func:`~featsup.supervision.train_encoding_teacher`) and returned in eval mode,
    ready for ``FeatureSupervisor(student, teacher)``, which then pairs every student
    level of a power-of-two reduction. A 3D student gets a 3D teacher trained on label
    volumes (N, D, H, W), with its pooling (:func:`matching_pooling`).

    Args:
        student: the network to supervise (recognised, or with ``student_layers``).
        labels: (N, H, W) integer label maps, (N, D, H, W) label volumes for a 3D
            student, or a dataset of them or of ``(image, target, ...)`` items, as for
            ``train_encoding_teacher``.
        num_classes: classes of the label maps.
        widths: teacher channels for depth 0..d (``d + 1`` values); default the
            student's channels, so that no adapter is needed. Smaller widths train a
            cheaper teacher; 1x1 adapters then make up the channels.
        student_layers: module names to use as the student's levels.
        probe_size: spatial size of the probe: an int (each spatial dim) or a tuple.
        probe_channels: the student's input channels, if they cannot be inferred.
        **recipe: the other options of
            :func:`~featsup.supervision.train_encoding_teacher` (``steps``, ``lr``,
            ``val_labels``, ``crop``, ``amp``, ``device``, ``path``, ``seed`` ...), with
            its defaults; ``spatial_dims`` and ``pooling`` come from the student.

    Returns:
        The trained :class:`~featsup.models.UNetPlusPlus`, in eval mode.

    Raises:
        ValueError: for a student without power-of-two reductions, labels whose rank
            does not fit the student's spatial dims, or ``widths`` of the wrong length.

    Example:
        >>> import torch
        >>> from featsup.models import UNetPlusPlus
        >>> student = UNetPlusPlus(1, 2, widths=(4, 8, 16))
        >>> labels = torch.zeros(4, 16, 16, dtype=torch.long)
        >>> labels[:, 4:12, 4:12] = 1
        >>> teacher = matching_teacher(student, labels, num_classes=2, steps=100, lr=1e-2,
        ...                            dice_threshold=0.9, progress=False, probe_size=16)
        >>> teacher.widths, teacher.skip_connections
        ((8, 8, 16), False)
    """
    levels = encoder_levels(
        student, layers=student_layers, probe_size=probe_size, in_channels=probe_channels
    )
    spatial_dims = len(levels[0].reduction)
    pooling = matching_pooling(levels) if spatial_dims == 3 else None
    matched = matching_widths(levels)
    if widths is None:
        widths = matched
    elif len(widths) != len(matched):
        reductions = [2**i for i in range(len(matched))]
        raise ValueError(
            f"widths: expected {len(matched)} widths (depth 0..{len(matched) - 1}, reductions "
            f"{reductions}) for the student's levels, got {len(widths)}; fix: widths=None "
            f"for the student's {matched}"
        )
    _log.info("matching teacher: widths %s for student levels %s", tuple(widths),
              [(lv.name, lv.channels, lv.reduction) for lv in levels])  # fmt: skip
    for name in ("spatial_dims", "pooling"):
        if name in recipe:
            raise TypeError(f"{name}: set by the student's levels; fix: leave it out")
    return train_encoding_teacher(
        labels, num_classes=num_classes, widths=tuple(widths), spatial_dims=spatial_dims,  # type: ignore[arg-type]
        pooling=pooling, **recipe,
    )  # fmt: skip
