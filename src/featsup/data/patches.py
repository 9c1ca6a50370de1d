"""3D patch dataset for a volumetric tumour stage.

:class:`TumourPatchDataset` serves fixed-size 3D patches from each case's liver ROI (the
liver's 3D bounding box plus a margin), preprocessed as the slice datasets are (the same
:class:`~featsup.data.Preprocessing`, cache and process pool), as::

    {"image": float32 tensor (1, D, H, W), "target": int64 tensor (D, H, W),
     "case_id": str, "origin": (z, y, x) of the patch in the volume grid,
     "tumour_centred": bool}

Tumour is rare, so a share ``tumour_fraction`` of each case's patches is centred on a
tumour voxel drawn uniformly from the case's tumour voxels; the others are placed
uniformly inside the ROI. Patches never leave the ROI: where the ROI is smaller than the
patch, the patch is centred on it and padded with zeros (image and target), the value of
the masked-out image. Positions, flips and the mask dilation are drawn from
``(seed, epoch, index)``: call :meth:`TumourPatchDataset.set_epoch` at the start of each
epoch to redraw them reproducibly, whatever the number of loader workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from featsup._checks import check_in_range, check_positive
from featsup.data._cache import PreparedVolume, prepare_volumes
from featsup.data._roi import _margin3
from featsup.data.lits import CaseSource, LitsCase, find_cases
from featsup.data.preprocess import Preprocessing
from featsup.data.slices import _dilate

__all__ = ["TumourPatchDataset"]

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def _patch3(patch: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(patch) if isinstance(patch, Sequence) else ()
    if len(values) != 3 or any(not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        raise ValueError(
            f"patch: expected three ints >= 1 (D, H, W), got {patch!r}; fix: e.g. (32, 64, 64)"
        )
    return int(values[0]), int(values[1]), int(values[2])


def _read(array: Any, box: Box, origin: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``array[origin : origin + size]`` restricted to ``box``, zero elsewhere."""
    out = np.zeros(tuple(size), dtype=np.float32 if callable(array) else np.uint8)
    src, dst = [], []
    for (lo, hi), o, n in zip(box, origin, size, strict=True):
        a, b = max(lo, o), min(hi, o + n)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - o, b - o))
    out[tuple(dst)] = array(tuple(src)) if callable(array) else array[tuple(src)]
    return out


