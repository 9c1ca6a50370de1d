"""Preprocess volumes once: a disk cache of uint8 memory maps and a process pool.

A cached volume is the HU-windowed (and CLAHE-equalised) uint8 image plus its uint8
labels, each an ``.npy`` file opened as a memory map, and a small JSON record (spacing,
per-slice label counts, liver bounding box and the normalisation constants). The float
image of :func:`featsup.data.preprocess_volume` is ``(u8 - offset) * scale`` and is made
per slice when a sample is read, which keeps the cache four times smaller than float32.

The cache key hashes the resolved file paths, their sizes and modification times and the
:class:`~featsup.data.Preprocessing`, so editing a file or changing a setting never reads
stale data.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featsup.data.lits import LitsCase, load_case
from featsup.data.preprocess import Preprocessing, _equalized_uint8, _normalization_constants
from featsup.metrics import bounding_box

_VERSION = 1


@dataclass
class PreparedVolume:
    """A preprocessed case: uint8 image and labels (memory-mapped when cached) plus facts."""

    case_id: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    liver_per_slice: np.ndarray  # (D,) voxels with label >= 1
    tumour_per_slice: np.ndarray  # (D,) voxels with label 2
    liver_bbox: tuple[tuple[int, int], ...] | None  # (start, stop) per axis of label >= 1
    offset: float
    scale: float
    image_path: Path | None = None
    label_path: Path | None = None
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def image_u8(self) -> np.ndarray:
        """(D, H, W) uint8 windowed image (a read-only memory map when cached)."""
        return self._get("image", self.image_path)

    def labels(self) -> np.ndarray:
        """(D, H, W) uint8 labels in {0, 1, 2}."""
        return self._get("labels", self.label_path)

    def image(self, index: Any) -> np.ndarray:
        """Normalised float32 image ``image_u8()[index]`` (as ``preprocess_volume`` gives)."""
        raw = np.asarray(self.image_u8()[index], dtype=np.float32)
        return (raw - np.float32(self.offset)) * np.float32(self.scale)

    def _get(self, name: str, path: Path | None) -> np.ndarray:
        if name not in self._arrays:
            if path is None:
                raise RuntimeError(f"{self.case_id}: the {name} array is missing")
            self._arrays[name] = np.load(path, mmap_mode="r")
        return self._arrays[name]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.image_path is not None:  # reopen memory maps in the receiving process
            state["_arrays"] = {}
        return state


def _stat(path: Path | None) -> list[Any]:
    if path is None:
        return [None]
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_key(case: LitsCase, preprocessing: Preprocessing) -> str:
    """Hash of the case's files (path, size, mtime) and the preprocessing."""
    payload = json.dumps(
        [_VERSION, _stat(case.volume_path), _stat(case.segmentation_path), preprocessing.to_dict()],
        sort_keys=True,
    )
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def _bbox(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    box = bounding_box(mask)
    return None if box is None else tuple((int(b.start), int(b.stop)) for b in box)


def _preprocess(
    case: LitsCase, preprocessing: Preprocessing
) -> tuple[PreparedVolume, np.ndarray, np.ndarray]:
    loaded = load_case(case)
    u8 = _equalized_uint8(loaded.volume, preprocessing)
    labels = loaded.labels if loaded.labels is not None else np.zeros(u8.shape, dtype=np.uint8)
    offset, scale = _normalization_constants(u8, preprocessing.normalization)
    per_slice = labels.reshape(labels.shape[0], -1)
    prepared = PreparedVolume(
        case_id=case.case_id,
        spacing=loaded.spacing,
        shape=(u8.shape[0], u8.shape[1], u8.shape[2]),
        liver_per_slice=np.count_nonzero(per_slice, axis=1),
        tumour_per_slice=np.count_nonzero(per_slice == 2, axis=1),
        liver_bbox=_bbox(labels > 0),
        offset=offset,
        scale=scale,
    )
    return prepared, u8, labels


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _meta_of(prepared: PreparedVolume) -> dict[str, Any]:
    return {
        "case_id": prepared.case_id,
        "spacing": list(prepared.spacing),
        "shape": list(prepared.shape),
        "liver_per_slice": prepared.liver_per_slice.tolist(),
        "tumour_per_slice": prepared.tumour_per_slice.tolist(),
        "liver_bbox": prepared.liver_bbox,
        "offset": prepared.offset,
        "scale": prepared.scale,
    }


def _from_meta(meta: dict[str, Any], image_path: Path, label_path: Path) -> PreparedVolume:
    bbox = meta["liver_bbox"]
    return PreparedVolume(
        case_id=meta["case_id"],
        spacing=tuple(meta["spacing"]),  # type: ignore[arg-type]
        shape=tuple(meta["shape"]),  # type: ignore[arg-type]
        liver_per_slice=np.asarray(meta["liver_per_slice"], dtype=np.int64),
        tumour_per_slice=np.asarray(meta["tumour_per_slice"], dtype=np.int64),
        liver_bbox=None if bbox is None else tuple(tuple(b) for b in bbox),
        offset=float(meta["offset"]),
        scale=float(meta["scale"]),
        image_path=image_path,
        label_path=label_path,
    )


def _paths(case: LitsCase, preprocessing: Preprocessing, folder: Path) -> tuple[Path, Path, Path]:
    key = cache_key(case, preprocessing)
    return folder / f"{key}.json", folder / f"{key}.image.npy", folder / f"{key}.labels.npy"


def cached_volume(
    case: LitsCase, preprocessing: Preprocessing, cache_dir: str | os.PathLike[str]
) -> PreparedVolume | None:
    """The cache entry of a case, or None when it is not (completely) there."""
    meta_path, image_path, label_path = _paths(case, preprocessing, Path(cache_dir))
    if meta_path.is_file() and image_path.is_file() and label_path.is_file():
        return _from_meta(json.loads(meta_path.read_text()), image_path, label_path)
    return None


def prepare_volume(
    case: LitsCase, preprocessing: Preprocessing, cache_dir: str | os.PathLike[str] | None
) -> PreparedVolume:
    """Preprocess one case, or reuse it from ``cache_dir`` when already there."""
    if cache_dir is None:
        prepared, u8, labels = _preprocess(case, preprocessing)
        prepared._arrays = {"image": u8, "labels": labels}
        return prepared
    hit = cached_volume(case, preprocessing, cache_dir)
    if hit is not None:
        return hit
    meta_path, image_path, label_path = _paths(case, preprocessing, Path(cache_dir))
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    prepared, u8, labels = _preprocess(case, preprocessing)
    _save_npy(image_path, u8)
    _save_npy(label_path, labels)
    tmp = meta_path.with_name(f"{meta_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_meta_of(prepared)))
    os.replace(tmp, meta_path)  # written last: marks the entry complete
    return _from_meta(_meta_of(prepared), image_path, label_path)


def _default_start_method() -> str:
    # fork is fast and works from notebooks and stdin; the workers use numpy, nibabel and
    # OpenCV only (no torch ops), which are safe after fork
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def prepare_volumes(
    cases: Sequence[LitsCase],
    preprocessing: Preprocessing,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    num_workers: int = 0,
    start_method: str | None = None,
) -> list[PreparedVolume]:
    """Preprocess many cases, the ones not cached in a process pool of ``num_workers``.

    Without ``cache_dir`` the uint8 arrays come back to this process and stay in memory;
    with it the workers write memory maps and only small records travel back.

    Args:
        cases: the cases to prepare.
        preprocessing: the intensity preprocessing.
        cache_dir: cache folder, or None to keep everything in memory.
        num_workers: worker processes; 0 prepares in this process.
        start_method: multiprocessing start method; None uses fork where available.

    Returns:
        One :class:`PreparedVolume` per case, in order.
    """
    out: list[PreparedVolume | None] = [
        None if cache_dir is None else cached_volume(c, preprocessing, cache_dir) for c in cases
    ]
    todo = [i for i, v in enumerate(out) if v is None]
    if num_workers <= 0 or len(todo) <= 1:
        for i in todo:
            out[i] = prepare_volume(cases[i], preprocessing, cache_dir)
    else:
        context = multiprocessing.get_context(start_method or _default_start_method())
        workers = min(num_workers, len(todo))
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {
                i: pool.submit(prepare_volume, cases[i], preprocessing, cache_dir) for i in todo
            }
            for i, future in futures.items():
                out[i] = future.result()
    return [v for v in out if v is not None]
