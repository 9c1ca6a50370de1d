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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from featsup._checks import (
    check_choice,
    check_in_range,
    check_ndim,
    check_positive,
    check_type,
)
from featsup.data.preprocess import (
    Preprocessing,
    hu_window,
    largest_connected_component,
    preprocess_window,
)
from featsup.inference._tumour_input import check_tumour_patch, masked_crop, predict_box
from featsup.inference.predict import (
    PreparedModel,
    model_preprocessing,
    predict_volume,
    prepare_model,
)
from featsup.postprocess.components import label_tumours

if TYPE_CHECKING:
    from featsup.inference.heads import HeadChoice

__all__ = ["Cascade", "CascadeResult", "LiverStage"]


@dataclass
class CascadeResult:
    """What :class:`Cascade` returns for one volume; arrays are (D, H, W) on its grid."""

    labels: np.ndarray
    """uint8 labels: 0 background, 1 liver, 2 tumour."""
    liver_probability: np.ndarray
    """float32 liver probability (after the CRF when one is used)."""
    tumour_probability: np.ndarray
    """float32 tumour probability inside the liver ROI, 0 elsewhere."""
    liver_mask: np.ndarray
    """bool liver mask of the liver stage; with ``tumour_scope="roi"`` the liver label
    (``labels > 0``) can reach past it, where a tumour it touches does."""
    roi: Any = None
    """The liver ROI (:class:`featsup.data.RoiCrop`), None when no liver was found."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each stage."""


@dataclass
class LiverStage:
    """What :meth:`Cascade.liver_stage` returns; arrays are (D, H, W) on the volume's grid."""

    image: np.ndarray
    """float32 tumour-model input (the cascade's ``tumour_preprocessing``; the liver
    model's too when both stages share one preprocessing)."""
    image_u8: np.ndarray
    """uint8 HU window (the CRF's image)."""
    probability: np.ndarray
    """float32 liver probability (after the CRF when one is used)."""
    mask: np.ndarray
    """bool largest 3D connected component of ``probability > 0.5``."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each step so far."""
    seconds: float = 0.0
    """Seconds of the whole liver stage."""


