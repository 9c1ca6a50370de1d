"""Volume prediction with any head of a UNet++, and the liver -> tumour cascade.

:func:`predict_volume` runs a 2D model over the axial slices of a volume in batches and
returns class probabilities. :class:`Cascade` chains the paper's two stages (sections
4.1.3 and 4.2.5): liver probabilities -> largest 3D connected component -> liver ROI crop
-> tumour model -> dense CRF (optional) -> labels {0, 1, 2} on the original grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from featsup._checks import check_ndim, check_positive
from featsup.models.unetpp import UNetPlusPlus

__all__ = [
    "Cascade",
    "CascadeResult",
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
    student = getattr(model, "student", model)  # a FeatureSupervisor predicts with its student
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


@dataclass
class CascadeResult:
    """What :class:`Cascade` returns for one volume; arrays are (D, H, W) on its grid."""

    labels: np.ndarray
    """uint8 labels: 0 background, 1 liver, 2 tumour."""
    liver_probability: np.ndarray
    """float32 liver probability (after the CRF when one is used)."""
    tumour_probability: np.ndarray
    """float32 tumour probability inside the liver ROI, 0 elsewhere."""
    roi: Any = None
    """The liver ROI (:class:`featsup.data.RoiCrop`), None when no liver was found."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each stage."""


