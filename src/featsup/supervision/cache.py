"""Teacher features for a whole dataset (the paper's "predict and save" step).

:class:`TeacherFeatureCache` holds a teacher's features for every sample of a dataset, in
memory or as ``.npy`` memory maps on disk; :func:`build_feature_cache` fills one. Both
are agnostic of the spatial rank: 2D slices give (N, C, H, W) levels, 3D patches
(N, C, D, H, W) ones. A cache is keyed by sample index, so it holds only while
``dataset[i]`` stays the same: with a dataset that redraws its samples per epoch (the
patch positions of :class:`~featsup.data.TumourPatchDataset`), keep one epoch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from featsup._checks import check_positive

__all__ = ["TeacherFeatureCache", "build_feature_cache", "unpack_item"]

_NP_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}


# ---------------------------------------------------------------------- dataset access
def unpack_item(item: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(image, target, ...)`` -> (image, target); a lone tensor is a target.

    A mapping with a ``"target"`` (and usually an ``"image"``), as the featsup datasets
    serve, is unpacked by key.

    Raises:
        ValueError: for a tuple of fewer than two items, or a mapping without "target".

    Example:
        >>> image, target = unpack_item({"image": torch.zeros(1, 2, 2), "target": torch.ones(2, 2)})
        >>> tuple(image.shape), tuple(target.shape)
        ((1, 2, 2), (2, 2))
    """
    if isinstance(item, Mapping):
        if "target" not in item:
            raise ValueError(
                f"dataset: expected items with a 'target' key, got keys {sorted(item)}; "
                "fix: serve {'image': ..., 'target': ...} or (image, target) pairs"
            )
        image = item.get("image")
        return (None if image is None else torch.as_tensor(image)), torch.as_tensor(item["target"])
    if isinstance(item, (tuple, list)):
        if len(item) < 2:
            raise ValueError(
                f"dataset: expected items (image, target, ...) or a target, got a {len(item)}-tuple"
            )
        return torch.as_tensor(item[0]), torch.as_tensor(item[1])
    return None, torch.as_tensor(item)


def _batches(dataset: Any, batch_size: int) -> Any:
    for start in range(0, len(dataset), batch_size):
        items = [
            unpack_item(dataset[i]) for i in range(start, min(start + batch_size, len(dataset)))
        ]
        targets = torch.stack([t for _, t in items])
        first = items[0][0]
        images = None if first is None else torch.stack([i for i, _ in items])  # type: ignore[misc]
        yield images, targets


