"""The teacher side of feature supervision: training the encoding UNet++ and caching features.

- :func:`train_encoding_teacher` trains the paper's encoding UNet++ (no skip connections,
  deep supervision; section 3.2.1) label -> label until its reconstruction Dice passes a
  threshold, and saves it; :func:`load_encoding_teacher` rebuilds it.
- :class:`TeacherFeatureCache` holds a teacher's features for a whole dataset (the paper's
  "predict and save" step), in memory or as ``.npy`` memory maps on disk.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from featsup._checks import check_in_range, check_positive
from featsup.models.unetpp import UNetPlusPlus

__all__ = [
    "TeacherFeatureCache",
    "build_feature_cache",
    "load_encoding_teacher",
    "one_hot",
    "train_encoding_teacher",
]

_log = logging.getLogger(__name__)
_NP_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}


# ---------------------------------------------------------------------- dataset access
def _unpack(item: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(image, target, ...)`` -> (image, target); a lone tensor is a target."""
    if isinstance(item, (tuple, list)):
        if len(item) < 2:
            raise ValueError(
                f"dataset: expected items (image, target, ...) or a target, got a {len(item)}-tuple"
            )
        return torch.as_tensor(item[0]), torch.as_tensor(item[1])
    return None, torch.as_tensor(item)


def _batches(dataset: Any, batch_size: int) -> Any:
    for start in range(0, len(dataset), batch_size):
        items = [_unpack(dataset[i]) for i in range(start, min(start + batch_size, len(dataset)))]
        targets = torch.stack([t for _, t in items])
        first = items[0][0]
        images = None if first is None else torch.stack([i for i, _ in items])  # type: ignore[misc]
        yield images, targets


def one_hot(target: torch.Tensor, num_classes: int, *, dtype: torch.dtype) -> torch.Tensor:
    """One-hot ``(B, K, *spatial)`` map of an integer ``(B, *spatial)`` or ``(B, 1, ...)`` target.

    A floating ``(B, K, ...)`` target is taken as one-hot already and only cast.

    Raises:
        ValueError: if labels fall outside ``[0, num_classes)``.

    Example:
        >>> one_hot(torch.tensor([[[0, 2]]]), 3, dtype=torch.float32)[0, :, 0].tolist()
        [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    if target.is_floating_point() and target.ndim >= 4 and target.shape[1] == num_classes:
        return target.to(dtype)
    if target.ndim >= 4 and target.shape[1] == 1:
        target = target[:, 0]
    target = target.long()
    low, high = torch.aminmax(target)
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"target: expected labels in [0, {num_classes}), got [{int(low)}, {int(high)}]; "
            "fix: num_classes"
        )
    shape = (target.shape[0], num_classes, *target.shape[1:])
    return torch.zeros(shape, dtype=dtype, device=target.device).scatter_(1, target[:, None], 1.0)


# ---------------------------------------------------------------------- feature cache
class TeacherFeatureCache:
    """Teacher features of every sample of a dataset, looked up by sample index.

    Build one with :meth:`FeatureSupervisor.cache_teacher_features
    <featsup.supervision.FeatureSupervisor.cache_teacher_features>`; reopen one written
    to disk with :meth:`load`. Memory: ``N * sum_l C_l * H_l * W_l`` values per level set
    (2 bytes each in float16).

    Args:
        features: level name -> (N, C, H, W) tensor or array (a memory map works), all
            with the same N.

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
        """Return the (B, C, H, W) features of samples ``index`` for every cached level.

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


# ---------------------------------------------------------------------- encoding teacher
def _label_tensor(labels: Any) -> torch.Tensor:
    """All label maps as one (N, H, W) int64 tensor."""
    if isinstance(labels, torch.Tensor | np.ndarray):
        data = torch.as_tensor(labels)
    else:
        data = torch.stack([_unpack(labels[i])[1] for i in range(len(labels))])
    if data.ndim == 4 and data.shape[1] == 1:
        data = data[:, 0]
    if data.ndim != 3 or data.is_floating_point() or len(data) == 0:
        raise ValueError(
            f"labels: expected integer label maps (N, H, W), got {tuple(data.shape)} "
            f"{data.dtype}; fix: pass class indices, not one-hot"
        )
    return data.long()


def reconstruction_dice(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean over foreground classes of the Dice of ``argmax(logits)`` against ``labels``.

    Sums run over the whole batch; a class absent from both is skipped (1.0 if all are).
    """
    pred = logits.argmax(1)
    scores = []
    for c in range(1, num_classes):
        a, b = pred == c, labels == c
        denom = int(a.sum() + b.sum())
        if denom:
            scores.append(2.0 * int((a & b).sum()) / denom)
    return float(np.mean(scores)) if scores else 1.0


