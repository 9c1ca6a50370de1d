"""A trained cascade in one file: :func:`save_cascade` and :func:`load_cascade`.

The file is a plain ``dict`` written with :func:`torch.save` (atomically: temporary
file, then rename) that loads with ``weights_only=True``: tensors, numbers, strings,
lists, tuples and dicts, never pickled code. It holds

- ``"format"``: ``"featsup.cascade/1"`` and ``"featsup_version"``, checked on loading;
- ``"liver"`` / ``"tumour"``: each student's ``"class"`` (``"module:QualName"``),
  ``"config"`` (its constructor arguments) and ``"state_dict"`` (no teacher, no adapters);
- ``"settings"``: sizes, heads, each stage's 2.5D context (files without the tumour's:
  the liver's serves both), ROI margin, batch size, TTA and, for a 3D tumour model, its
  window and overlap (files without them load as 2D);
- ``"preprocessing"`` / ``"tumour_preprocessing"``: what the liver / tumour student was
  trained with (files without the second: the first serves both);
- ``"crf"``: ``{"liver": ..., "tumour": ...}`` dense-CRF keyword arguments or None;
- ``"tumour_filter"``: the :class:`~featsup.postprocess.LesionFilter`'s ``"config"`` and
  ``"state_dict"``, or None (files without the key: none);
- ``"labels"``: the label map ``{0: "background", 1: "liver", 2: "tumour"}``;
- ``"training"``: a short, JSON-like summary (data, split, validation Dice, heads).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featsup._io import atomic_torch_save
from featsup._wrappers import supervised_student, unwrap
from featsup.data.preprocess import Preprocessing
from featsup.inference.cascade import Cascade
from featsup.postprocess.lesion_filter import TUMOUR_FILTER_KEEP, LesionFilter

__all__ = ["CASCADE_FORMAT", "LABELS", "load_cascade", "read_cascade_info", "save_cascade"]

CASCADE_FORMAT = "featsup.cascade/1"
"""Value of the ``"format"`` key of every cascade file."""

LABELS = {0: "background", 1: "liver", 2: "tumour"}
"""The label map of the cascade's output (and of LiTS segmentations)."""

_SETTINGS = ("liver_size", "tumour_size", "liver_head", "tumour_head", "context", "tumour_context",
             "roi_margin", "tumour_scope", "liver_classes", "tumour_darkness")  # fmt: skip
_PREDICT_SETTINGS = ("batch_size", "tta", "tumour_tta", "tumour_patch", "tumour_overlap",
                     "tumour_min_voxels", "tumour_threshold", "tumour_min_inside",
                     "tumour_surface", "tumour_filter_keep", "tumour_spots")  # fmt: skip
_KEYS = ("format", "featsup_version", "liver", "tumour", "settings", "preprocessing", "crf")
_PREPROCESSINGS = ("preprocessing", "tumour_preprocessing")


def _version() -> str:
    from featsup import __version__

    return __version__


def preprocessing_records(cascade: Cascade) -> dict[str, dict[str, Any]]:
    """Each stage's preprocessing as a plain dict, under its file key (what the file stores)."""
    return {key: getattr(cascade, key).to_dict() for key in _PREPROCESSINGS}


def preprocessing_arguments(records: dict[str, Any]) -> dict[str, Any]:
    """:class:`Cascade` keyword arguments that restore stored preprocessings."""
    liver = Preprocessing.from_dict(records["preprocessing"])
    tumour = records.get("tumour_preprocessing")  # absent from older files: one for both
    tumour = liver if tumour is None else Preprocessing.from_dict(tumour)
    return {"preprocessing": liver, "tumour_preprocessing": tumour}


def cascade_arguments(cascade: Cascade) -> dict[str, Any]:
    """Keyword arguments that rebuild ``cascade`` (models excluded), for copies and files."""
    options = cascade.predict_options
    return {
        **{name: getattr(cascade, name) for name in _SETTINGS},
        **{key: getattr(cascade, key) for key in _PREPROCESSINGS},  # frozen: shared safely
        "liver_crf": None if cascade.liver_crf is None else dict(cascade.liver_crf),
        "tumour_crf": None if cascade.tumour_crf is None else dict(cascade.tumour_crf),
        "batch_size": options["batch_size"],
        "device": options["device"],
        "tta": options["tta"],
        "tumour_tta": cascade.tumour_tta,
        "tumour_patch": cascade.tumour_patch,
        "tumour_overlap": cascade.tumour_overlap,
        "tumour_min_voxels": cascade.tumour_min_voxels,
        "tumour_threshold": cascade.tumour_threshold,
        "tumour_min_inside": cascade.tumour_min_inside,
        "tumour_surface": cascade.tumour_surface,
        "tumour_filter": cascade.tumour_filter,
        "tumour_filter_keep": cascade.tumour_filter_keep,
        "tumour_spots": cascade.tumour_spots,
    }


