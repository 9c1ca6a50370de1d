"""2D slice datasets for the two cascade stages (paper sections 4.1.2-4.1.3, 4.2).

Both datasets take LiTS cases (a folder, a manifest or a list, see
:func:`featsup.data.find_cases`), preprocess each volume once (HU window, CLAHE,
normalisation; in a process pool with ``num_workers``; cached on disk as memory maps
with ``cache_dir``) and serve axial slices as::

    {"image": float32 tensor (C, H, W), "target": int64 tensor (H, W),
     "case_id": str, "slice_index": int}

and, with ``LiverSliceDataset(lesion_weight=)``, ``"weight": float32 tensor (H, W)``.

``C = 2 * context + 1``: the slice and ``context`` neighbours on each side (2.5D input;
indices are clamped at the ends of the volume). ``size=(H, W)`` resizes every slice
(bilinear image, nearest target) so that batches stack. Augmentation is seeded by
``(seed, epoch, index)``: call :meth:`set_epoch` at the start of each epoch to redraw
both the augmentation and the sampled background slices, reproducibly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from featsup._checks import check_choice, check_in_range, check_positive
from featsup.data._arrays import resize
from featsup.data._cache import PreparedVolume, prepare_volumes
from featsup.data.augment import SliceAugment
from featsup.data.lits import CaseSource, LitsCase, find_cases
from featsup.data.preprocess import Preprocessing, darkness_channel, darkness_sigmas

__all__ = ["CONTRAST_HU", "LiverSliceDataset", "TumourSliceDataset", "lesion_contrasts"]

CONTRAST_HU = 15.0  #: a lesion within this many HU of the liver around it is near-isodense


def _margin2(margin: int | Sequence[int]) -> tuple[int, int]:
    values = (margin, margin) if isinstance(margin, (int, np.integer)) else tuple(margin)
    if len(values) != 2 or min(values) < 0:
        raise ValueError(f"margin: expected an int >= 0 or (rows, columns), got {margin!r}")
    return int(values[0]), int(values[1])


class _SliceDataset(Dataset[dict[str, Any]]):
    """Shared machinery: preparation, slice index with an empty share, items, seeding."""

    crop: int | None = None  #: training windows (set by TumourSliceDataset); None: whole
    crop_lesion: float = 0.0  #: with ``crop``, the share of windows centred on target

    def __init__(
        self,
        cases: CaseSource,
        *,
        context: int,
        size: Sequence[int] | None,
        empty_fraction: float | None,
        augment: SliceAugment | None,
        seed: int,
        preprocessing: Preprocessing,
        cache_dir: str | os.PathLike[str] | None,
        num_workers: int,
    ) -> None:
        if context < 0:
            raise ValueError(f"context: expected an int >= 0, got {context!r}")
        if empty_fraction is not None:
            check_in_range("empty_fraction", empty_fraction, 0.0, 0.99)
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size: expected (rows, columns) >= 1 or None, got {size!r}")
        if not isinstance(preprocessing, Preprocessing):
            raise TypeError(
                f"preprocessing: expected a Preprocessing, got {type(preprocessing).__name__}; "
                "fix: Preprocessing.from_dict(d) for a dict"
            )
        if augment is not None and not callable(augment):
            raise TypeError(f"augment: expected a SliceAugment or callable, got {augment!r}")
        listed = list(cases) if not isinstance(cases, (str, os.PathLike)) else None
        self.cases: list[LitsCase] = (
            listed if listed and all(isinstance(c, LitsCase) for c in listed) else find_cases(cases)
        )
        self.context = int(context)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.empty_fraction = empty_fraction
        self.augment = augment
        self.seed = int(seed)
        self.preprocessing = preprocessing
        self.volumes: list[PreparedVolume] = prepare_volumes(
            self.cases, preprocessing, cache_dir=cache_dir, num_workers=num_workers
        )
        self.epoch = 0
        self._index = self._build_index()
        if len(self._index) == 0:
            raise ValueError(
                f"cases: expected at least one usable slice, got none from {len(self.cases)} "
                "cases; fix: check that the segmentations contain the target labels"
            )

    # --- hooks -------------------------------------------------------------------------
    def _candidates(self, volume: PreparedVolume) -> tuple[np.ndarray, np.ndarray]:
        """(slices with target, slices without) of one volume."""
        raise NotImplementedError

    def _sample(
        self, volume: PreparedVolume, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(image (C, h, w) float32, target (h, w) int) of slice ``k``."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------
    def _weigh_positives(self, positives: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The slices with target as served this epoch (hook; default: each once)."""
        return positives

    def _build_index(self) -> list[tuple[int, int]]:
        positives: list[tuple[int, int]] = []
        empties: list[tuple[int, int]] = []
        for v, volume in enumerate(self.volumes):
            pos, neg = self._candidates(volume)
            positives += [(v, int(k)) for k in pos]
            empties += [(v, int(k)) for k in neg]
        positives = self._weigh_positives(positives)
        if self.empty_fraction is None:
            return sorted(positives + empties)
        f = self.empty_fraction
        wanted = len(empties) if not positives else round(f * len(positives) / (1.0 - f))
        rng = np.random.default_rng([self.seed, self.epoch, 7919])
        pick = rng.choice(len(empties), size=min(wanted, len(empties)), replace=False)
        return sorted(positives + [empties[i] for i in pick])

    def set_epoch(self, epoch: int) -> None:
        """Redraw the background slices and the augmentation for ``epoch``."""
        self.epoch = int(epoch)
        self._index = self._build_index()

    def _neighbours(self, volume: PreparedVolume, k: int) -> np.ndarray:
        ks = np.arange(k - self.context, k + self.context + 1)
        return np.clip(ks, 0, volume.shape[0] - 1)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index: expected in [0, {len(self)}), got {index}")
        v, k = self._index[index]
        image, target = self._sample(
            self.volumes[v], k, np.random.default_rng([self.seed, self.epoch, index, 1])
        )
        if self.size is not None:
            image = resize(image, self.size, mode="linear")
            target = resize(target, self.size, mode="nearest")
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index % len(self)])
            image, target = self.augment(image, target, rng)
        if self.crop is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index % len(self), 2])
            image, target = _random_crop(image, target, self.crop, self.crop_lesion, rng)
        target, weight = self._split_target(target)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "target": torch.from_numpy(np.ascontiguousarray(target, dtype=np.int64)),
            "case_id": self.volumes[v].case_id,
            "slice_index": k,
        }
        if weight is not None:
            item["weight"] = torch.from_numpy(weight)
        return item

    def _split_target(self, target: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(served target, pixel weight map or None) of a resized, augmented target."""
        return target, None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(cases={len(self.cases)}, slices={len(self)}, "
            f"context={self.context}, size={self.size}, empty_fraction={self.empty_fraction})"
        )


class LiverSliceDataset(_SliceDataset):
    """Liver stage: whole axial slices, target liver (1, tumour included) vs background (0).

    Args:
        cases: a LiTS folder, a manifest, or a list of cases / ``(volume, segmentation)``.
        context: neighbouring slices on each side as extra channels (C = 2 * context + 1).
        size: ``(H, W)`` output size, or None to keep the volume's slice size.
        empty_fraction: share of served slices without liver (sampled, redrawn by
            :meth:`set_epoch`); None serves every slice.
        classes: ``"liver"`` (binary target) or ``"all"`` (0 background, 1 liver,
            2 tumour, as stored).
        augment: a :class:`SliceAugment` (or a callable with its signature), or None.
        seed: seed of the background-slice sampling and the augmentation.
        preprocessing: HU window, CLAHE and normalisation; None uses the paper's
            :class:`Preprocessing` defaults. Kept as ``.preprocessing`` for checkpoints
            and inference.
        cache_dir: folder for the preprocessed memory maps; None keeps them in memory.
        num_workers: processes preparing the volumes (0 = this process).
        lesion_weight: None, or a weight > 0 for tumour pixels (which are liver): items
            then carry ``"weight"``, a float32 (H, W) map that is ``lesion_weight`` on
            tumour and 1 elsewhere, for the weighted Dice of
            :func:`~featsup.losses.seg_loss` (the training step passes it). Lesions are a
            small share of the liver, so a liver model can leave a large dark one out of
            the liver at little cost to its loss; the tumour stage then never sees it.

    Example:
        >>> import tempfile
        >>> from featsup.data import write_phantom_dataset
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_phantom_dataset(folder, 1, shape=(16, 64, 64))
        >>> item = LiverSliceDataset(folder, context=1, size=(32, 32))[0]
        >>> tuple(item["image"].shape), tuple(item["target"].shape), item["target"].dtype
        ((3, 32, 32), (32, 32), torch.int64)
        >>> weighted = LiverSliceDataset(folder, size=(32, 32), lesion_weight=4.0)[0]
        >>> tuple(weighted["weight"].shape), weighted["weight"].dtype
        ((32, 32), torch.float32)
    """

    def __init__(
        self,
        cases: CaseSource,
        *,
        context: int = 0,
        size: Sequence[int] | None = None,
        empty_fraction: float | None = 0.1,
        classes: Literal["liver", "all"] = "liver",
        augment: SliceAugment | None = None,
        seed: int = 0,
        preprocessing: Preprocessing | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        num_workers: int = 0,
        lesion_weight: float | None = None,
    ) -> None:
        self.classes = check_choice("classes", classes, ("liver", "all"))
        if lesion_weight is not None:
            check_positive("lesion_weight", lesion_weight)
            if self.classes != "liver":
                raise ValueError(
                    f"lesion_weight: expected None with classes='all' (the target holds the "
                    f"tumours itself), got {lesion_weight}"
                )
        self.lesion_weight = None if lesion_weight is None else float(lesion_weight)
        super().__init__(
            cases,
            context=context,
            size=size,
            empty_fraction=empty_fraction,
            augment=augment,
            seed=seed,
            preprocessing=Preprocessing() if preprocessing is None else preprocessing,
            cache_dir=cache_dir,
            num_workers=num_workers,
        )

    def _candidates(self, volume: PreparedVolume) -> tuple[np.ndarray, np.ndarray]:
        has = volume.liver_per_slice > 0
        return np.flatnonzero(has), np.flatnonzero(~has)

    def _sample(
        self, volume: PreparedVolume, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        image = volume.image(self._neighbours(volume, k))
        labels = np.asarray(volume.labels()[k])
        keep = self.classes == "all" or self.lesion_weight is not None  # split after augment
        target = labels if keep else (labels > 0)
        return image, target.astype(np.int64)

    def _split_target(self, target: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.lesion_weight is None:
            return target, None
        weight = np.where(target == 2, np.float32(self.lesion_weight), np.float32(1.0))
        return (target > 0).astype(np.int64), np.ascontiguousarray(weight, dtype=np.float32)


class TumourSliceDataset(_SliceDataset):
    """Tumour stage: slices of the liver ROI crop, target tumour (1) vs the rest (0).

    Following paper section 4.1.3, each volume is cropped in-plane to the bounding box of
    its liver (label >= 1) plus ``margin`` pixels, pixels outside the liver are set to 0
    when ``mask_outside`` is on, and only slices that contain liver are served.

    Args:
        cases: a LiTS folder, a manifest, or a list of cases / ``(volume, segmentation)``.
        margin: in-plane margin around the liver box, one int or (rows, columns).
        mask_outside: zero the image outside the liver (per channel, its own slice).
        mask_dilation: with ``mask_outside``, grow the liver mask by a random radius of
            0..``mask_dilation`` pixels per sample first. A predicted liver mask at test
            time includes some neighbouring tissue; trained on exact masks only, the
            model calls such tissue tumour. 0 keeps the exact mask (paper 4.1.3).
        mask_fill_holes: with ``mask_outside``, fill the holes of the (grown) mask in each
            slice, so that structures the liver encloses but the label leaves out (the
            gallbladder, the cava) are shown as not-tumour, as a predicted mask shows them.
        empty_fraction: share of served liver slices without tumour (None: all of them).
        lesion_balance: 0 serves each tumour slice once per epoch, so a lesion is seen in
            proportion to the slices it spans and a small one (one or two slices) far
            less than a large one; 1 draws the tumour slices so that each lesion (a
            26-connected tumour component of the volume) is served equally often, each
            of its slices ``1 / (slices it spans)`` of a share; between, the mix
            ``(1 - b) * uniform + b * balanced``. As many tumour slices are served
            either way (redrawn by :meth:`set_epoch`), and the tumour-free share is of
            them, as before.
        contrast_balance: 0 serves the tumour slices as ``lesion_balance`` says; 1 draws
            them so that each contrast class of lesion present (darker than the liver
            around it by more than 15 HU, within 15 HU, brighter by more than 15 HU; see
            :func:`lesion_contrasts`) gets an equal share, so that the rare bright and
            near-isodense lesions are not drowned by the dark ones; a slice belongs to
            the class of the lesion with the most voxels in it; between, the mix
            ``(1 - c) * uniform + c * balanced``. With ``lesion_balance`` too, the two
            factors multiply (and are rescaled to keep the number of tumour slices).
        crop: serve a random ``crop`` x ``crop`` window of each (resized, augmented)
            slice instead of the whole slice (None), so that a step of ``(size / crop)**2``
            times the batch costs what a step of whole slices does; needs ``size``.
        crop_lesion: with ``crop``, the share of windows centred on a random tumour
            pixel of a slice that has one (nnU-Net's foreground oversampling); the rest
            lie anywhere in the slice.
        darkness: in-plane (local, background) Gaussian sigmas in pixels: add the centre
            slice's :func:`~featsup.data.darkness_channel` as the last channel, computed
            before the resize over the mask the image is zeroed outside (grown and filled
            as above; the whole crop without ``mask_outside``). None (default): no such
            channel. Items then have ``2 * context + 2`` channels.
        context, size, augment, seed, preprocessing, cache_dir, num_workers: as in
            :class:`LiverSliceDataset`.
            Without ``size`` each volume keeps its own ROI size, so batches only stack
            within one volume.

    Example:
        >>> import tempfile
        >>> from featsup.data import write_phantom_dataset
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_phantom_dataset(folder, 2, shape=(16, 64, 64))
        >>> ds = TumourSliceDataset(folder, size=(48, 48), empty_fraction=None)
        >>> tuple(ds[0]["image"].shape)
        (1, 48, 48)
    """

    def __init__(
        self,
        cases: CaseSource,
        *,
        margin: int | Sequence[int] = 8,
        mask_outside: bool = True,
        mask_dilation: int = 0,
        mask_fill_holes: bool = False,
        context: int = 0,
        size: Sequence[int] | None = None,
        empty_fraction: float | None = 0.3,
        lesion_balance: float = 0.0,
        contrast_balance: float = 0.0,
        crop: int | None = None,
        crop_lesion: float = 0.5,
        darkness: tuple[float, float] | None = None,
        augment: SliceAugment | None = None,
        seed: int = 0,
        preprocessing: Preprocessing | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        num_workers: int = 0,
    ) -> None:
        self.darkness = darkness_sigmas("darkness", darkness)
        if crop is not None:
            check_positive("crop", crop)
            if size is None or min(size) < crop:
                raise ValueError(
                    f"crop: expected at most the slices' size, got crop {crop} with size "
                    f"{size}; fix: set size to (S, S) with S >= crop"
                )
        self.crop = None if crop is None else int(crop)
        self.crop_lesion = float(check_in_range("crop_lesion", crop_lesion, 0.0, 1.0))
        self.lesion_balance = float(check_in_range("lesion_balance", lesion_balance, 0.0, 1.0))
        self.contrast_balance = float(
            check_in_range("contrast_balance", contrast_balance, 0.0, 1.0)
        )
        self._lesion_weights: dict[int, np.ndarray] = {}
        self._slice_contrast: dict[int, np.ndarray] = {}
        self.margin = _margin2(margin)
        self.mask_outside = bool(mask_outside)
        self.mask_dilation = int(check_positive("mask_dilation", mask_dilation, strict=False))
        self.mask_fill_holes = bool(mask_fill_holes)
        super().__init__(
            cases,
            context=context,
            size=size,
            empty_fraction=empty_fraction,
            augment=augment,
            seed=seed,
            preprocessing=Preprocessing() if preprocessing is None else preprocessing,
            cache_dir=cache_dir,
            num_workers=num_workers,
        )

    def roi(self, volume: PreparedVolume) -> tuple[slice, slice]:
        """In-plane (rows, columns) crop of a volume: its liver box plus the margin."""
        if volume.liver_bbox is None:
            return slice(0, 0), slice(0, 0)
        (_, _), (y0, y1), (x0, x1) = volume.liver_bbox
        my, mx = self.margin
        h, w = volume.shape[1:]
        return slice(max(0, y0 - my), min(h, y1 + my)), slice(max(0, x0 - mx), min(w, x1 + mx))

    def _candidates(self, volume: PreparedVolume) -> tuple[np.ndarray, np.ndarray]:
        liver = volume.liver_per_slice > 0
        tumour = volume.tumour_per_slice > 0
        return np.flatnonzero(tumour), np.flatnonzero(liver & ~tumour)

    def _weigh_positives(self, positives: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if not (self.lesion_balance or self.contrast_balance) or not positives:
            return positives
        n, expected = len(positives), np.ones(len(positives))
        if self.lesion_balance:
            weights = np.array([self.lesion_slice_weights(v)[k] for v, k in positives])
            b = self.lesion_balance
            expected *= (1.0 - b) + b * n * weights / weights.sum()
        if self.contrast_balance:
            classes = np.array([self.slice_contrast_classes(v)[k] for v, k in positives])
            counts = np.bincount(classes, minlength=3)
            share = 1.0 / (np.count_nonzero(counts) * counts[classes])  # each class alike
            c = self.contrast_balance
            expected *= (1.0 - c) + c * n * share
        expected *= n / expected.sum()  # times served, mean 1
        # systematic sampling: n slices in all (a DataLoader's sampler keeps the length it
        # was built with), each served floor or ceil of its expected times
        offset = np.random.default_rng([self.seed, self.epoch, 7927]).random()
        picks = np.searchsorted(np.cumsum(expected), offset + np.arange(n), side="right")
        return [positives[i] for i in np.minimum(picks, n - 1)]

    def lesion_slice_weights(self, v: int) -> np.ndarray:
        """Per slice of volume ``v``, the sum over the lesions in it of 1 / (slices each spans).

        A lesion is a 26-connected tumour (label 2) component; summed over its slices its
        weights make 1, so each lesion weighs the same (``lesion_balance``). Shape (D,).
        """
        if v not in self._lesion_weights:
            from scipy import ndimage

            components, _ = ndimage.label(
                np.asarray(self.volumes[v].labels()) == 2, structure=np.ones((3, 3, 3), bool)
            )
            weights = np.zeros(self.volumes[v].shape[0])
            for box in ndimage.find_objects(components):
                if box is not None:
                    weights[box[0]] += 1.0 / (box[0].stop - box[0].start)
            self._lesion_weights[v] = weights
        return self._lesion_weights[v]

    def lesion_contrasts(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`lesion_contrasts` of volume ``v``, on its windowed image, in HU.

        Exact without CLAHE; approximate with it, which bends the scale.
        """
        volume = self.volumes[v]
        low, high = self.preprocessing.hu_window
        # window levels -> HU by scaling the contrasts: no float copy of the whole volume
        components, contrast = lesion_contrasts(volume.image_u8(), np.asarray(volume.labels()))
        return components, contrast * ((high - low) / 255.0)

    def slice_contrast_classes(self, v: int) -> np.ndarray:
        """Per slice of volume ``v``: 0 dark, 1 near-isodense, 2 bright (see ``contrast_balance``).

        The class of the lesion with the most voxels in the slice, by
        :meth:`lesion_contrasts` (under -15 HU, within 15 HU, over 15 HU); 0 where the
        slice holds no tumour. Shape (D,).
        """
        if v not in self._slice_contrast:
            components, contrast = self.lesion_contrasts(v)
            contrast = np.nan_to_num(contrast, nan=-np.inf)  # no liver around it: dark
            kind = np.digitize(contrast, [-CONTRAST_HU, CONTRAST_HU]).astype(np.int64)
            per_slice = np.zeros(components.shape[0], dtype=np.int64)
            for k, plane in enumerate(components):
                counts = np.bincount(plane.ravel(), minlength=len(contrast))
                counts[0] = 0
                if counts.any():
                    per_slice[k] = kind[int(np.argmax(counts))]
            self._slice_contrast[v] = per_slice
        return self._slice_contrast[v]

    def _sample(
        self, volume: PreparedVolume, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = self.roi(volume)
        ks = self._neighbours(volume, k)
        image = volume.image((ks, rows, cols))
        labels = np.asarray(volume.labels()[ks, rows, cols])
        inside = None
        if self.mask_outside:
            inside = labels > 0
            if self.mask_dilation:
                inside = _dilate(inside, int(rng.integers(0, self.mask_dilation + 1)))
            if self.mask_fill_holes:
                inside = _fill_holes(inside)
            image = np.where(inside, image, np.float32(0.0))
        if self.darkness is not None:  # the centre slice's, over the mask it is shown with
            mask = np.ones(image.shape[1:], bool) if inside is None else inside[self.context]
            dark = darkness_channel(image[self.context], mask, self.darkness)
            image = np.concatenate([image, dark[None]])
        target = (labels[self.context] == 2).astype(np.int64)
        return image, target


def lesion_contrasts(
    image: np.ndarray, labels: np.ndarray, ring: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Each lesion's contrast to the liver around it.

    A lesion is a 26-connected tumour (label 2) component; its contrast is its mean in
    ``image`` minus the mean of the liver (label 1) within ``ring`` voxels of it
    (6-connected steps), NaN where no liver lies that close.

    Args:
        image: (D, H, W) intensities, for example Hounsfield units.
        labels: (D, H, W) LiTS labels (0 background, 1 liver, 2 tumour).
        ring: how far around each lesion the liver is measured, voxels (>= 1).

    Returns:
        ``(components, contrast)``: (D, H, W) int32 lesion numbers (0: none) and
        (n + 1,) float64 contrast per lesion number (entry 0 unused, NaN).

    Example:
        >>> labels = np.ones((3, 8, 8), np.uint8)
        >>> labels[1, 2:4, 2:4] = 2
        >>> image = np.where(labels == 2, 60.0, 100.0)
        >>> components, contrast = lesion_contrasts(image, labels)
        >>> int(components.max()), contrast[1:].tolist()
        (1, [-40.0])
    """
    from scipy import ndimage

    check_positive("ring", ring)
    components, n = ndimage.label(labels == 2, structure=np.ones((3, 3, 3), bool))
    contrast = np.full(n + 1, np.nan)
    for number, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, b.start - ring), b.stop + ring) for b in box)
        lesion = components[box] == number
        around = ndimage.binary_dilation(lesion, iterations=ring) & ~lesion & (labels[box] == 1)
        if around.any():
            values = np.asarray(image[box], dtype=np.float64)
            contrast[number] = values[lesion].mean() - values[around].mean()
    return components.astype(np.int32, copy=False), contrast


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow each (h, w) slice of a (C, h, w) mask by ``radius`` pixels (Euclidean)."""
    if radius <= 0:
        return mask
    from scipy import ndimage

    return np.stack([ndimage.distance_transform_edt(~m) <= radius for m in mask])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of each (h, w) slice of a (C, h, w) mask."""
    from scipy import ndimage

    return np.stack([ndimage.binary_fill_holes(m) for m in mask])


def _random_crop(
    image: np.ndarray, target: np.ndarray, crop: int, lesion: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``crop`` x ``crop`` window of ``image`` (C, H, W) and ``target`` (H, W).

    With probability ``lesion`` (and a foreground pixel in ``target``) the window is
    centred on a random foreground pixel, shifted to stay inside; otherwise it lies
    anywhere. ``crop`` must not exceed H or W (:class:`TumourSliceDataset` checks it).

    Example:
        >>> target = np.zeros((8, 8), np.int64); target[6, 6] = 1
        >>> image = np.zeros((1, 8, 8), np.float32)
        >>> _, t = _random_crop(image, target, 4, 1.0, np.random.default_rng(0))
        >>> t.shape, int(t.sum())
        ((4, 4), 1)
    """
    h, w = target.shape
    fg = np.flatnonzero(target > 0)
    if len(fg) and rng.random() < lesion:
        r, c = divmod(int(fg[rng.integers(len(fg))]), w)
        top = min(max(r - crop // 2, 0), h - crop)
        left = min(max(c - crop // 2, 0), w - crop)
    else:
        top, left = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
    rows, cols = slice(top, top + crop), slice(left, left + crop)
    return image[:, rows, cols], target[rows, cols]
