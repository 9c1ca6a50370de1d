"""Checkpoint files: atomic store, reading, random-number-generator states, model rebuilding.

A checkpoint is a plain ``dict`` saved with :func:`torch.save`. It is written to a
temporary file in the destination folder, flushed and ``fsync``-ed, then renamed over the
destination with :func:`os.replace` (atomic on POSIX and Windows) and the folder is
``fsync``-ed, so a process killed at any moment leaves either the previous file or the new
one, never a truncated one. Everything stored is loadable with ``weights_only=True``
(tensors, numbers, strings, lists, tuples and dicts only).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from featsup._checks import check_choice
from featsup._io import atomic_torch_save
from featsup._wrappers import supervised_student
from featsup.data.preprocess import Preprocessing
from featsup.training.distributed import DistEnv, unwrap_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointStore",
    "get_rng_state",
    "load_checkpoint",
    "load_model",
    "model_entries",
    "model_spec",
    "rng_preserved",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "featsup.trainer/1"
"""Value of the ``"format"`` key of every checkpoint the :class:`~featsup.Trainer` writes."""


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename, fsync folder).

    If anything fails or the process is interrupted, ``path`` keeps its previous content
    (or stays absent) and the temporary file is removed where Python still runs.

    Args:
        path: destination file; its folder is created if needed.
        state: what to save, passed to :func:`torch.save`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> p = save_checkpoint(os.path.join(folder, "a.pt"), {"step": 3})
        >>> torch.load(p)["step"]
        3
    """
    return atomic_torch_save(state, path)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    map_location: str | torch.device = "cpu",
    weights_only: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint written by the :class:`~featsup.Trainer`.

    Args:
        path: the ``.pt`` file (for example ``checkpoint_dir / "best.pt"``).
        map_location: where tensors are loaded, passed to :func:`torch.load`.
        weights_only: passed to :func:`torch.load`; keep True (safe unpickling) unless a
            custom scheduler stored objects that need it off.

    Returns:
        The checkpoint dict: ``"model"`` (state dict), ``"model_class"`` /
        ``"model_config"`` (or None), ``"student"`` (or None), ``"optimizer"``,
        ``"scheduler"``, ``"scaler"``, ``"rng"``, ``"step"``, ``"epoch"``,
        ``"batch_in_epoch"``, ``"history"``, ``"best"`` and ``"settings"``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is unreadable (truncated, not a torch file) or was not
            written by the Trainer.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: expected an existing checkpoint file, got {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as error:  # torch raises RuntimeError, pickle and zip errors
        raise ValueError(
            f"path: expected a readable torch checkpoint, got {str(path)!r} "
            f"({type(error).__name__}: {error}); use the previous checkpoint"
        ) from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"path: expected a checkpoint of format {CHECKPOINT_FORMAT!r}, got {found!r} "
            f"in {str(path)!r}; for a bare state dict use model.load_state_dict(torch.load(...))"
        )
    return state


def model_spec(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """``("module:QualName", config)`` of a model that has ``config`` and ``from_config``."""
    cls = type(model)
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or not callable(getattr(cls, "from_config", None)):
        return None
    return f"{cls.__module__}:{cls.__qualname__}", dict(config)


def student_prefix(model: nn.Module) -> str | None:
    """State-dict prefix of a FeatureSupervisor's (unwrapped) student, or None."""
    student = supervised_student(model)
    if student is None:
        return None
    for name, child in model.named_modules():
        if child is student and name:
            return name + "."
    return None


def model_entries(model: nn.Module) -> dict[str, Any]:
    """The checkpoint entries of a model: weights and what rebuilds it (and its student).

    Args:
        model: the trained module, possibly wrapped in DDP or :func:`torch.compile`.

    Returns:
        ``{"model": state dict, "model_class": str | None, "model_config": dict | None,
        "student": {"prefix", "class", "config"} | None}``.

    Example:
        >>> sorted(model_entries(nn.Linear(1, 1)))
        ['model', 'model_class', 'model_config', 'student']
    """
    model = unwrap_model(model)
    spec, prefix = model_spec(model), student_prefix(model)
    student = None
    if prefix is not None:
        student_spec = model_spec(supervised_student(model))  # type: ignore[arg-type]
        student = {
            "prefix": prefix,
            "class": student_spec[0] if student_spec else None,
            "config": student_spec[1] if student_spec else None,
        }
    return {
        "model": model.state_dict(),
        "model_class": spec[0] if spec else None,
        "model_config": spec[1] if spec else None,
        "student": student,
    }


def recorded_preprocessing(data: Any) -> dict[str, Any] | None:
    """What a checkpoint records of the training data's preprocessing, or None.

    The slice datasets carry their :class:`~featsup.data.Preprocessing` as
    ``.preprocessing``; recording it lets inference apply exactly what training applied.

    Example:
        >>> from featsup.data import Preprocessing
        >>> class Data:
        ...     preprocessing = Preprocessing(hu_window=(-50.0, 250.0))
        >>> recorded_preprocessing(Data())["hu_window"]
        [-50.0, 250.0]
        >>> recorded_preprocessing([1, 2]) is None
        True
    """
    found = getattr(data, "preprocessing", None)
    return found.to_dict() if isinstance(found, Preprocessing) else None


def _import_class(qualified: str) -> type:
    module_name, _, qualname = qualified.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type) or not callable(getattr(obj, "from_config", None)):
        raise ValueError(f"model_class: expected a class with from_config, got {qualified!r}")
    return obj