def _filter_record(lesion_filter: LesionFilter | None) -> dict[str, Any] | None:
    if lesion_filter is None:
        return None
    weights = {k: v.detach().cpu().clone() for k, v in lesion_filter.state_dict().items()}
    return {"config": dict(lesion_filter.config), "state_dict": weights}


def _build_filter(record: dict[str, Any] | None, path: Path) -> LesionFilter | None:
    if record is None:
        return None
    lesion_filter = LesionFilter.from_config(record["config"])
    _load_weights(lesion_filter, record, "tumour filter", path)
    return lesion_filter.eval()


def _student_record(name: str, model: nn.Module) -> dict[str, Any]:
    student = supervised_student(model) or unwrap(model)  # a FeatureSupervisor: its student
    cls = type(student)
    config = getattr(student, "config", None)
    if not isinstance(config, dict) or not callable(getattr(cls, "from_config", None)):
        raise TypeError(
            f"{name}_model: expected a model with .config and from_config (a featsup "
            f"UNetPlusPlus or Ensemble), got {cls.__name__}; fix: save its state_dict yourself"
        )
    weights = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
    return {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "config": config,
        "state_dict": weights,
    }


def save_cascade(
    cascade: Cascade, path: str | os.PathLike[str], *, training: dict[str, Any] | None = None
) -> Path:
    """Write a cascade to one file (see the module docstring for what it holds).

    Args:
        cascade: the cascade; each model must be a featsup UNet++ or an
            :class:`~featsup.models.Ensemble` of them (or hold one as
            ``.student``, as a :class:`~featsup.FeatureSupervisor` does).
        path: destination file (``.pt``); its folder is created. An existing file is
            replaced atomically.
        training: a short summary of how the models were trained (data, split, validation
            Dice...), made of strings, numbers, lists and dicts; None keeps
            ``cascade.training_summary``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if a model cannot be rebuilt from a config.

    Example:
        >>> import tempfile
        >>> from featsup.models import UNetPlusPlus
        >>> net = UNetPlusPlus(1, 2, widths=(4, 8))
        >>> cascade = Cascade(net, net, liver_size=32, tumour_size=32, device="cpu")
        >>> p = save_cascade(cascade, Path(tempfile.mkdtemp()) / "cascade.pt")
        >>> load_cascade(p).tumour_size
        (32, 32)
    """
    arguments = cascade_arguments(cascade)
    state: dict[str, Any] = {
        "format": CASCADE_FORMAT,
        "featsup_version": _version(),
        "liver": _student_record("liver", cascade.liver_model),
        "tumour": _student_record("tumour", cascade.tumour_model),
        "settings": {
            **{name: arguments[name] for name in _SETTINGS},
            **{k: arguments[k] for k in _PREDICT_SETTINGS},
        },
        **preprocessing_records(cascade),
        "crf": {"liver": arguments["liver_crf"], "tumour": arguments["tumour_crf"]},
        "tumour_filter": _filter_record(cascade.tumour_filter),
        "labels": dict(LABELS),
        "training": dict(training if training is not None else cascade.training_summary or {}),
    }
    return atomic_torch_save(state, path)


def _read(path: Path, *, check_version: bool) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path}: expected a cascade file, found nothing; fix: check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, pickle and zip errors
        raise ValueError(
            f"{path}: expected a featsup cascade file, got an unreadable file "
            f"({type(err).__name__}: {err}); fix: save it again with Cascade.save"
        ) from err
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if found != CASCADE_FORMAT:
        hint = " (a Trainer checkpoint?)" if found == "featsup.trainer/1" else ""
        raise ValueError(
            f"{path}: expected a file of format {CASCADE_FORMAT!r}, got {found!r}{hint}; "
            "fix: build a Cascade from the models and call Cascade.save"
        )
    missing = [key for key in _KEYS if key not in state]
    if missing:
        raise ValueError(f"{path}: expected the keys {list(_KEYS)}, missing {missing}")
    if check_version and state["featsup_version"] != _version():
        raise ValueError(
            f"{path}: expected a cascade saved by featsup {_version()}, got one saved by "
            f"featsup {state['featsup_version']}; fix: pip install "
            f"featsup=={state['featsup_version']}, or pass check_version=False to try anyway"
        )
    return state


