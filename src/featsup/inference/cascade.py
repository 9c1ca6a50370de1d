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
    darkness_sigmas,
    hu_window,
    largest_connected_component,
    preprocess_window,
)
from featsup.inference._tumour_input import check_tumour_patch, masked_crop, predict_box
from featsup.inference.predict import (
    TTA,
    Head,
    PreparedModel,
    StageHead,
    check_head,
    check_tta,
    head_probability,
    heads_of,
    model_preprocessing,
    predict_volume,
    prepare_model,
)
from featsup.postprocess.components import (
    drop_surface_tumours,
    label_tumours,
    surface_setting,
)
from featsup.postprocess.lesion_filter import (
    TUMOUR_FILTER_KEEP,
    LesionFilter,
    drop_unlikely_tumours,
    score_tumours,
)
from featsup.postprocess.spots import add_dark_spots, dark_spots

if TYPE_CHECKING:
    from featsup.inference.heads import HeadChoice

__all__ = ["Cascade", "CascadeResult", "LiverStage", "liver_crf", "tumour_crf"]

#: The liver CRF runs on the box around the voxels of liver probability >= this, grown
#: in-plane by ``_CRF_REACH`` spatial kernel widths (:func:`liver_crf`).
_CRF_CANDIDATE = 0.05
_CRF_REACH = 4.0


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
        liver_model: 2D model, liver (1) vs background (0) logits, or more classes with
            ``liver_classes``.
        tumour_model: 2D model, tumour (1) vs rest (0) logits on liver-ROI crops, or a
            3D one on liver-ROI patches (with ``tumour_patch``).
        liver_size: in-plane size the liver model was trained at (slices are resized).
        tumour_size: in-plane size of the 2D tumour model's ROI crops.
        liver_head: UNet++ head of the liver model: 1..d, None (the deepest) or
            ``"mean"`` (the mean of every head's probabilities, from one pass of the whole
            network: UNet++'s "accurate mode").
        tumour_head: UNet++ head of the tumour model, as ``liver_head``.
        context: 2.5D neighbours on each side of the liver model's input (and the tumour
            model's, unless ``tumour_context`` is given).
        tumour_context: 2.5D neighbours on each side of the 2D tumour model's input;
            None takes ``context``.
        tumour_darkness: (local, background) in-plane sigmas, pixels, of a darkness
            channel (:func:`featsup.data.darkness_channel` over the liver mask) that the 2D
            tumour model takes as its last input channel, as it was trained with
            ``TumourSliceDataset(darkness=)``; None (default): none.
        roi_margin: in-plane margin (pixels) around the liver box, as in training.
        preprocessing: the :class:`~featsup.data.Preprocessing` the liver model was
            trained with (and the tumour model, unless ``tumour_preprocessing`` is given);
            None takes the one its checkpoint recorded (models rebuilt by
            :func:`featsup.training.load_model`), else the tumour model's, else the
            defaults (the paper's).
        tumour_preprocessing: the tumour model's; None takes ``preprocessing`` when given,
            else the one the tumour model's checkpoint recorded, else the liver stage's.
            Its HU window may differ from the liver stage's (the tumour model then reads
            the volume through its own); both CRFs read the liver stage's window.
        liver_crf: None for no CRF on the liver stage, else keyword arguments of
            :func:`featsup.postprocess.dense_crf` (``{}`` for its defaults; the phantom-
            tuned ``CRF_PRESETS["liver"]`` differs from them), applied slice by slice.
        tumour_crf: the same for the tumour stage (liver vs tumour, inside the liver
            mask), for example ``CRF_PRESETS["tumour"]``.
        batch_size: slices per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        tta: test-time augmentation of the liver stage (and of the tumour stage unless
            ``tumour_tta`` is given): False, True (average with the left-right mirrored
            prediction) or ``"flips"`` (every in-plane flip; 4 passes).
        tumour_tta: the tumour stage's; None takes ``tta``. A tumour model trained with
            flips (the example's) may gain from them while its liver model, trained
            without, would not; :func:`~featsup.inference.tune_on_validation` can choose
            it on validation cases.
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
        tumour_min_inside: with ``tumour_scope="roi"``, the smallest share of a tumour
            component that must lie inside the liver mask for it to be kept
            (:func:`~featsup.postprocess.label_tumours`' ``min_inside``; 0: a touch is
            enough). 0.5, the default: dark tissue beside the liver that the tumour
            model takes for a lesion lies mostly outside the mask, a lesion at the
            liver's edge mostly inside (chosen on validation cases, docs/cascade.md).
            Cascade files saved before it existed load with 0, as they were tuned.
        liver_classes: the liver model's classes whose probabilities add up to the
            liver: ``(1,)`` for a liver model, ``(1, 2)`` for a three-class one
            (background, liver, tumour), whose liver is 1 - p(background).
        tumour_surface: ``(depth, fraction)``: last, every tumour component with at
            least ``fraction`` of its voxels in the liver's outer shell, ``depth`` voxels
            deep, becomes liver (:func:`~featsup.postprocess.drop_surface_tumours`);
            None (the default) keeps them. Cascade files saved before it existed load
            with None.
        tumour_filter: a trained :class:`~featsup.postprocess.LesionFilter` that scores
            each tumour component after the threshold, the smallest tumour and
            ``tumour_surface``; components scored below ``tumour_filter_keep`` become liver
            (:func:`~featsup.postprocess.drop_unlikely_tumours`). None (the default): no
            filter. :func:`~featsup.inference.train_lesion_filter` trains one on the
            cascade's own components on training cases.
        tumour_filter_keep: the smallest score a component keeps, in [0, 1] (0 keeps
            all); 0.9 by default (:data:`~featsup.postprocess.TUMOUR_FILTER_KEEP`);
            :func:`~featsup.inference.tune_on_validation` can choose it on validation
            cases.
        tumour_spots: a darkness threshold in HU: the liver's dark spots
            (:func:`~featsup.postprocess.dark_spots` on the tumour model's input, whose
            preprocessing must be a min-max HU window without CLAHE) join the tumour
            components as candidates after the threshold, the smallest tumour and
            ``tumour_surface``, before the filter, which keeps or drops them with the
            rest; None (the default): none. Meant for a cascade with a ``tumour_filter``
            trained with them (:func:`~featsup.inference.add_lesion_filter` ``spots``).

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
        liver_head: StageHead = None,
        tumour_head: StageHead = None,
        context: int = 0,
        tumour_context: int | None = None,
        tumour_darkness: tuple[float, float] | None = None,
        roi_margin: int = 8,
        preprocessing: Preprocessing | None = None,
        tumour_preprocessing: Preprocessing | None = None,
        liver_crf: dict[str, Any] | None = None,
        tumour_crf: dict[str, Any] | None = None,
        batch_size: int = 16,
        device: str | torch.device | None = "auto",
        tta: TTA = False,
        tumour_tta: TTA | None = None,
        tumour_patch: Sequence[int] | None = None,
        tumour_overlap: float = 0.5,
        tumour_min_voxels: int = 0,
        tumour_threshold: float = 0.5,
        tumour_scope: Literal["liver", "roi"] = "liver",
        tumour_min_inside: float = 0.5,
        liver_classes: Sequence[int] = (1,),
        tumour_surface: tuple[int, float] | None = None,
        tumour_filter: LesionFilter | None = None,
        tumour_filter_keep: float = TUMOUR_FILTER_KEEP,
        tumour_spots: float | None = None,
    ) -> None:
        check_positive("batch_size", batch_size)
        if tumour_spots is not None:
            check_positive("tumour_spots", tumour_spots)
        self.tumour_spots = None if tumour_spots is None else float(tumour_spots)
        if tumour_filter is not None:
            check_type("tumour_filter", tumour_filter, LesionFilter)
        self.tumour_filter = tumour_filter
        self.tumour_filter_keep = float(
            check_in_range("tumour_filter_keep", tumour_filter_keep, 0.0, 1.0)
        )
        self.liver_classes = _liver_classes(liver_classes)
        check_tta("tta", tta)
        self.tumour_tta: TTA = check_tta("tumour_tta", tta if tumour_tta is None else tumour_tta)
        self.tumour_scope = check_choice("tumour_scope", tumour_scope, ("liver", "roi"))
        check_positive("tumour_min_voxels", tumour_min_voxels, strict=False)
        self.tumour_min_voxels = int(tumour_min_voxels)
        self.tumour_threshold = float(check_in_range("tumour_threshold", tumour_threshold, 0, 1))
        self.tumour_min_inside = float(
            check_in_range("tumour_min_inside", tumour_min_inside, 0.0, 1.0)
        )
        self.tumour_surface = _tumour_surface(tumour_surface)
        self.tumour_patch = check_tumour_patch(tumour_model, tumour_patch)
        self.tumour_overlap = check_in_range("tumour_overlap", tumour_overlap, 0.0, 0.999)
        check_positive("roi_margin", roi_margin, strict=False)
        check_positive("context", context, strict=False)
        tumour_context = context if tumour_context is None else tumour_context
        check_positive("tumour_context", tumour_context, strict=False)
        self.tumour_darkness = darkness_sigmas("tumour_darkness", tumour_darkness)
        if self.tumour_darkness is not None and self.tumour_patch is not None:
            raise ValueError(
                f"tumour_darkness: expected None with a 3D tumour model (tumour_patch), got "
                f"{tumour_darkness!r}; fix: drop it (only the 2D tumour stage takes it)"
            )
        for name, value in (("preprocessing", preprocessing),
                            ("tumour_preprocessing", tumour_preprocessing)):  # fmt: skip
            if value is not None:
                check_type(name, value, Preprocessing)
        self.liver_model, self.tumour_model = liver_model, tumour_model
        self.liver_size = liver_size
        self.tumour_size = (
            (tumour_size, tumour_size) if isinstance(tumour_size, int) else tumour_size
        )
        self.liver_head = check_head("liver_head", liver_head)
        self.tumour_head = check_head("tumour_head", tumour_head)
        self.context, self.tumour_context, self.roi_margin = context, tumour_context, roi_margin
        self.preprocessing, self.tumour_preprocessing = _stage_preprocessings(
            liver_model, tumour_model, preprocessing, tumour_preprocessing
        )
        plain = not self.tumour_preprocessing.clahe
        if self.tumour_spots is not None and not (
            plain and self.tumour_preprocessing.normalization == "minmax"
        ):
            raise ValueError(
                f"tumour_spots: expected a tumour preprocessing without CLAHE and with "
                f"min-max normalisation (spots read HU from it), got "
                f"{self.tumour_preprocessing}; fix: tumour_spots=None"
            )
        self.liver_crf, self.tumour_crf = liver_crf, tumour_crf
        self.predict_options: dict[str, Any] = {
            "batch_size": batch_size,
            "device": device,
            "tta": tta,
        }
        self._prepared: dict[tuple[str, Head], PreparedModel] = {}

    def prepared(self, stage: Literal["liver", "tumour"], head: Head) -> PreparedModel:
        """The stage's model prepared for ``head``, made on first use only.

        ``head``: 1..d, None (the deepest), ``"all"`` (every head from one pass) or
        ``"mean"`` (their mean probabilities).
        """
        key = (stage, head)
        if key not in self._prepared:
            model = self.liver_model if stage == "liver" else self.tumour_model
            device = self.predict_options["device"]
            self._prepared[key] = prepare_model(model, head=head, device=device)
        return self._prepared[key]

    def _liver_input(self, volume_hu: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(liver-model input, uint8 HU window, seconds): the window is made once."""
        start = time.perf_counter()
        low, high = self.preprocessing.hu_window  # the window once: CRF image and model input
        image_u8 = hu_window(np.asarray(volume_hu), low=low, high=high, output="uint8")
        image = preprocess_window(image_u8, preprocessing=self.preprocessing)
        return image, image_u8, time.perf_counter() - start

    def _tumour_image(self, volume_hu: np.ndarray, image_u8: np.ndarray) -> np.ndarray:
        """(D, H, W) float32 tumour-model input from the liver stage's uint8 window.

        The volume is windowed again when the tumour model was trained with its own window.
        """
        window = self.tumour_preprocessing.hu_window
        if window != self.preprocessing.hu_window:
            image_u8 = hu_window(np.asarray(volume_hu), low=window[0], high=window[1],
                                 output="uint8")  # fmt: skip
        return preprocess_window(image_u8, preprocessing=self.tumour_preprocessing)

    def _liver_probabilities(
        self, image: np.ndarray, heads: list[StageHead]
    ) -> tuple[dict[StageHead, np.ndarray], float]:
        """({head: (D, H, W) liver probability}, model seconds) of several heads.

        A deeply supervised UNet++ gives them from one pass of the whole network; any
        other model runs once per head.
        """
        options = {"size": self.liver_size, "context": self.context,
                   "classes": list(self.liver_classes), **self.predict_options}  # fmt: skip
        if len(heads) > 1 and heads_of(self.liver_model) > 1:
            model = self.prepared("liver", "all")  # prepared outside the timing
            start = time.perf_counter()
            every = _summed(predict_volume(model, image, **options), axis=1)  # (N, D, H, W)
            probs = {k: head_probability(every, k) for k in heads}
            return probs, time.perf_counter() - start
        models = {k: self.prepared("liver", k) for k in heads}
        start = time.perf_counter()
        probs = {k: _summed(predict_volume(models[k], image, **options), 0) for k in heads}
        return probs, time.perf_counter() - start

    def liver_stage(
        self, volume_hu: np.ndarray, *, head: StageHead = None, mask: np.ndarray | None = None
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
        if mask is None:
            return self.liver_stages(volume_hu, [head])[0]
        if np.shape(mask) != np.shape(volume_hu):
            raise ValueError(
                f"mask: expected the volume's shape {np.shape(volume_hu)}, got {np.shape(mask)}"
            )
        begin = time.perf_counter()
        low, high = self.preprocessing.hu_window
        image_u8 = hu_window(np.asarray(volume_hu), low=low, high=high, output="uint8")
        image = self._tumour_image(volume_hu, image_u8)
        t = {"preprocess": time.perf_counter() - begin}
        known = np.asarray(mask, dtype=bool)
        return LiverStage(image, image_u8, known.astype(np.float32), known, t,
                          time.perf_counter() - begin)  # fmt: skip

    def liver_stages(self, volume_hu: np.ndarray, heads: Sequence[StageHead]) -> list[LiverStage]:
        """:meth:`liver_stage` for several liver heads, the shared work done once.

        One preprocessing and, for a deeply supervised UNet++, one pass of the whole
        network give every head. The stages share their ``image`` and ``image_u8``
        arrays; each has its own probability and mask, so memory grows with the number
        of heads. With several heads, ``timings["liver_model"]`` is the one pass's time,
        the same in each stage; a pruned head's own time comes from :meth:`liver_stage`.

        Args:
            volume_hu: (D, H, W) Hounsfield units in featsup's processing order.
            heads: liver heads (None: the cascade's ``liver_head``; ``"mean"``: every
                head's mean).

        Returns:
            One :class:`LiverStage` per head, in the order of ``heads``, each equal to
            ``liver_stage(volume_hu, head=h)``'s.

        Raises:
            ValueError: if ``volume_hu`` is not 3D or ``heads`` is empty.

        Example:
            >>> from featsup.models import UNetPlusPlus
            >>> net = UNetPlusPlus(1, 2, widths=(4, 8, 16))
            >>> cascade = Cascade(net, net, liver_size=32, device="cpu")
            >>> [s.mask.shape for s in cascade.liver_stages(np.zeros((2, 32, 32)), [1, 2])]
            [(2, 32, 32), (2, 32, 32)]
        """
        check_ndim("volume_hu", volume_hu, 3, "(D, H, W)")
        wanted = [self.liver_head if h is None else check_head("heads", h) for h in heads]
        if not wanted:
            raise ValueError("heads: expected at least one liver head, got none")
        begin = time.perf_counter()
        image, image_u8, seconds = self._liver_input(volume_hu)
        probs, model_seconds = self._liver_probabilities(image, list(dict.fromkeys(wanted)))
        if self.tumour_preprocessing != self.preprocessing:  # the tumour model's own input,
            del image  # made once for every head, after the liver's is freed
            start = time.perf_counter()
            image = self._tumour_image(volume_hu, image_u8)
            seconds += time.perf_counter() - start
        stages = []
        for k in wanted:
            t = {"preprocess": seconds, "liver_model": model_seconds}
            liver_p = probs[k]
            if self.liver_crf is not None:
                start = time.perf_counter()
                liver_p = liver_crf(liver_p, image_u8, self.liver_crf)
                t["liver_crf"] = time.perf_counter() - start
            mask = largest_connected_component(liver_p > 0.5)
            stages.append(LiverStage(image, image_u8, liver_p, mask, t,
                                     time.perf_counter() - begin))  # fmt: skip
        return stages

    def _refine_liver(self, stage: LiverStage) -> LiverStage:
        """``stage`` (made without a liver CRF) after this cascade's liver CRF, if any."""
        if self.liver_crf is None:
            return stage
        t = dict(stage.timings)
        start = time.perf_counter()
        liver_p = liver_crf(stage.probability, stage.image_u8, self.liver_crf)
        t["liver_crf"] = time.perf_counter() - start
        mask = largest_connected_component(liver_p > 0.5)
        seconds = stage.seconds + time.perf_counter() - start
        return LiverStage(stage.image, stage.image_u8, liver_p, mask, t, seconds)

    def _tumour_probabilities(
        self, liver: LiverStage, heads: list[StageHead], t: dict[str, float]
    ) -> tuple[dict[StageHead, np.ndarray], Any, np.ndarray]:
        """({head: (D, H, W) tumour probability, 0 outside the region}, ROI, region).

        A deeply supervised 2D UNet++ gives every head from one pass; a 3D one, or
        another model, runs once per head.
        """
        from featsup.data import find_roi, uncrop

        flat = self.tumour_patch is None  # 2D: slices resized in-plane; 3D: the box as it is
        margin = (0, self.roi_margin, self.roi_margin)
        roi = find_roi(liver.mask, margin=margin, size=self.tumour_size if flat else None)
        scoped = self.tumour_scope == "liver"
        crop = masked_crop(liver.image, liver.mask if scoped else None, roi,
                           self.tumour_context if flat else 0,
                           self.tumour_darkness)  # (d, C, rows, cols) # fmt: skip
        if flat and len(heads) > 1 and heads_of(self.tumour_model) > 1:
            model = self.prepared("tumour", "all")  # prepared outside the timing
            start = time.perf_counter()
            every = predict_volume(model, crop, classes=[1], **self._tumour_options)[:, 0]
            crops = {k: head_probability(every, k) for k in heads}
        else:
            models = {k: self.prepared("tumour", k) for k in heads}
            start = time.perf_counter()
            crops = {k: self._tumour_crop(models[k], crop)[0] for k in heads}
        t["tumour_model"] = time.perf_counter() - start
        region = liver.mask if scoped else _box_mask(roi, liver.mask.shape)
        probs = {}
        for k in heads:
            full = uncrop(crops[k], roi, mode="linear")  # (D, H, W), zero outside the box
            full[~region] = 0.0
            probs[k] = full
        return probs, roi, region

    def _tumour_crop(self, model: PreparedModel, crop: np.ndarray) -> np.ndarray:
        """(1, d, rows, cols) tumour probability of one head on the masked ROI crop."""
        if self.tumour_patch is None:
            return predict_volume(model, crop, classes=[1], **self._tumour_options)
        return predict_box(
            model, crop[:, 0], patch=self.tumour_patch, overlap=self.tumour_overlap,
            classes=[1], batch_size=self.predict_options["batch_size"], tta=self.tumour_tta,
        )  # fmt: skip

    @property
    def _tumour_options(self) -> dict[str, Any]:
        """:func:`predict_volume` options of the tumour stage (its own ``tta``)."""
        return {**self.predict_options, "tta": self.tumour_tta}

    def _tumour_result(
        self,
        liver: LiverStage,
        tumour_p: np.ndarray,
        roi: Any,
        region: np.ndarray | None,
        t: dict[str, float],
        start: float,
    ) -> CascadeResult:
        """Refine ``tumour_p`` with the tumour CRF (when set) and label the volume."""
        if self.tumour_crf is not None and region is not None:
            begin = time.perf_counter()
            tumour_p = tumour_crf(tumour_p, liver.image_u8, region, self.tumour_crf)
            t["tumour_crf"] = time.perf_counter() - begin
        labels = label_tumours(
            liver.mask, tumour_p, threshold=self.tumour_threshold,
            min_voxels=self.tumour_min_voxels, scope=self.tumour_scope,
            min_inside=self.tumour_min_inside,
        )  # fmt: skip
        begin = time.perf_counter()
        spots = self._spots(liver.image, liver.mask)
        if spots is not None:
            t["tumour_spots"] = time.perf_counter() - begin
        labels = self._candidates(labels, spots)
        if self.tumour_filter is not None and self.tumour_filter_keep > 0 and (labels == 2).any():
            begin = time.perf_counter()
            components, scores = score_tumours(labels, liver.image, tumour_p, self.tumour_filter,
                                               liver.mask)  # fmt: skip
            labels = drop_unlikely_tumours(labels, components, scores, self.tumour_filter_keep,
                                           liver.mask)  # fmt: skip
            t["tumour_filter"] = time.perf_counter() - begin
        t["total"] = liver.seconds + time.perf_counter() - start
        tumour_p = tumour_p.astype(np.float32, copy=False)
        return CascadeResult(labels, liver.probability, tumour_p, liver.mask, roi, t)

    def _candidates(self, labels: np.ndarray, spots: np.ndarray | None) -> np.ndarray:
        """The tumour filter's candidates: ``tumour_surface``, then ``spots``, on ``labels``.

        ``labels`` are thresholded, their smallest tumours dropped. The one place for the
        steps after the threshold, so that the choices on validation
        (``featsup.inference.heads._crf_trials``) label as whole runs do.
        """
        if self.tumour_surface is not None:
            labels = drop_surface_tumours(labels, *self.tumour_surface)
        return labels if spots is None else add_dark_spots(labels, spots)

    @property
    def _candidates_are_thresholded(self) -> bool:
        """Whether :meth:`_candidates` returns its labels unchanged (no surface, no spots)."""
        return self.tumour_surface is None and self.tumour_spots is None

    def _spots(self, image: np.ndarray, liver_mask: np.ndarray) -> np.ndarray | None:
        """(D, H, W) bool dark spots of ``tumour_spots`` HU in the tumour input, or None."""
        if self.tumour_spots is None:
            return None
        return dark_spots(image, liver_mask, self.tumour_spots,
                          window=self.tumour_preprocessing.hu_window)  # fmt: skip

    def tumour_stage(self, liver: LiverStage, *, head: StageHead = None) -> CascadeResult:
        """Run the tumour stage on the output of :meth:`liver_stage` and label the volume.

        Args:
            liver: the liver stage of the volume (reusable for several tumour heads).
            head: tumour head for this call; None uses the cascade's ``tumour_head``.

        Returns:
            A :class:`CascadeResult`.
        """
        return self.tumour_stages(liver, [head])[0]

    def tumour_stages(self, liver: LiverStage, heads: Sequence[StageHead]) -> list[CascadeResult]:
        """:meth:`tumour_stage` for several tumour heads, the shared work done once.

        One ROI crop and, for a deeply supervised 2D UNet++, one pass of the whole
        network give every head. Memory grows with the number of heads (a probability
        and labels each). With several heads, ``timings["tumour_model"]`` is the one
        pass's time.

        Args:
            liver: the liver stage of the volume.
            heads: tumour heads (None: the cascade's ``tumour_head``; ``"mean"``: every
                head's mean).

        Returns:
            One :class:`CascadeResult` per head, in the order of ``heads``, each equal to
            ``tumour_stage(liver, head=h)``'s.

        Raises:
            ValueError: if ``heads`` is empty.

        Example:
            >>> from featsup.models import UNetPlusPlus
            >>> net = UNetPlusPlus(1, 2, widths=(4, 8, 16))
            >>> cascade = Cascade(net, net, liver_size=32, tumour_size=32, device="cpu")
            >>> liver = cascade.liver_stage(np.zeros((2, 32, 32)))
            >>> [r.labels.shape for r in cascade.tumour_stages(liver, [1, 2])]
            [(2, 32, 32), (2, 32, 32)]
        """
        wanted = [self.tumour_head if h is None else check_head("heads", h) for h in heads]
        if not wanted:
            raise ValueError("heads: expected at least one tumour head, got none")
        start, shared = time.perf_counter(), dict(liver.timings)
        probs: dict[StageHead, np.ndarray] = {}
        roi, region = None, None
        if liver.mask.any():
            probs, roi, region = self._tumour_probabilities(
                liver, list(dict.fromkeys(wanted)), shared
            )
        results = []
        for k in wanted:  # np.zeros: pages stay untouched, unlike zeros_like's fill
            tumour_p = probs[k] if probs else np.zeros(liver.probability.shape, np.float32)
            results.append(self._tumour_result(liver, tumour_p, roi, region, dict(shared), start))
        return results

    def _refine_tumour(self, result: CascadeResult, liver: LiverStage) -> CascadeResult:
        """``result`` (from ``liver``, without a tumour CRF) after this cascade's tumour CRF.

        Labelled with this cascade's threshold and smallest tumour.
        """
        region = None
        if result.roi is not None:
            scoped = self.tumour_scope == "liver"
            region = liver.mask if scoped else _box_mask(result.roi, liver.mask.shape)
        t, before = dict(result.timings), result.timings["total"] - liver.seconds
        return self._tumour_result(liver, result.tumour_probability, result.roi, region, t,
                                   time.perf_counter() - before)  # fmt: skip

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


def _tumour_surface(value: Sequence[float] | None) -> tuple[int, float] | None:
    """``tumour_surface`` checked: None, or (depth >= 1, fraction in (0, 1])."""
    if value is None:
        return None
    depth, fraction = value  # a pair, as a file's list stores it
    try:
        return surface_setting(depth, fraction)
    except ValueError as error:
        raise ValueError(f"tumour_surface: expected None or (depth, fraction); {error}") from None


def _liver_classes(classes: Sequence[int]) -> tuple[int, ...]:
    """``liver_classes`` checked: distinct foreground classes (>= 1), at least one."""
    values = tuple(int(c) for c in classes)
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise ValueError(
            "liver_classes: expected distinct classes >= 1 (0 is the background), at least "
            f"one, got {classes!r}"
        )
    return values


def _summed(probs: np.ndarray, axis: int) -> np.ndarray:
    """``probs`` summed over its class ``axis`` (the one class as it is: no copy)."""
    if probs.shape[axis] == 1:
        return probs[(slice(None),) * axis + (0,)]
    return probs.sum(axis=axis, dtype=probs.dtype)


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
    return liver, tumour


def _box_mask(roi: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A bool volume of ``shape``, True inside the box of ``roi`` (a RoiCrop)."""
    mask = np.zeros(shape, bool)
    mask[roi.slices] = True
    return mask


def liver_crf(liver_p: np.ndarray, image_u8: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    """The liver stage's slice-wise dense CRF, run where it can change a label.

    The CRF (``featsup.postprocess.dense_crf``, ``mode="2d"`` unless ``options`` says
    otherwise) runs on the slices holding a voxel of probability >= 0.05, cropped
    in-plane to those voxels' bounding box grown by 4 widths of the widest spatial
    kernel (``theta_alpha``, and ``theta_gamma`` when ``w2 > 0``), where the kernels
    weigh under exp(-8) of their peak. Outside that box the probability is returned as
    it is: below 0.05, and with no liver near it to pull it over 0.5. On the example's
    48 x 256 x 256 phantom volumes the box is about a third of the voxels.

    Args:
        liver_p: (D, H, W) float32 liver probability (not changed).
        image_u8: (D, H, W) uint8 HU window, the CRF's image.
        options: ``dense_crf`` options, e.g. ``CRF_PRESETS["liver"]``.

    Returns:
        (D, H, W) float32 refined liver probability, a new array.

    Example:
        >>> p = np.zeros((2, 96, 96), np.float32)
        >>> p[:, 40:56, 40:56] = 0.9  # the box: 40:56 grown by 4 x theta_alpha = 20
        >>> options = {"backend": "torch", "theta_alpha": 5.0, "w2": 0.0, "iterations": 2}
        >>> out = liver_crf(p, (p * 255).astype(np.uint8), options)
        >>> out.shape, bool(out[:, 48, 48].min() > 0.5), float(out[:, :20].max())
        ((2, 96, 96), True, 0.0)
    """
    from featsup.metrics import bounding_box
    from featsup.postprocess import dense_crf

    out = np.array(liver_p, dtype=np.float32)
    box = bounding_box(out >= _CRF_CANDIDATE)
    if box is None:
        return out
    widths = [float(options.get("theta_alpha", 10.0))]
    widths += [float(options.get("theta_gamma", 3.0))] if options.get("w2", 3.0) > 0 else []
    reach = int(np.ceil(_CRF_REACH * max(widths)))
    box = (box[0], *(slice(max(0, b.start - reach), min(n, b.stop + reach))
                      for b, n in zip(box[1:], out.shape[1:], strict=True)))  # fmt: skip
    fg = out[box]
    probs = np.stack([1.0 - fg, fg]).astype(np.float32, copy=False)  # (2, d, h, w)
    refined = dense_crf(probs, np.ascontiguousarray(image_u8[box]),
                        **{"mode": "2d", **options, **_in_place(probs, options)})  # fmt: skip
    out[box] = refined[1]
    return out


def tumour_crf(
    tumour_p: np.ndarray, image_u8: np.ndarray, region: np.ndarray, options: dict[str, Any]
) -> np.ndarray:
    """The tumour stage's slice-wise dense CRF over ``region`` (the liver, or the ROI box).

    Args:
        tumour_p: (D, H, W) float32 tumour probability, 0 outside ``region`` (not changed).
        image_u8: (D, H, W) uint8 HU window, the CRF's image.
        region: (D, H, W) bool voxels that form the CRF (``dense_crf``'s ``mask``).
        options: ``dense_crf`` options, e.g. ``CRF_PRESETS["tumour"]``.

    Returns:
        (D, H, W) float32 refined tumour probability, a new array.

    Example:
        >>> p = np.zeros((1, 16, 16), np.float32)
        >>> p[0, 4:12, 4:12] = 0.8
        >>> region = np.ones(p.shape, bool)
        >>> out = tumour_crf(p, (p * 255).astype(np.uint8), region, {"backend": "torch"})
        >>> out.shape, bool(out[0, 8, 8] > 0.5)
        ((1, 16, 16), True)
    """
    from featsup.postprocess import dense_crf

    probs = np.stack([1.0 - tumour_p, tumour_p]).astype(np.float32, copy=False)
    refined = dense_crf(probs, image_u8, mask=region,
                        **{"mode": "2d", **options, **_in_place(probs, options)})  # fmt: skip
    return refined[1].copy()  # the background freed


def _in_place(probs: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
    """``dense_crf``'s ``out``: ``probs`` itself (refined in place) when it runs on the CPU."""
    return {"out": probs} if options.get("device") in (None, "cpu") else {}
