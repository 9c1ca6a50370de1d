"""Transfer learning between models whose inputs differ in slices (paper 4.2.5, 2.5D).

Their outputs may differ in classes too (a three-class liver model starting a two-class
tumour model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from featsup._checks import check_positive

__all__ = ["transfer_weights"]


def transfer_weights(
    source: nn.Module,
    target: nn.Module,
    *,
    classes: Sequence[Sequence[int]] | None = None,
    extra_inputs: int = 0,
) -> nn.Module:
    """Copy ``source``'s weights into ``target``, a model that may read more input slices.

    Every tensor is copied as it is, except an input convolution of ``target`` that reads
    ``C = 2 * context + 1`` slices (2.5D) where ``source``'s reads one: there the kernel
    goes to the centre slice and the neighbours start at zero, so ``target`` starts out as
    ``source``'s function and learns what the neighbours add (the cascade's tumour model
    from its single-slice liver model).

    With ``classes``, ``target`` may also predict other classes than ``source``: every
    output layer (a tensor whose first dimension is ``source``'s number of classes there
    and ``len(classes)`` in ``target``) gets, for its class ``k``, the mean of
    ``source``'s rows ``classes[k]``. A three-class liver model (background, liver,
    tumour) starts a two-class tumour model with ``classes=[(0, 1), (2,)]``: its
    background the mean of the background and liver outputs, its tumour the tumour output.

    Args:
        source: the trained model.
        target: a model of the same architecture; its input convolution's channels may
            be an odd multiple of ``source``'s.
        classes: for each of ``target``'s classes, the ``source`` classes whose output
            weights it averages; None: the same classes.
        extra_inputs: input channels ``target`` reads after its slices (a derived map
            such as the cascade's darkness channel); their kernels start at zero.

    Returns:
        ``target``, with the copied weights.

    Raises:
        ValueError: if the state dicts differ in keys, or in shapes anywhere but an input
            convolution's channel dimension by an odd factor (or, with ``classes``, an
            output layer's classes); or if ``classes`` names no class or a missing one, or
            maps no layer (``source`` and ``target`` have the same classes); or if
            ``extra_inputs`` is asked for and no input convolution of ``target`` has them.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> liver = UNetPlusPlus(1, 2, widths=(4, 8))
        >>> tumour = transfer_weights(liver, UNetPlusPlus(3, 2, widths=(4, 8)).eval())
        >>> x = torch.randn(1, 1, 16, 16)
        >>> torch.allclose(tumour(x.repeat(1, 3, 1, 1))[-1], liver.eval()(x)[-1], atol=1e-5)
        True
        >>> three = UNetPlusPlus(1, 3, widths=(4, 8))
        >>> two = transfer_weights(three, UNetPlusPlus(1, 2, widths=(4, 8)), classes=[(0, 1), (2,)])
        >>> torch.equal(two.heads.x0_1.bias[1], three.heads.x0_1.bias[2])
        True
    """
    groups = _class_groups(classes)
    check_positive("extra_inputs", extra_inputs, strict=False)
    top = None if groups is None else max(max(g) for g in groups)
    have, want = source.state_dict(), target.state_dict()
    if have.keys() != want.keys():
        missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
        raise ValueError(
            f"source: expected target's parameters, got {len(missing)} missing (first: "
            f"{missing[:1]}) and {len(extra)} extra (first: {extra[:1]}); fix: build both "
            "with the same widths and depth"
        )
    copied = {}
    for name, value in have.items():
        shape = want[name].shape
        if value.shape == shape:
            copied[name] = value
            continue
        if groups is not None and value.shape[1:] == shape[1:] and shape[0] == len(groups):
            if top is not None and top >= value.shape[0]:
                raise ValueError(
                    f"classes: expected source classes below {value.shape[0]} ({name} has "
                    f"{value.shape[0]} outputs), got {[list(g) for g in groups]}"
                )
            copied[name] = torch.stack([value[list(g)].mean(0) for g in groups])
            continue
        slices = shape[1] - extra_inputs if value.ndim > 1 else 0
        ratio, rest = divmod(slices, value.shape[1]) if slices > 0 else (0, 1)
        if value.shape[:1] + value.shape[2:] != shape[:1] + shape[2:] or rest or ratio % 2 == 0:
            raise ValueError(
                f"{name}: expected {tuple(shape)} or its input channels over an odd number of "
                f"slices (+ {extra_inputs} extra), got {tuple(value.shape)}; fix: build "
                "target with 2 * context + 1 times source's input channels, plus extra_inputs"
            )
        grown = torch.zeros(shape, dtype=value.dtype)
        centre = ratio // 2 * value.shape[1]
        grown[:, centre : centre + value.shape[1]] = value
        copied[name] = grown
    if extra_inputs and all(copied[k].shape == have[k].shape for k in have):
        raise ValueError(
            f"extra_inputs: expected an input convolution of target with {extra_inputs} more "
            "channels than its slices, found none; fix: build target with them, or leave "
            "extra_inputs at 0"
        )
    if groups is not None and all(copied[k] is have[k] for k in have):
        raise ValueError(
            f"classes: expected an output layer whose classes differ ({len(groups)} in target), "
            "found none; fix: leave classes out for models of the same classes"
        )
    target.load_state_dict(copied)
    return target


def _class_groups(classes: Sequence[Sequence[int]] | None) -> list[tuple[int, ...]] | None:
    """``classes`` checked: one non-empty group of non-negative source classes per class."""
    if classes is None:
        return None
    groups = [tuple(int(c) for c in group) for group in classes]
    if not groups or any(not g or min(g) < 0 for g in groups):
        raise ValueError(
            "classes: expected one non-empty group of source classes (>= 0) per target class, "
            f"got {classes!r}"
        )
    return groups
