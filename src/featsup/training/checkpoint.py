"""Atomic checkpoint files, random-number-generator states and model rebuilding.

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
import json
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from featsup._checks import check_choice
from featsup._wrappers import supervised_student, unwrap
from featsup.training.distributed import DistEnv

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainerCheckpointing",
    "get_rng_state",
    "load_checkpoint",
    "load_model",
    "model_spec",
    "save_checkpoint",
    "set_rng_state",
    "unwrap_model",
]

CHECKPOINT_FORMAT = "featsup.trainer/1"
"""Value of the ``"format"`` key of every checkpoint the :class:`~featsup.Trainer` writes."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside DDP, DataParallel or :func:`torch.compile` wrappers.

    Args:
        model: a module, possibly wrapped.

    Returns:
        The innermost wrapped module (``model`` itself when it is not wrapped).

    Example:
        >>> net = nn.Linear(2, 2)
        >>> unwrap_model(nn.DataParallel(net)) is net
        True
    """
    return unwrap(model)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable; folders cannot be opened on Windows, where this is a no-op."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_folder(path.parent)
    return path


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
        The model, rebuilt in eval mode on ``map_location``, or ``model``.

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


_T = TypeVar("_T", bound="TrainerCheckpointing")


class TrainerCheckpointing:
    """The checkpoint half of :class:`~featsup.Trainer`: what is saved and how it is restored.

    The attributes annotated below are set by the Trainer.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    env: DistEnv
    device: torch.device
    step: int
    epoch: int
    batch_in_epoch: int
    history: list[dict[str, float]]
    history_path: Path | None
    keep_best_by: str | None
    best_value: float | None
    best_step: int | None
    bad_validations: int
    stopped_early: bool
    seed: int
    batch_size: int
    shuffle: bool
    drop_last: bool
    total_steps: int
    _num_samples: int
    _window: dict[str, torch.Tensor]
    _window_count: int
    _pending_rng: dict[str, Any] | None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume; a collective under torchrun (call on every rank)."""
        model = unwrap_model(self.model)
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
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "model": model.state_dict(),
            "model_class": spec[0] if spec else None,
            "model_config": spec[1] if spec else None,
            "student": student,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": self.env.gather(get_rng_state(self.device)),
            "history": [dict(r) for r in self.history],
            "best": {
                "metric": self.keep_best_by,
                "value": self.best_value,
                "step": self.best_step,
                "bad_validations": self.bad_validations,
                "stopped_early": self.stopped_early,
            },
            "window": {
                "count": self._window_count,
                "sums": {k: v.cpu() for k, v in self._window.items()},
            },
            "settings": self._settings(),
            "torch_version": str(torch.__version__),
        }

    def _settings(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.env.world_size,
            "num_samples": self._num_samples,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "total_steps": self.total_steps,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint atomically (rank 0 writes; call on every rank)."""
        state = self.state_dict()
        if self.env.main:
            save_checkpoint(path, state)

    def resume(self: _T, path: str | os.PathLike[str]) -> _T:
        """Load a checkpoint written by :meth:`save`; the next :meth:`fit` continues it.

        Model, optimizer, scheduler, scaler, step, data position, history, best value and
        (at the start of :meth:`fit`) the random generators are restored. Settings that
        change the data order or schedule (seed, batch size, process count, data set
        size, total steps) are compared and a warning names any that differ.

        Args:
            path: a ``last.pt`` or ``best.pt`` file.

        Returns:
            ``self``.
        """
        state = load_checkpoint(path)
        changed = {
            k: (v, state["settings"].get(k))
            for k, v in self._settings().items()
            if state["settings"].get(k) != v
        }
        if changed:
            warnings.warn(
                f"resume: settings differ from the checkpoint's (now, then): {changed}; "
                "training continues, but not exactly as the original run",
                stacklevel=2,
            )
        unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        self._pending_rng = rngs[self.env.rank] if len(rngs) == self.env.world_size else rngs[0]
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.history = list(state["history"])
        best = state["best"]
        self.best_value, self.best_step = best["value"], best["step"]
        self.bad_validations, self.stopped_early = best["bad_validations"], best["stopped_early"]
        self._window_count = state["window"]["count"]
        self._window = {k: v.to(self.device) for k, v in state["window"]["sums"].items()}
        if self.env.main and self.history_path is not None:
            lines = "".join(json.dumps(r) + "\n" for r in self.history)
            self.history_path.parent.mkdir(parents=True, exist_ok=True)
            self.history_path.write_text(lines)
        return self
