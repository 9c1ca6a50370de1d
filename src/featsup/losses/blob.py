"""Blob Dice: one Dice term per lesion, so that a small lesion weighs as much as a big one.

The soft Dice of :func:`~featsup.losses.dice_loss` is one ratio per sample and class: a
slice holding a 2000-pixel lesion and a 20-pixel one loses almost nothing when it misses
the small one. The blob loss (Kofler et al., "blob loss: instance imbalance aware loss
functions for semantic segmentation", IPMI 2023) splits the target of each foreground
class into its connected components and gives each its own Dice, computed over that
component and every pixel that belongs to no other component of the class (the other
lesions are masked out, so a prediction on them is neither rewarded nor punished); the
terms are averaged over the lesions. Add it to a Dice + CE loss with
:func:`~featsup.losses.seg_loss`'s ``blob_weight``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from featsup._checks import check_choice, check_positive
from featsup.losses._utils import (
    REDUCTIONS,
    Activation,
    Reduction,
    check_logits,
    one_hot_target,
    probabilities,
    reduce,
    resolve_activation,
)

__all__ = ["BlobDiceLoss", "blob_dice_loss", "label_components"]


def label_components(mask: torch.Tensor, *, connectivity: int | None = None) -> torch.Tensor:
    """Number the connected components of each sample of a boolean mask.

    Labelled with :func:`scipy.ndimage.label` on the CPU (one host copy of the mask), each
    sample on its own, so components never span samples.

    Args:
        mask: (B, *spatial) boolean (or 0/1) tensor, 1 to 3 spatial axes.
        connectivity: neighbours that join two pixels: 1 (faces only) up to the number of
            spatial axes (faces, edges and corners: 8 in 2D, 26 in 3D; the default).

    Returns:
        (B, *spatial) int64 tensor on the mask's device: 0 off the mask, 1..K_b on the
        K_b components of sample b.

    Raises:
        ValueError: if ``connectivity`` is not in [1, number of spatial axes].

    Example:
        >>> mask = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 0]]]).bool()
        >>> label_components(mask)[0].tolist()
        [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
        >>> label_components(mask, connectivity=1).amax().item()
        2
    """
    spatial = mask.ndim - 1
    if not 1 <= spatial <= 3:
        raise ValueError(f"mask: expected (B, *spatial) with 1-3 spatial axes, got {mask.ndim}D")
    connectivity = spatial if connectivity is None else int(connectivity)
    if not 1 <= connectivity <= spatial:
        raise ValueError(
            f"connectivity: expected an integer in [1, {spatial}] for {spatial} spatial axes, "
            f"got {connectivity}"
        )
    structure = ndimage.generate_binary_structure(spatial, connectivity)
    host = mask.detach().to("cpu", torch.bool).numpy()
    out = np.zeros(host.shape, dtype=np.int64)
    for b in range(host.shape[0]):
        if host[b].any():
            out[b] = ndimage.label(host[b], structure=structure)[0]
    return torch.from_numpy(out).to(mask.device)


def blob_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: Activation = "auto",
    smooth: float = 1e-5,
    connectivity: int | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Blob Dice loss: the mean over lesions of one soft Dice loss per lesion.

    For each foreground class ``c`` (every channel but 0 under softmax; every channel
    under sigmoid) and each connected component ``k`` of ``target == c`` in a sample, with
    ``P`` the class's probability map, ``G_k`` the component and ``R_k`` the pixels outside
    every other component of the class:
    :math:`1 - (2 \sum_{G_k} P + s) / (\sum_{R_k} P + |G_k| + s)`. A lesion missed
    outright costs about 1 whatever its size; false positives away from every lesion
    raise each lesion's term of their sample.

    Args:
        logits: (B, C, H, W) or (B, C, D, H, W) raw scores.
        target: integer label map (B, *spatial) (also (B, 1, *spatial) when C > 1), or
            one-hot (B, C, *spatial); a soft target's lesions are its pixels above 0.5.
        activation: ``"softmax"``, ``"sigmoid"`` or ``"auto"`` (sigmoid when C == 1).
        smooth: s >= 0, added to numerator and denominator.
        connectivity: see :func:`label_components` (default: faces, edges and corners).
        reduction: ``"mean"`` or ``"sum"`` over the lesions, or ``"none"``: one value per
            lesion, shape (L,), ordered by class, then sample, then component number.

    Returns:
        A scalar (0, with gradient 0, when the batch holds no lesion), or the (L,) terms.

    Raises:
        ValueError: on bad shapes, labels or option values.
        TypeError: if ``logits`` or ``target`` is not a tensor of a usable dtype.

    Example:
        >>> logits = torch.zeros(1, 2, 1, 6)  # (B, C, H, W)
        >>> logits[0, 1, 0] = torch.tensor([9.0, 9, 9, 9, -9, -9])  # finds the big lesion only
        >>> target = torch.tensor([[[1, 1, 1, 1, 0, 1]]])
        >>> [round(v, 3) for v in blob_dice_loss(logits, target, reduction="none").tolist()]
        [0.0, 1.0]
        >>> round(blob_dice_loss(logits, target).item(), 3)
        0.5
    """
    check_logits(logits)
    act = resolve_activation(activation, logits.shape[1])
    check_positive("smooth", smooth, strict=False)
    check_choice("reduction", reduction, REDUCTIONS)
    masks = one_hot_target(target, logits) > 0.5  # (B, C, *spatial); checks shapes, labels
    prob = probabilities(logits.float(), act)
    first = 1 if act == "softmax" else 0  # softmax: channel 0 is the background
    terms = [
        _lesion_terms(prob[:, c], label_components(masks[:, c], connectivity=connectivity),
                      float(smooth))
        for c in range(first, logits.shape[1])
    ]  # fmt: skip
    values = torch.cat(terms) if terms else prob.new_zeros(0)
    if reduction == "none":
        return values
    if values.numel() == 0:
        return prob.sum() * 0.0  # float32 like the terms, and connected to the graph
    return reduce(values, reduction)


def _lesion_terms(prob: torch.Tensor, components: torch.Tensor, smooth: float) -> torch.Tensor:
    """One Dice loss per component: prob (B, *spatial), components (B, *spatial) int64."""
    batch = prob.shape[0]
    count = int(components.amax().item()) + 1 if components.numel() else 1
    if count == 1:
        return prob.new_zeros(0)
    ids = (components + count * torch.arange(batch, device=prob.device).view(-1, *[1] * (
        components.ndim - 1))).flatten()  # fmt: skip
    sums = prob.new_zeros(batch * count).index_add_(0, ids, prob.flatten()).view(batch, count)
    sizes = torch.bincount(ids, minlength=batch * count).view(batch, count).to(prob.dtype)
    inside, outside, size = sums[:, 1:], sums[:, :1], sizes[:, 1:]
    present = size > 0
    ratio = (2 * inside + smooth) / (outside + inside + size + smooth)
    return (1 - ratio)[present]


class BlobDiceLoss(nn.Module):
    """Module form of :func:`blob_dice_loss`; options are checked here.

    Example:
        >>> loss = BlobDiceLoss()
        >>> loss(torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        activation: Activation = "auto",
        smooth: float = 1e-5,
        connectivity: int | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        resolve_activation(activation, 2)
        self.options = {
            "activation": activation,
            "smooth": check_positive("smooth", smooth, strict=False),
            "connectivity": connectivity,
            "reduction": check_choice("reduction", reduction, REDUCTIONS),
        }

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss; see :func:`blob_dice_loss` for shapes."""
        return blob_dice_loss(logits, target, **self.options)

    def extra_repr(self) -> str:
        """Options shown in ``repr``."""
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