class TumourPatchDataset(Dataset[dict[str, Any]]):
    """Tumour stage in 3D: patches of the liver ROI, target tumour (1) vs the rest (0).

    The 3D counterpart of :class:`~featsup.data.TumourSliceDataset`: the same
    preprocessing, the image zeroed outside the liver (``mask_outside``, optionally
    grown in-plane by a random radius as there), one channel (no 2.5D context). Each
    case with liver gives ``patches_per_case`` patches per epoch, interleaved across
    cases (index ``i`` is case ``i % cases``). Of a case's patches, ``tumour_fraction``
    (rounded down, spread evenly over its indices) are centred on a tumour voxel; a case
    without tumour serves random ROI patches only, which lowers the realised share.

    Args:
        cases: a LiTS folder, a manifest, or a list of cases / ``(volume, segmentation)``.
        patch: (D, H, W) patch size in voxels.
        patches_per_case: patches served per case and epoch.
        tumour_fraction: share of patches centred on a tumour voxel, in [0, 1].
        margin: voxels around the liver box, one int or (D, H, W).
        mask_outside: zero the image outside the liver.
        mask_dilation: with ``mask_outside``, grow the liver mask in-plane by a random
            radius of 0..``mask_dilation`` pixels per patch (as the slice dataset does).
        flip_axes: patch axes (0 = D, 1 = H, 2 = W) each flipped with probability
            ``flip_p``; ``()`` flips nothing.
        flip_p: probability of each flip.
        seed, preprocessing, cache_dir, num_workers: as in
            :class:`~featsup.data.LiverSliceDataset`.

    Raises:
        ValueError: for a bad option or when no case contains liver.

    Example:
        >>> import tempfile
        >>> from featsup.data import write_phantom_dataset
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_phantom_dataset(folder, 1, shape=(16, 64, 64))
        >>> ds = TumourPatchDataset(folder, patch=(8, 32, 32), patches_per_case=4)
        >>> item = ds[0]
        >>> len(ds), tuple(item["image"].shape), tuple(item["target"].shape)
        (4, (1, 8, 32, 32), (8, 32, 32))
    """

    def __init__(
        self,
        cases: CaseSource,
        *,
        patch: Sequence[int],
        patches_per_case: int = 16,
        tumour_fraction: float = 0.5,
        margin: int | Sequence[int] = (1, 8, 8),
        mask_outside: bool = True,
        mask_dilation: int = 0,
        flip_axes: Sequence[int] = (),
        flip_p: float = 0.5,
        seed: int = 0,
        preprocessing: Preprocessing | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        num_workers: int = 0,
    ) -> None:
        self.patch = _patch3(patch)
        self.patches_per_case = int(check_positive("patches_per_case", patches_per_case))
        self.tumour_fraction = float(check_in_range("tumour_fraction", tumour_fraction, 0, 1))
        self.margin = _margin3(margin)
        self.mask_outside = bool(mask_outside)
        self.mask_dilation = int(check_positive("mask_dilation", mask_dilation, strict=False))
        if any(a not in (0, 1, 2) for a in flip_axes) or len(set(flip_axes)) != len(flip_axes):
            raise ValueError(f"flip_axes: expected distinct axes among 0, 1, 2, got {flip_axes!r}")
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.flip_p = float(check_in_range("flip_p", flip_p, 0.0, 1.0))
        self.seed, self.epoch = int(seed), 0
        preprocessing = Preprocessing() if preprocessing is None else preprocessing
        if not isinstance(preprocessing, Preprocessing):
            raise TypeError(
                f"preprocessing: expected a Preprocessing, got {type(preprocessing).__name__}; "
                "fix: Preprocessing.from_dict(d) for a dict"
            )
        self.preprocessing = preprocessing
        listed = list(cases) if not isinstance(cases, (str, os.PathLike)) else None
        self.cases: list[LitsCase] = (
            listed if listed and all(isinstance(c, LitsCase) for c in listed) else find_cases(cases)
        )
        prepared = prepare_volumes(
            self.cases, preprocessing, cache_dir=cache_dir, num_workers=num_workers
        )
        self.volumes: list[PreparedVolume] = [v for v in prepared if v.liver_bbox is not None]
        if not self.volumes:
            raise ValueError(
                f"cases: expected at least one case with liver, got none of {len(self.cases)}; "
                "fix: check that the segmentations contain label 1 or 2"
            )

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Median voxel size (D, H, W) in mm over the volumes.

        What a 3D model's pooling is chosen from (:func:`featsup.models.pooling_for_spacing`).
        """
        median = np.median(np.array([v.spacing for v in self.volumes], dtype=float), axis=0)
        return float(median[0]), float(median[1]), float(median[2])

    def roi(self, volume: PreparedVolume) -> Box:
        """(start, stop) along (D, H, W) of a volume's liver box plus the margin."""
        if volume.liver_bbox is None:
            raise ValueError(f"volume: expected a case with liver, got {volume.case_id!r}")
        return tuple(  # type: ignore[return-value]
            (max(0, a - m), min(n, b + m))
            for (a, b), m, n in zip(volume.liver_bbox, self.margin, volume.shape, strict=True)
        )

    def set_epoch(self, epoch: int) -> None:
        """Redraw the patch positions, flips and mask dilations for ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.volumes) * self.patches_per_case

    def _is_tumour_centred(self, index: int) -> bool:
        k, f = index // len(self.volumes), self.tumour_fraction
        return int((k + 1) * f + 1e-9) > int(k * f + 1e-9)

    def _tumour_voxel(self, volume: PreparedVolume, rng: np.random.Generator) -> np.ndarray:
        counts = volume.tumour_per_slice
        z = int(rng.choice(len(counts), p=counts / counts.sum()))
        rows, cols = np.nonzero(np.asarray(volume.labels()[z]) == 2)
        j = int(rng.integers(len(rows)))
        return np.array([z, rows[j], cols[j]])

    def _origin(self, box: Box, centre: np.ndarray | None, rng: np.random.Generator) -> list[int]:
        """Patch start per axis: around ``centre`` (or uniform) and kept inside ``box``."""
        origin = []
        for axis, ((lo, hi), n) in enumerate(zip(box, self.patch, strict=True)):
            last = hi - n
            if last < lo:  # ROI smaller than the patch: centre the patch on it
                origin.append(lo - (n - (hi - lo)) // 2)
            elif centre is None:
                origin.append(int(rng.integers(lo, last + 1)))
            else:
                origin.append(int(np.clip(centre[axis] - n // 2, lo, last)))
        return origin

    def _labels(self, volume: PreparedVolume, box: Box, origin: list[int], grow: int) -> np.ndarray:
        """Labels of the patch, ``grow`` pixels wider in-plane (zero outside ``box``)."""
        wide = [origin[0], origin[1] - grow, origin[2] - grow]
        size = [self.patch[0], self.patch[1] + 2 * grow, self.patch[2] + 2 * grow]
        return _read(volume.labels(), box, wide, size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index: expected in [0, {len(self)}), got {index}")
        index %= len(self)
        volume = self.volumes[index % len(self.volumes)]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        centred = self._is_tumour_centred(index) and volume.tumour_per_slice.sum() > 0
        box = self.roi(volume)
        origin = self._origin(box, self._tumour_voxel(volume, rng) if centred else None, rng)
        grow = int(rng.integers(0, self.mask_dilation + 1)) if self.mask_outside else 0
        wide = self._labels(volume, box, origin, grow)
        labels = wide[:, grow : grow + self.patch[1], grow : grow + self.patch[2]]
        image = _read(volume.image, box, origin, self.patch)
        if self.mask_outside:
            inside = _dilate(wide > 0, grow)[
                :, grow : grow + self.patch[1], grow : grow + self.patch[2]
            ]
            image = np.where(inside, image, np.float32(0.0))
        target = (labels == 2).astype(np.int64)
        flips = rng.random(3) < self.flip_p
        axes = tuple(a for a in self.flip_axes if flips[a])
        if axes:
            image, target = np.flip(image, axes), np.flip(target, axes)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)[None]),
            "target": torch.from_numpy(np.ascontiguousarray(target)),
            "case_id": volume.case_id,
            "origin": tuple(origin),
            "tumour_centred": bool(centred),
        }

    def __repr__(self) -> str:
        return (
            f"TumourPatchDataset(cases={len(self.volumes)}, patches={len(self)}, "
            f"patch={self.patch}, tumour_fraction={self.tumour_fraction})"
        )
