"""The liver -> tumour cascade (paper sections 4.1.3 and 4.2.5).

:class:`Cascade` chains the two stages: liver probabilities -> largest 3D connected
component -> liver ROI crop -> tumour model -> dense CRF (optional) -> labels {0, 1, 2}
on the original grid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from featsup._checks import check_ndim, check_positive
from featsup.inference.predict import predict_volume, stack_context

if TYPE_CHECKING:
    from featsup.inference.heads import HeadChoice

__all__ = ["Cascade", "CascadeResult"]


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

    # -- saving, loading and head choice (featsup.inference.bundle / .heads) --------------

    training_summary: dict[str, Any] | None = None
    """Short summary of how the models were trained, kept by :meth:`save` / :meth:`load`."""

    def save(self, path: str | os.PathLike[str], *, training: dict[str, Any] | None = None) -> Path:
        """Write the cascade to one file; see :func:`featsup.inference.save_cascade`."""
        from featsup.inference.bundle import save_cascade

        return save_cascade(self, path, training=training)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, device: str | torch.device | None = "auto",
        check_version: bool = True,
    ) -> Cascade:  # fmt: skip
        """Rebuild a saved cascade; see :func:`featsup.inference.load_cascade`."""
        from featsup.inference.bundle import load_cascade

        return load_cascade(path, device=device, check_version=check_version)

    def choose_heads(self, cases: Sequence[Any], *, tolerance: float = 0.005) -> HeadChoice:
        """Pick each stage's head on validation cases; see :func:`featsup.inference.choose_heads`.

        The returned :class:`~featsup.inference.HeadChoice` holds the table and, as
        ``cascade``, a copy of this cascade that uses the chosen heads.
        """
        from featsup.inference.heads import choose_heads

        return choose_heads(self, cases, tolerance=tolerance)