def load_model(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    part: Literal["model", "student"] = "model",
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> nn.Module:
    """Rebuild a trained model from a Trainer checkpoint, or load its weights into ``model``.

    Args:
        path: a checkpoint written by the Trainer (``last.pt`` or ``best.pt``).
        model: if given, load the weights into this module (for example to initialise a
            tumour model from a liver model) instead of rebuilding one from the stored
            config; it is returned unchanged in mode and device.
        part: ``"model"`` for the trained module as a whole, or ``"student"`` for the
            student of a trained :class:`~featsup.FeatureSupervisor` (its weights only,
            without teacher and adapters).
        map_location: device of the loaded tensors.
        strict: passed to :meth:`torch.nn.Module.load_state_dict`.

    Returns:
        The model, rebuilt in eval mode on ``map_location``, or ``model``. When the
        checkpoint recorded the training data's preprocessing (the slice datasets'), it
        is set as ``model.preprocessing``, a :class:`~featsup.data.Preprocessing` that
        :class:`~featsup.inference.Cascade` and ``predict_volume(preprocessing="model")``
        apply.

    Raises:
        ValueError: if ``part`` is unknown, the checkpoint holds no student, or it holds
            no config to rebuild from and ``model`` is not given.

    Example:
        >>> import tempfile
        >>> from featsup.models import UNetPlusPlus
        >>> net = UNetPlusPlus(1, 2, widths=(4, 8))
        >>> p = os.path.join(tempfile.mkdtemp(), "m.pt")
        >>> _ = save_checkpoint(p, {"format": CHECKPOINT_FORMAT, "model": net.state_dict(),
        ...     "model_class": model_spec(net)[0], "model_config": model_spec(net)[1]})
        >>> type(load_model(p)).__name__
        'UNetPlusPlus'
    """
    check_choice("part", part, ("model", "student"))
    state = load_checkpoint(path, map_location=map_location)
    weights: dict[str, torch.Tensor] = state["model"]
    qualified, config = state.get("model_class"), state.get("model_config")
    if part == "student":
        student = state.get("student")
        if not student:
            raise ValueError(
                f"part: expected a checkpoint of a model with a .student, got none in "
                f"{str(path)!r}; use part='model'"
            )
        prefix = student["prefix"]
        weights = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        qualified, config = student.get("class"), student.get("config")
    if model is None:
        if qualified is None or config is None:
            raise ValueError(
                f"path: expected a checkpoint with a model config, got none in {str(path)!r} "
                "(the model has no .config / from_config); pass model=<an instance>"
            )
        cls: Any = _import_class(qualified)
        model = cls.from_config(config).to(map_location).eval()
    model.load_state_dict(weights, strict=strict)
    if state.get("preprocessing") is not None:  # read by featsup.inference
        model.preprocessing = Preprocessing.from_dict(state["preprocessing"])
    return model


def get_rng_state(device: torch.device) -> dict[str, Any]:
    """States of Python's, NumPy's and torch's global generators (and CUDA's on ``device``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore the generators saved by :func:`get_rng_state`."""
    random.setstate(state["python"])
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002
        (npst["name"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


@contextlib.contextmanager
def rng_preserved(device: torch.device) -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global generators (and ``device``'s) on exit.

    Example:
        >>> before = torch.get_rng_state()
        >>> with rng_preserved(torch.device("cpu")):
        ...     _ = torch.manual_seed(5)
        >>> torch.equal(torch.get_rng_state(), before)
        True
    """
    state = get_rng_state(device)
    try:
        yield
    finally:
        set_rng_state(state, device)


class CheckpointStore:
    """The Trainer's checkpoint files: ``last.pt`` and ``best.pt`` in one folder.

        Rank 0 writes (atomically, with :func:`save_checkpoint`); the state to write is
        gathered on every rank first, so :meth:`save` is called on every rank.

    Args:
            directory: the folder, or None to write nothing but explicit paths.
            env: the rank layout.

    Example:
            >>> import tempfile
            >>> store = CheckpointStore(tempfile.mkdtemp(), env=DistEnv())
            >>> store.save("last.pt", {"format": CHECKPOINT_FORMAT, "step": 1})
            >>> load_checkpoint(store.directory / "last.pt")["step"]
            1
    """

    def __init__(self, directory: str | os.PathLike[str] | None, *, env: DistEnv) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.env = env

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Write ``state`` as ``directory / name`` on rank 0 (nothing without a folder)."""
        if self.directory is not None:
            self.write(self.directory / name, state)

    def write(self, path: str | os.PathLike[str], state: dict[str, Any]) -> None:
        """Write ``state`` to ``path`` on rank 0."""
        if self.env.main:
            save_checkpoint(path, state)

    def load(self, path: str | os.PathLike[str], *, settings: dict[str, Any]) -> dict[str, Any]:
        """Read a checkpoint to resume; warn if its ``"settings"`` differ from ``settings``.

        Returns:
            The checkpoint, its ``"rng"`` entry replaced by this rank's generator states
            (rank 0's if the process count changed).
        """
        state = load_checkpoint(path)
        then = state["settings"]
        changed = {k: (v, then.get(k)) for k, v in settings.items() if then.get(k) != v}
        if changed:
            warnings.warn(
                f"resume: settings differ from the checkpoint's (now, then): {changed}; "
                "training continues, but not exactly as the original run",
                stacklevel=3,
            )
        rngs = state["rng"]
        state["rng"] = rngs[self.env.rank] if len(rngs) == self.env.world_size else rngs[0]
        return state