class Cascade:
    """Liver model -> liver ROI -> tumour model -> CRF -> labels (paper 4.1.3, 4.2.5).

    The preprocessing must match training: pass the training datasets' ``.preprocessing``
    (or ``Preprocessing.from_dict`` of a checkpoint's; each stage may have its own), the
    same slice sizes and 2.5D context, and for the tumour stage the same in-plane ROI
    margin with the image zeroed outside the (predicted) liver, as
    :class:`featsup.data.TumourSliceDataset` does with the truth (or not zeroed, with
    ``tumour_scope="roi"`` and ``mask_outside=False``).

    Each model is pruned to its head, optimised and moved to the device once, on first
    use, and kept per head (:meth:`prepared`): later changes to the models' weights are
    not seen, make a new cascade then. :meth:`liver_stage` and :meth:`tumour_stage` run
    the two halves, with another head when asked, to score heads without re-preparing.

    Args:
        liver_model: 2D model, liver (1) vs background (0) logits.
        tumour_model: 2D model, tumour (1) vs rest (0) logits on liver-ROI crops, or a
            3D one on liver-ROI patches (with ``tumour_patch``).
        liver_size: in-plane size the liver model was trained at (slices are resized).
        tumour_size: in-plane size of the 2D tumour model's ROI crops.
        liver_head: UNet++ head of the liver model (None = deepest).
        tumour_head: UNet++ head of the tumour model (None = deepest).
        context: 2.5D neighbours on each side of the liver model's input (and the tumour
            model's, unless ``tumour_context`` is given).
        tumour_context: 2.5D neighbours on each side of the 2D tumour model's input;
            None takes ``context``.
        roi_margin: in-plane margin (pixels) around the liver box, as in training.
        preprocessing: the :class:`~featsup.data.Preprocessing` the liver model was
            trained with (and the tumour model, unless ``tumour_preprocessing`` is given);
            None takes the one its checkpoint recorded (models rebuilt by
            :func:`featsup.training.load_model`), else the tumour model's, else the
            defaults (the paper's).
        tumour_preprocessing: the tumour model's; None takes ``preprocessing`` when given,
            else the one the tumour model's checkpoint recorded, else the liver stage's.
            Both stages read one HU window (the CRF's image); CLAHE and normalisation
            may differ.
        liver_crf: None for no CRF on the liver stage, else keyword arguments of
            :func:`featsup.postprocess.dense_crf` (``{}`` for its defaults; the phantom-
            tuned ``CRF_PRESETS["liver"]`` differs from them), applied slice by slice.
        tumour_crf: the same for the tumour stage (liver vs tumour, inside the liver
            mask), for example ``CRF_PRESETS["tumour"]``.
        batch_size: slices per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        tta: average with left-right mirrored predictions.
        tumour_patch: None for a 2D tumour model; for a 3D one, the (D, H, W) patch it
            was trained on: the masked liver-ROI box is predicted at the volume's own
            resolution (``tumour_size`` unused, no 2.5D context) with Gaussian-blended
            windows of this size (:func:`~featsup.inference.predict_patches`,
            ``batch_size`` windows per pass) and put back in place.
        tumour_overlap: with ``tumour_patch``, share of a window its neighbours overlap.
        tumour_min_voxels: tumour components (26-connected, in 3D) of fewer voxels are
            relabelled liver; 0 keeps all. :func:`~featsup.inference.tune_on_validation`
            chooses it on validation cases.
        tumour_threshold: a voxel inside the liver mask is tumour when its tumour
            probability is above this (0.5: the two-class argmax);
            :func:`~featsup.inference.tune_on_validation` chooses it on validation cases.
        tumour_scope: ``"liver"`` (paper 4.1.3): the tumour model sees the ROI zeroed
            outside the predicted liver mask and finds tumour only inside it. ``"roi"``:
            it sees the whole ROI box, and a tumour that touches the liver mask is kept
            whole and joins the liver (:func:`~featsup.postprocess.label_tumours`), so
            that a lesion the liver model left out at the liver's edge is not cut; its
            model must be trained on unmasked ROI crops (``mask_outside=False``).

    Raises:
        ValueError: if the two stages' preprocessings have different HU windows, or if
            ``tumour_patch`` is missing for a 3D tumour model or given for a 2D one.

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
        tumour_context: int | None = None,
        roi_margin: int = 8,
        preprocessing: Preprocessing | None = None,
        tumour_preprocessing: Preprocessing | None = None,
        liver_crf: dict[str, Any] | None = None,
        tumour_crf: dict[str, Any] | None = None,
        batch_size: int = 16,
        device: str | torch.device | None = "auto",
        tta: bool = False,
        tumour_patch: Sequence[int] | None = None,
        tumour_overlap: float = 0.5,
        tumour_min_voxels: int = 0,
        tumour_threshold: float = 0.5,
        tumour_scope: Literal["liver", "roi"] = "liver",
    ) -> None:
        check_positive("batch_size", batch_size)
        self.tumour_scope = check_choice("tumour_scope", tumour_scope, ("liver", "roi"))
        check_positive("tumour_min_voxels", tumour_min_voxels, strict=False)
        self.tumour_min_voxels = int(tumour_min_voxels)
        self.tumour_threshold = float(check_in_range("tumour_threshold", tumour_threshold, 0, 1))
        self.tumour_patch = check_tumour_patch(tumour_model, tumour_patch)
        self.tumour_overlap = check_in_range("tumour_overlap", tumour_overlap, 0.0, 0.999)
        check_positive("roi_margin", roi_margin, strict=False)
        check_positive("context", context, strict=False)
        tumour_context = context if tumour_context is None else tumour_context
        check_positive("tumour_context", tumour_context, strict=False)
        for name, value in (("preprocessing", preprocessing),
                            ("tumour_preprocessing", tumour_preprocessing)):  # fmt: skip
            if value is not None:
                check_type(name, value, Preprocessing)
        self.liver_model, self.tumour_model = liver_model, tumour_model
        self.liver_size = liver_size
        self.tumour_size = (
            (tumour_size, tumour_size) if isinstance(tumour_size, int) else tumour_size
        )
        self.liver_head, self.tumour_head = liver_head, tumour_head
        self.context, self.tumour_context, self.roi_margin = context, tumour_context, roi_margin
        self.preprocessing, self.tumour_preprocessing = _stage_preprocessings(
            liver_model, tumour_model, preprocessing, tumour_preprocessing
        )
        self.liver_crf, self.tumour_crf = liver_crf, tumour_crf
        self.predict_options: dict[str, Any] = {
            "batch_size": batch_size,
            "device": device,
            "tta": tta,
        }
        self._prepared: dict[tuple[str, int | None], PreparedModel] = {}

    def prepared(self, stage: Literal["liver", "tumour"], head: int | None) -> PreparedModel:
        """The stage's model prepared for ``head`` (None: deepest), made on first use only."""
        key = (stage, head)
        if key not in self._prepared:
            model = self.liver_model if stage == "liver" else self.tumour_model
            device = self.predict_options["device"]
            self._prepared[key] = prepare_model(model, head=head, device=device)
        return self._prepared[key]

    @staticmethod
    def _crf(
        probs: np.ndarray, image_u8: np.ndarray, mask: np.ndarray | None, options: dict[str, Any]
    ) -> np.ndarray:
        from featsup.postprocess import dense_crf

        # in place on the CPU: ``probs`` is the cascade's own float32 array, used once
        in_place = {"out": probs} if options.get("device") in (None, "cpu") else {}
        return dense_crf(probs, image_u8, mask=mask, **{"mode": "2d", **options, **in_place})

    def liver_stage(
        self, volume_hu: np.ndarray, *, head: int | None = None, mask: np.ndarray | None = None
    ) -> LiverStage:
        """Preprocess one CT volume and run the liver model (and its CRF when set).

        Args:
            volume_hu: (D, H, W) Hounsfield units in featsup's processing order.
            head: liver head for this call; None uses the cascade's ``liver_head``.
            mask: a known (D, H, W) liver mask (for example the reference, or another
                tool's) to use instead of the liver model, so that only the tumour stage
                runs; it is taken as it is (no largest component).

        Returns:
            A :class:`LiverStage` to pass to :meth:`tumour_stage`.

        Raises:
            ValueError: if ``volume_hu`` is not 3D.
        """
        check_ndim("volume_hu", volume_hu, 3, "(D, H, W)")
        t: dict[str, float] = {}
        begin = start = time.perf_counter()
        low, high = self.preprocessing.hu_window  # the window once: CRF image and model input
        image_u8 = hu_window(np.asarray(volume_hu), low=low, high=high, output="uint8")
        if mask is not None:
            if np.shape(mask) != np.shape(volume_hu):
                raise ValueError(
                    f"mask: expected the volume's shape {np.shape(volume_hu)}, got {np.shape(mask)}"
                )
            image = preprocess_window(image_u8, preprocessing=self.tumour_preprocessing)
            t["preprocess"] = time.perf_counter() - start
            known = np.asarray(mask, dtype=bool)
            return LiverStage(image, image_u8, known.astype(np.float32), known, t,
                              time.perf_counter() - begin)  # fmt: skip
        image = preprocess_window(image_u8, preprocessing=self.preprocessing)
        t["preprocess"] = time.perf_counter() - start
        start = time.perf_counter()
        model = self.prepared("liver", self.liver_head if head is None else head)
        crf = self.liver_crf is not None  # the CRF needs both classes, the rest the liver only
        probs = predict_volume(
            model, image, size=self.liver_size, context=self.context,
            classes=None if crf else [1], **self.predict_options,
        )  # fmt: skip
        t["liver_model"] = time.perf_counter() - start
        liver_p = probs[0]
        if self.liver_crf is not None:
            start = time.perf_counter()
            liver_p = self._crf(probs, image_u8, None, self.liver_crf)[1].copy()  # background freed
            t["liver_crf"] = time.perf_counter() - start
        del probs
        mask = largest_connected_component(liver_p > 0.5)
        if self.tumour_preprocessing != self.preprocessing:  # the tumour model's own input,
            del image  # made once for every tumour head, after the liver's is freed
            start = time.perf_counter()
            image = preprocess_window(image_u8, preprocessing=self.tumour_preprocessing)
            t["preprocess"] += time.perf_counter() - start
        return LiverStage(image, image_u8, liver_p, mask, t, time.perf_counter() - begin)

    def _tumour(
        self,
        image: np.ndarray,
        image_u8: np.ndarray,
        liver: np.ndarray,
        head: int | None,
        t: dict[str, float],
    ) -> tuple[np.ndarray, Any]:
        from featsup.data import find_roi, uncrop

        flat = self.tumour_patch is None  # 2D: slices resized in-plane; 3D: the box as it is
        margin = (0, self.roi_margin, self.roi_margin)
        roi = find_roi(liver, margin=margin, size=self.tumour_size if flat else None)
        context = self.tumour_context if flat else 0
        scoped = self.tumour_scope == "liver"
        crop = masked_crop(image, liver if scoped else None, roi, context)  # (d, C, rows, cols)
        start = time.perf_counter()
        classes = None if self.tumour_crf is not None else [1]  # the CRF needs both classes
        model = self.prepared("tumour", head)
        if self.tumour_patch is None:
            probs = predict_volume(model, crop, classes=classes, **self.predict_options)
        else:
            probs = predict_box(
                model, crop[:, 0], patch=self.tumour_patch, overlap=self.tumour_overlap,
                classes=classes, batch_size=self.predict_options["batch_size"],
                tta=self.predict_options["tta"],
            )  # fmt: skip
        t["tumour_model"] = time.perf_counter() - start
        full = uncrop(probs, roi, mode="linear")  # (2 or 1, D, H, W), zero outside the box
        region = liver if scoped else _box_mask(roi, liver.shape)
        outside = ~region
        full[-1][outside] = 0.0
        if self.tumour_crf is None:
            return full[0], roi
        full[0][outside] = 1.0
        start = time.perf_counter()
        full = self._crf(full, image_u8, region, self.tumour_crf)
        t["tumour_crf"] = time.perf_counter() - start
        return full[1].copy(), roi  # the background freed

    def tumour_stage(self, liver: LiverStage, *, head: int | None = None) -> CascadeResult:
        """Run the tumour stage on the output of :meth:`liver_stage` and label the volume.

        Args:
            liver: the liver stage of the volume (reusable for several tumour heads).
            head: tumour head for this call; None uses the cascade's ``tumour_head``.

        Returns:
            A :class:`CascadeResult`.
        """
        timings = dict(liver.timings)
        start = time.perf_counter()
        roi = None
        if liver.mask.any():
            tumour_head = self.tumour_head if head is None else head
            tumour_p, roi = self._tumour(
                liver.image, liver.image_u8, liver.mask, tumour_head, timings
            )
        else:  # np.zeros: pages stay untouched, unlike zeros_like's fill
            tumour_p = np.zeros(liver.probability.shape, np.float32)
        labels = label_tumours(
            liver.mask, tumour_p, threshold=self.tumour_threshold,
            min_voxels=self.tumour_min_voxels, scope=self.tumour_scope,
        )  # fmt: skip
        timings["total"] = liver.seconds + time.perf_counter() - start
        tumour_p = tumour_p.astype(np.float32, copy=False)
        return CascadeResult(labels, liver.probability, tumour_p, liver.mask, roi, timings)

    def __call__(self, volume_hu: np.ndarray) -> CascadeResult:
        """Segment one CT volume: :meth:`liver_stage`, then :meth:`tumour_stage`.

        Args:
            volume_hu: (D, H, W) Hounsfield units in featsup's processing order.

        Returns:
            A :class:`CascadeResult`.

        Raises:
            ValueError: if ``volume_hu`` is not 3D.
        """
        return self.tumour_stage(self.liver_stage(volume_hu))

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


def _stage_preprocessings(
    liver_model: nn.Module,
    tumour_model: nn.Module,
    preprocessing: Preprocessing | None,
    tumour_preprocessing: Preprocessing | None,
) -> tuple[Preprocessing, Preprocessing]:
    """The liver and tumour stages' preprocessings: given, else recorded, else the default."""
    liver_record, tumour_record = (
        model_preprocessing(liver_model),
        model_preprocessing(tumour_model),
    )
    liver = preprocessing or liver_record or tumour_record or Preprocessing()
    tumour = tumour_preprocessing or preprocessing or tumour_record or liver
    if tumour.hu_window != liver.hu_window:
        raise ValueError(
            f"tumour_preprocessing: expected the liver stage's HU window {liver.hu_window} (both "
            f"models and the CRF read one window), got {tumour.hu_window}; fix: train both "
            f"stages with one hu_window (CLAHE and normalisation may differ)"
        )
    return liver, tumour


def _box_mask(roi: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A bool volume of ``shape``, True inside the box of ``roi`` (a RoiCrop)."""
    mask = np.zeros(shape, bool)
    mask[roi.slices] = True
    return mask