# ---------------------------------------------------------------------- feature cache
class TeacherFeatureCache:
    """Teacher features of every sample of a dataset, looked up by sample index.

    Build one with :meth:`FeatureSupervisor.cache_teacher_features
    <featsup.supervision.FeatureSupervisor.cache_teacher_features>`; reopen one written
    to disk with :meth:`load`. Memory: ``N * sum_l C_l * H_l * W_l`` values per level set
    (``* D_l`` for 3D levels; 2 bytes each in float16).

    Args:
        features: level name -> (N, C, H, W) or (N, C, D, H, W) tensor or array (a
            memory map works), all with the same N.

    Example:
        >>> cache = TeacherFeatureCache({"x4_0": torch.arange(8.0).reshape(4, 2, 1, 1)})
        >>> cache.lookup(torch.tensor([3, 0]))["x4_0"].flatten().tolist()
        [6.0, 7.0, 0.0, 1.0]
    """

    def __init__(self, features: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        if not features:
            raise ValueError("features: expected at least one level, got an empty mapping")
        lengths = {name: len(array) for name, array in features.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"features: expected one sample count for all levels, got {lengths}")
        self._features = dict(features)

    @property
    def names(self) -> list[str]:
        """The cached (teacher) level names."""
        return list(self._features)

    def __len__(self) -> int:
        return len(next(iter(self._features.values())))

    def lookup(
        self,
        index: int | Sequence[int] | torch.Tensor | np.ndarray,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, torch.Tensor]:
        """Return the (B, C, H, W) or (B, C, D, H, W) features of samples ``index`` per level.

        Raises:
            IndexError: if an index is outside ``[0, len(cache))``.
        """
        idx = np.atleast_1d(np.asarray(torch.as_tensor(index).cpu(), dtype=np.int64))
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index: expected values in [0, {len(self)}), got {idx.tolist()}")
        out = {}
        for name, array in self._features.items():
            if isinstance(array, torch.Tensor):
                values = array[torch.from_numpy(idx).to(array.device)]
            else:
                values = torch.from_numpy(np.ascontiguousarray(array[idx]))
            # move at the stored precision (half the bytes for float16), convert there
            out[name] = values.to(device=device).to(dtype)
        return out

    def to(self, device: torch.device | str) -> TeacherFeatureCache:
        """Return a cache whose features live on ``device`` (a memory map is read in).

        On a GPU this makes :meth:`lookup` a gather in device memory instead of a gather
        on the CPU and a host-to-device copy per step; it needs the whole cache to fit.

        Example:
            >>> cache = TeacherFeatureCache({"x4_0": torch.zeros(4, 2, 1, 1)})
            >>> cache.to("cpu").lookup([1])["x4_0"].shape
            torch.Size([1, 2, 1, 1])
        """
        moved = {
            name: (a if isinstance(a, torch.Tensor) else torch.from_numpy(np.array(a))).to(device)
            for name, a in self._features.items()
        }
        return TeacherFeatureCache(moved)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TeacherFeatureCache:
        """Open a cache written to ``path`` (memory-mapped, read-only)."""
        root = Path(path)
        meta_file = root / "meta.json"
        if not meta_file.is_file():
            raise ValueError(f"path: expected a feature cache with meta.json, got {str(root)!r}")
        names = json.loads(meta_file.read_text())["names"]
        return cls({n: np.load(root / f"{k}.npy", mmap_mode="r") for k, n in enumerate(names)})


def build_feature_cache(
    encode: Callable[[torch.Tensor | None, torch.Tensor], list[torch.Tensor]],
    dataset: Any,
    names: list[str],
    *,
    batch_size: int = 16,
    path: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float16,
    progress: bool = False,
) -> TeacherFeatureCache:
    """Run ``encode(image, target)`` over ``dataset`` in order and store the levels ``names``."""
    if dtype not in _NP_DTYPES:
        raise ValueError(f"dtype: expected torch.float16 or torch.float32, got {dtype}")
    check_positive("batch_size", batch_size)
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset: expected at least one sample, got an empty dataset")
    root = None if path is None else Path(path)
    stores: dict[str, Any] = {}
    start = 0
    for image, target in tqdm(
        _batches(dataset, batch_size), total=-(-n // batch_size), disable=not progress,
        desc="teacher features",
    ):  # fmt: skip
        for k, (name, feature) in enumerate(zip(names, encode(image, target), strict=True)):
            if name not in stores:
                stores[name] = _allocate(root, k, (n, *feature.shape[1:]), dtype)
            values = feature.detach().to("cpu", dtype)
            if isinstance(stores[name], torch.Tensor):
                stores[name][start : start + len(values)] = values
            else:
                stores[name][start : start + len(values)] = values.numpy()
        start += len(target)
    if root is not None:
        for store in stores.values():
            store.flush()
        (root / "meta.json").write_text(json.dumps({"names": names, "length": n}))
        return TeacherFeatureCache.load(root)
    return TeacherFeatureCache(stores)


def _allocate(root: Path | None, k: int, shape: tuple[int, ...], dtype: torch.dtype) -> Any:
    if root is None:
        return torch.empty(shape, dtype=dtype)
    root.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(
        root / f"{k}.npy", mode="w+", dtype=_NP_DTYPES[dtype], shape=shape
    )
