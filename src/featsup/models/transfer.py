"""Transfer learning between models whose inputs differ in slices (paper 4.2.5, 2.5D)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["transfer_weights"]


def transfer_weights(source: nn.Module, target: nn.Module) -> nn.Module:
    """Copy ``source``'s weights into ``target``, a model that may read more input slices.

    Every tensor is copied as it is, except an input convolution of ``target`` that reads
    ``C = 2 * context + 1`` slices (2.5D) where ``source``'s reads one: there the kernel
    goes to the centre slice and the neighbours start at zero, so ``target`` starts out as
    ``source``'s function and learns what the neighbours add (the cascade's tumour model
    from its single-slice liver model).

    Args:
        source: the trained model.
        target: a model of the same architecture; its input convolution's channels may
            be an odd multiple of ``source``'s.

    Returns:
        ``target``, with the copied weights.

    Raises:
        ValueError: if the state dicts differ in keys, or in shapes anywhere but an input
            convolution's channel dimension by an odd factor.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> liver = UNetPlusPlus(1, 2, widths=(4, 8))
        >>> tumour = transfer_weights(liver, UNetPlusPlus(3, 2, widths=(4, 8)).eval())
        >>> x = torch.randn(1, 1, 16, 16)
        >>> torch.allclose(tumour(x.repeat(1, 3, 1, 1))[-1], liver.eval()(x)[-1], atol=1e-5)
        True
    """
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
        ratio, rest = divmod(shape[1], value.shape[1]) if value.ndim > 1 else (0, 1)
        if value.shape[:1] + value.shape[2:] != shape[:1] + shape[2:] or rest or ratio % 2 == 0:
            raise ValueError(
                f"{name}: expected {tuple(shape)} or its input channels over an odd number of "
                f"slices, got {tuple(value.shape)}; fix: build target with 2 * context + 1 "
                "times source's input channels"
            )
        grown = torch.zeros(shape, dtype=value.dtype)
        centre = ratio // 2 * value.shape[1]
        grown[:, centre : centre + value.shape[1]] = value
        copied[name] = grown
    target.load_state_dict(copied)
    return target