class Cascade:
    """Liver model -> liver ROI -> tumour model -> CRF -> labels (paper 4.1.3, 4.2.5).

    The preprocessing must match training: the same HU window, CLAHE and normalisation
    as :func:`featsup.data.preprocess_volume`, the same slice sizes and 2.5D context, and
    for the tumour stage the same in-plane ROI margin with the image zeroed outside the
    (predicted) liver, as :class:`featsup.data.TumourSliceDataset` does with the truth.

    Args:
        liver_model: 2D model, liver (1) vs background (0) logits.
        tumour_model: 2D model, tumour (1) vs rest (0) logits on liver-ROI crops.
        liver_size: in-plane size the liver model was trained at (slices are resized).
        tumour_size: in-plane size of the tumour model's ROI crops.
        liver_head: UNet++ head of the liver model (None = deepest).
        tumour_head: UNet++ head of the tumour model (None = deepest).
        context: 2.5D neighbours on each side used by both models.
        roi_margin: in-plane margin (pixels) around the liver box, as in training.
        preprocess: keyword arguments of :func:`featsup.data.preprocess_volume`.
        liver_crf: None for no CRF on the liver stage, else keyword arguments of
            :func:`featsup.postprocess.dense_crf` (``{}`` for its defaults; the phantom-
            tuned ``CRF_PRESETS["liver"]`` differs from them), applied slice by slice.
        tumour_crf: the same for the tumour stage (liver vs tumour, inside the liver
            mask), for example ``CRF_PRESETS["tumour"]``.
        batch_size: slices per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        tta: average with left-right mirrored predictions.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> cascade = Cascade(UNetPlusPlus(1, 2, widths=(4, 8)), UNetPlusPlus(1, 2, widths=(4, 8)),
        ...                   liver_size=32, tumour_size=32, device="cpu")
        >>> cascade(np.zeros((4, 48, 48), np.int16)).labels.shape
        (4, 48, 48)
    """

    def __init__(
        self,
        liver_model: nn.Module,
        tumour_model: nn.Module,
        *,
        liver_size: int | tuple[int, int] | None = None,
        tumour_size: int | tuple[int, int] = 128,
        liver_head: int | None = None,
        tumour_head: int | None = None,
        context: int = 0,
        roi_margin: int = 8,
        preprocess: dict[str, Any] | None = None,
        liver_crf: dict[str, Any] | None = None,
        tumour_crf: dict[str, Any] | None = None,
        batch_size: int = 16,
        device: str | torch.device | None = "auto",
        tta: bool = False,
    ) -> None:
        check_positive("batch_size", batch_size)
        check_positive("roi_margin", roi_margin, strict=False)
        self.liver_model, self.tumour_model = liver_model, tumour_model
        self.liver_size = liver_size
        self.tumour_size = (
            (tumour_size, tumour_size) if isinstance(tumour_size, int) else tumour_size
        )
        self.liver_head, self.tumour_head = liver_head, tumour_head
        self.context, self.roi_margin = context, roi_margin
        self.preprocess = dict(preprocess or {})
        self.liver_crf, self.tumour_crf = liver_crf, tumour_crf
        self.predict_options: dict[str, Any] = {
            "batch_size": batch_size,
            "device": device,
            "tta": tta,
        }

    @staticmethod
    def _crf(
        probs: np.ndarray, image_u8: np.ndarray, mask: np.ndarray | None, options: dict[str, Any]
    ) -> np.ndarray:
        from featsup.postprocess import dense_crf

        return dense_crf(probs, image_u8, mask=mask, **{"mode": "2d", **options})

    def _liver(self, image: np.ndarray, image_u8: np.ndarray, t: dict[str, float]) -> np.ndarray:

        start = time.perf_counter()
        probs = predict_volume(
            self.liver_model, stack_context(image, self.context), head=self.liver_head,
            size=self.liver_size, **self.predict_options,
        )  # fmt: skip
        t["liver_model"] = time.perf_counter() - start
        if self.liver_crf is not None:
            start = time.perf_counter()
            probs = self._crf(probs, image_u8, None, self.liver_crf)
            t["liver_crf"] = time.perf_counter() - start
        return probs[1]

    def _tumour(
        self, image: np.ndarray, image_u8: np.ndarray, liver: np.ndarray, t: dict[str, float]
    ) -> tuple[np.ndarray, Any]:
        from featsup.data import apply_crop, find_roi, uncrop

        roi = find_roi(liver, margin=(0, self.roi_margin, self.roi_margin), size=self.tumour_size)
        stacked = stack_context(image, self.context)  # (D, C, H, W)
        inside = stack_context(liver, self.context)
        masked = np.where(inside, stacked, np.float32(0)).transpose(1, 0, 2, 3)
        crop = apply_crop(masked, roi).transpose(1, 0, 2, 3)  # (d, C, rows, cols)
        start = time.perf_counter()
        probs = predict_volume(
            self.tumour_model, crop, head=self.tumour_head, **self.predict_options
        )
        t["tumour_model"] = time.perf_counter() - start
        full = uncrop(probs, roi, mode="linear")  # (2, D, H, W), zero outside the box
        full[0][~liver] = 1.0
        full[1][~liver] = 0.0
        if self.tumour_crf is not None:
            start = time.perf_counter()
            full = self._crf(full, image_u8, liver, self.tumour_crf)
            t["tumour_crf"] = time.perf_counter() - start
        return full[1], roi

    def __call__(self, volume_hu: np.ndarray) -> CascadeResult:
        """Segment one CT volume.

        Args:
            volume_hu: (D, H, W) Hounsfield units in featsup's processing order.

        Returns:
            A :class:`CascadeResult`.

        Raises:
            ValueError: if ``volume_hu`` is not 3D.
        """
        from featsup.data import hu_window, largest_connected_component, preprocess_volume

        check_ndim("volume_hu", volume_hu, 3, "(D, H, W)")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        image = preprocess_volume(np.asarray(volume_hu), **self.preprocess)
        low, high = self.preprocess.get("window", (-100.0, 400.0))
        image_u8 = hu_window(np.asarray(volume_hu), low=low, high=high, output="uint8")
        timings["preprocess"] = time.perf_counter() - start
        liver_p = self._liver(image, image_u8, timings)
        liver = largest_connected_component(liver_p > 0.5)
        tumour_p = np.zeros_like(liver_p)
        roi = None
        if liver.any():
            tumour_p, roi = self._tumour(image, image_u8, liver, timings)
        labels = liver.astype(np.uint8)
        labels[(tumour_p > 0.5) & liver] = 2
        timings["total"] = time.perf_counter() - start
        return CascadeResult(
            labels, liver_p.astype(np.float32), tumour_p.astype(np.float32), roi, timings
        )