def train_encoding_teacher(
    labels: Any,
    *,
    num_classes: int,
    widths: Sequence[int] = (32, 64, 128, 256, 512),
    steps: int = 2000,
    batch_size: int = 8,
    lr: float = 1e-3,
    dice_threshold: float = 0.98,
    eval_every: int = 25,
    device: torch.device | str = "cpu",
    path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> UNetPlusPlus:
    """Train the encoding UNet++ label -> label until it reconstructs the labels.

    The network is featsup's :class:`~featsup.models.UNetPlusPlus` with
    ``skip_connections=False`` and deep supervision (paper section 3.2.1): it sees the
    one-hot label map and is trained with the mean over its heads of Dice + cross-entropy
    (eq. 13-14) to output the labels again. Every ``eval_every`` steps the Dice of its
    deepest head (eval mode, on up to 64 fixed samples, mean over foreground classes) is
    measured; training stops once it reaches ``dice_threshold`` or after ``steps``. A
    ``UserWarning`` says so when the threshold was not reached; the outcome is logged and
    saved in the checkpoint's ``"report"``.

    Args:
        labels: (N, H, W) integer tensor or array, or a dataset whose items are label maps
            or ``(image, target, ...)`` tuples (only the target is used).
        num_classes: classes of the label maps (input and output channels).
        widths: UNet++ widths, as for the student it will supervise.
        steps: maximum optimisation steps.
        batch_size: label maps per step, sampled at random.
        lr: Adam learning rate.
        dice_threshold: stop once the reconstruction Dice is >= this, in (0, 1].
        eval_every: steps between Dice measurements.
        device: where to train.
        path: if given, save ``{"config", "state_dict", "report"}`` there (atomically).
        seed: seeds the initial weights and the batch order (global RNG untouched).
        progress: show a tqdm bar.

    Returns:
        The trained teacher, in eval mode.

    Example:
        >>> labels = torch.zeros(4, 16, 16, dtype=torch.long)
        >>> labels[:, 4:12, 4:12] = 1
        >>> teacher = train_encoding_teacher(labels, num_classes=2, widths=(4, 8), steps=100,
        ...                                  lr=1e-2, dice_threshold=0.9, progress=False)
        >>> teacher.skip_connections, teacher.in_channels
        (False, 2)
    """
    from featsup.losses.compose import deep_supervision_loss

    check_positive("steps", steps)
    check_positive("lr", lr)
    check_in_range("dice_threshold", dice_threshold, 1e-6, 1.0)
    data = _label_tensor(labels)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNetPlusPlus(
            num_classes, num_classes, widths=widths, deep_supervision=True, skip_connections=False
        ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    held = data[torch.randperm(len(data), generator=gen)[:64]].to(device)
    dice, step = 0.0, 0
    with tqdm(total=steps, disable=not progress, desc="encoding teacher") as bar:
        while step < steps:
            target = data[torch.randint(0, len(data), (batch_size,), generator=gen)].to(device)
            x = one_hot(target, num_classes, dtype=torch.float32)
            loss = deep_supervision_loss(model(x), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            if step % eval_every == 0 or step == steps:
                dice = _evaluate(model, held, num_classes)
                bar.set_postfix(loss=f"{loss.item():.4f}", dice=f"{dice:.4f}")
                if dice >= dice_threshold:
                    break
    report = {"steps": step, "dice": dice, "dice_threshold": dice_threshold}
    report["reached_threshold"] = dice >= dice_threshold
    _report(report)
    if path is not None:
        _save(model, report, Path(path))
    return model.eval()


@torch.no_grad()
def _evaluate(model: UNetPlusPlus, held: torch.Tensor, num_classes: int) -> float:
    model.eval()
    logits = torch.cat(
        [model(one_hot(t, num_classes, dtype=torch.float32))[-1] for t in held.split(16)]
    )
    model.train()
    return reconstruction_dice(logits, held, num_classes)


def _report(report: dict[str, Any]) -> None:
    text = (
        f"encoding teacher: reconstruction Dice {report['dice']:.4f} after {report['steps']} "
        f"steps (threshold {report['dice_threshold']})"
    )
    if report["reached_threshold"]:
        _log.info("%s: threshold reached", text)
    else:
        warnings.warn(f"{text}: step limit reached first; fix: more steps", stacklevel=3)


def _save(model: UNetPlusPlus, report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    torch.save({"config": model.config, "state_dict": state, "report": report}, tmp)
    os.replace(tmp, path)


def load_encoding_teacher(
    path: str | os.PathLike[str], *, map_location: torch.device | str = "cpu"
) -> UNetPlusPlus:
    """Rebuild a teacher saved by :func:`train_encoding_teacher`, in eval mode.

    Raises:
        ValueError: if the file is not such a checkpoint.
    """
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= checkpoint.keys():
        raise ValueError(
            f"path: expected a checkpoint with 'config' and 'state_dict', got {str(path)!r}; "
            "fix: save it with train_encoding_teacher(path=...)"
        )
    model = UNetPlusPlus.from_config(checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(map_location).eval()