def _import_class(qualified: str, path: Path) -> Any:
    module_name, _, qualname = str(qualified).partition(":")
    if not module_name.startswith("featsup."):
        raise ValueError(
            f"{path}: expected a featsup model class, got {qualified!r}; "
            "fix: only featsup models can be stored in a cascade file"
        )
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type) or not callable(getattr(obj, "from_config", None)):
        raise ValueError(f"{path}: expected a model class with from_config, got {qualified!r}")
    return obj


def _load_weights(model: nn.Module, record: dict[str, Any], what: str, path: Path) -> None:
    """``record["state_dict"]`` into ``model``, or a one-line error naming ``what``."""
    try:
        model.load_state_dict(record["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{path}: expected {what} weights that fit its config, got a mismatch ({first}); "
            "fix: save the cascade again"
        ) from err


def _build(record: dict[str, Any], stage: str, path: Path) -> nn.Module:
    cls = _import_class(record["class"], path)
    model = cls.from_config(record["config"])
    _load_weights(model, record, stage, path)
    return model.eval()


def load_cascade(
    path: str | os.PathLike[str], *, device: str | torch.device | None = "auto",
    check_version: bool = True,
) -> Cascade:  # fmt: skip
    """Rebuild a cascade saved by :func:`save_cascade` (no training code needed).

    Args:
        path: the cascade file.
        device: where the models run (``"auto"``, ``"cpu"``, ``"cuda"``...).
        check_version: raise if the file was saved by another featsup version.

    Returns:
        The :class:`Cascade`, models in eval mode; ``training_summary`` holds the stored
        summary.

    Raises:
        ValueError: if the file is missing, unreadable, not a cascade file, from another
            featsup version (with ``check_version``) or its weights do not fit.
    """
    path = Path(path)
    state = _read(path, check_version=check_version)
    settings = dict(state["settings"])
    cascade = Cascade(
        _build(state["liver"], "liver", path),
        _build(state["tumour"], "tumour", path),
        # older files lack tumour_context, liver_classes, tumour_darkness: the defaults
        **{name: settings[name] for name in _SETTINGS if name in settings},
        **preprocessing_arguments(state),
        liver_crf=state["crf"]["liver"],
        tumour_crf=state["crf"]["tumour"],
        batch_size=settings.get("batch_size", 16),
        tta=settings.get("tta", False),
        tumour_tta=settings.get("tumour_tta"),  # absent from older files: as tta
        tumour_patch=settings.get("tumour_patch"),
        tumour_overlap=settings.get("tumour_overlap", 0.5),
        tumour_min_voxels=settings.get("tumour_min_voxels", 0),
        tumour_threshold=settings.get("tumour_threshold", 0.5),
        tumour_min_inside=settings.get("tumour_min_inside", 0.0),  # older files: a touch
        tumour_surface=settings.get("tumour_surface"),  # older files: none
        tumour_filter=_build_filter(state.get("tumour_filter"), path),  # older files: none
        tumour_filter_keep=settings.get("tumour_filter_keep", TUMOUR_FILTER_KEEP),
        tumour_spots=settings.get("tumour_spots"),  # older files: none
        device=device,
    )
    cascade.training_summary = dict(state.get("training") or {})
    return cascade


def read_cascade_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything a cascade file holds except the weights (for ``featsup`` and humans).

    Raises:
        ValueError: as :func:`load_cascade` (the version is not checked).
    """
    state = _read(Path(path), check_version=False)
    info = {key: value for key, value in state.items()
            if key not in ("liver", "tumour", "tumour_filter")}  # fmt: skip
    record = state.get("tumour_filter")
    info["tumour_filter"] = None if record is None else {"config": record["config"]}
    for stage in ("liver", "tumour"):
        info[stage] = {"class": state[stage]["class"], "config": state[stage]["config"]}
    return info
