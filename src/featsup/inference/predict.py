"""Volume prediction with any head of a UNet++.

:func:`predict_volume` runs a 2D model over the axial slices of a volume in batches and
returns class probabilities; :func:`select_head` prunes and prepares a model for one head.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from featsup._checks import check_ndim, check_positive
from featsup._wrappers import supervised_student, unwrap
from featsup.models.unetpp import UNetPlusPlus

__all__ = [
    "predict_volume",
    "resolve_device",
    "select_head",
    "stack_context",
]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def select_head(model: nn.Module, head: int | None, *, optimize: bool = True) -> nn.Module:
    """Return the network that computes ``head`` alone, in eval mode.

    For a featsup :class:`~featsup.models.UNetPlusPlus` this is ``model.pruned(head)``
    (optimised for inference when ``optimize``), which computes only the nodes the head
    needs; ``head=None`` means the deepest head. Any other model is returned as is and
    ``head`` picks an element when its output is a list.

    Raises:
        ValueError: if ``head`` is out of range for a UNet++.
    """
    student = supervised_student(model) or unwrap(model)  # a supervisor: with its student
    if isinstance(student, UNetPlusPlus):
        return student.pruned(head=head or student.depth, optimize=optimize).eval()
    return student.eval()


def stack_context(volume: np.ndarray, context: int) -> np.ndarray:
    """Stack each slice with ``context`` neighbours on each side as channels (2.5D).

    Indices are clamped at the ends of the volume, as in the slice datasets.

    Args:
        volume: (D, H, W) array.
        context: neighbours on each side (0 gives one channel).

    Returns:
        (D, 2 * context + 1, H, W) array.

    Example:
        >>> stack_context(np.arange(3)[:, None, None], 1)[:, :, 0, 0].tolist()
        [[0, 0, 1], [0, 1, 2], [1, 2, 2]]
    """
    if context < 0:
        raise ValueError(f"context: expected an int >= 0, got {context!r}")
    depth = volume.shape[0]
    offsets = np.arange(-context, context + 1)
    index = np.clip(np.arange(depth)[:, None] + offsets[None, :], 0, depth - 1)
    return volume[index]


def _logits_of(output: torch.Tensor | list[torch.Tensor] | tuple, head: int | None) -> torch.Tensor:
    if isinstance(output, (list, tuple)):
        return output[-1 if head is None else head - 1]
    return output


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits.float())
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits.float(), dim=1)


@torch.inference_mode()
def predict_volume(
    model: nn.Module,
    volume: np.ndarray | torch.Tensor,
    *,
    head: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = "auto",
    size: int | tuple[int, int] | None = None,
    tta: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Predict class probabilities of every axial slice of a volume.

    Args:
        model: a 2D segmentation model returning logits (B, C, H, W) or a list of them
            (deep supervision); a featsup UNet++ is pruned to ``head`` first.
        volume: (D, H, W) or (D, C, H, W) float slices, already preprocessed the way the
            model was trained (see :mod:`featsup.data.preprocess`).
        head: 1..4, the UNet++ head to use; None = the deepest.
        batch_size: slices per forward pass.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...
        size: if given, slices are resized (bilinear) to this size for the model and the
            probabilities resized back to (H, W).
        tta: also predict the left-right mirrored slices and average.
        transform: optional callable applied to each (B, C, H, W) batch on the device.
        progress: show a progress bar.

    Returns:
        (K, D, H, W) float32 probabilities summing to 1 over K (K = 2 for a one-logit
        model: background, foreground).

    Raises:
        ValueError: if ``volume`` is not 3D or 4D or ``batch_size`` < 1.

    Example:
        >>> net = UNetPlusPlus(1, 2, widths=(4, 8))
        >>> predict_volume(net, np.zeros((3, 20, 20), np.float32), device="cpu").shape
        (2, 3, 20, 20)
    """
    check_ndim("volume", volume, (3, 4), "(D, H, W) or (D, C, H, W)")
    check_positive("batch_size", batch_size)
    dev = resolve_device(device)
    net = select_head(model, head, optimize=dev.type == "cpu").to(dev)
    slices = torch.as_tensor(np.asarray(volume) if not torch.is_tensor(volume) else volume)
    slices = slices.float()[:, None] if slices.ndim == 3 else slices.float()
    out_hw = tuple(slices.shape[-2:])
    probs: list[torch.Tensor] = []
    starts = range(0, slices.shape[0], batch_size)
    for start in tqdm(starts, desc="slices", disable=not progress, leave=False):
        x = slices[start : start + batch_size].to(dev)
        if size is not None:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if transform is not None:
            x = transform(x)
        p = _probabilities(_logits_of(net(x), None if isinstance(net, UNetPlusPlus) else head))
        if tta:
            flipped = _logits_of(net(x.flip(-1)), None if isinstance(net, UNetPlusPlus) else head)
            p = 0.5 * (p + _probabilities(flipped).flip(-1))
        if size is not None:
            p = F.interpolate(p, size=out_hw, mode="bilinear", align_corners=False)
        probs.append(p.cpu())
    return torch.cat(probs).permute(1, 0, 2, 3).contiguous().numpy()
