"""Small shared input checks that raise one-line "expected / got / fix" errors.

Every public function of featsup validates user input through these helpers so that
messages look the same everywhere: the argument, what was expected, what was got and,
where one exists, the fix.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch

__all__ = [
    "check_choice",
    "check_in_range",
    "check_ndim",
    "check_positive",
    "check_same_shape",
    "check_spacing",
    "check_type",
    "import_cv2",
    "resolve_device",
]


def _fmt(message: str, fix: str | None) -> str:
    return f"{message}; {fix}" if fix else message


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Check that ``value`` is one of ``choices``; propose the closest one otherwise.

    Args:
        name: argument name, used in the message.
        value: the value given by the user.
        choices: the allowed values.

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: if ``value`` is not among ``choices``.

    Example:
        >>> check_choice("reduction", "mean", ("mean", "sum", "none"))
        'mean'
    """
    options = list(choices)
    if value in options:
        return value
    close = difflib.get_close_matches(str(value), [str(c) for c in options], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{name}: expected one of {options}, got {value!r}{hint}")


def check_type(name: str, value: Any, types: type | tuple[type, ...]) -> Any:
    """Check ``isinstance(value, types)``.

    Raises:
        TypeError: naming the argument, the expected and the found type.
    """
    if not isinstance(value, types):
        names = (
            " or ".join(t.__name__ for t in types) if isinstance(types, tuple) else types.__name__
        )
        raise TypeError(f"{name}: expected {names}, got {type(value).__name__}")
    return value


def check_positive(name: str, value: float, *, strict: bool = True) -> float:
    """Check that a number is > 0 (``strict``) or >= 0.

    Raises:
        ValueError: if the number is out of range.
    """
    ok = value > 0 if strict else value >= 0
    if not ok:
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"{name}: expected a number {bound}, got {value!r}")
    return value


def check_in_range(name: str, value: float, low: float, high: float) -> float:
    """Check ``low <= value <= high``.

    Raises:
        ValueError: if the number is out of range.
    """
    if not low <= value <= high:
        raise ValueError(f"{name}: expected a number in [{low}, {high}], got {value!r}")
    return value


def check_in_open_range(name: str, value: float, low: float, high: float) -> float:
    """Check ``low < value < high``.

    Raises:
        ValueError: if the number is out of range.
    """
    if not low < value < high:
        raise ValueError(f"{name}: expected a number in ({low}, {high}), got {value!r}")
    return value


def check_ndim(
    name: str,
    tensor: Any,
    ndim: int | Sequence[int],
    layout: str,
    fix: str | None = None,
) -> Any:
    """Check the number of dimensions of a tensor or array.

    Args:
        name: argument name, used in the message.
        tensor: the tensor (or numpy array) to check.
        ndim: the allowed number(s) of dimensions.
        layout: the expected layout in words, for example ``"(B, C, H, W)"``.
        fix: an optional hint appended to the message.

    Raises:
        ValueError: if the number of dimensions is not allowed.
    """
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if tensor.ndim not in allowed:
        raise ValueError(
            _fmt(
                f"{name}: expected a {'/'.join(map(str, allowed))}D tensor {layout}, "
                f"got shape {tuple(tensor.shape)}",
                fix,
            )
        )
    return tensor


def check_same_shape(name_a: str, a: Any, name_b: str, b: Any, dims: slice | None = None) -> None:
    """Check that two tensors (or arrays) have the same shape (optionally a slice of it).

    Raises:
        ValueError: naming both arguments and both shapes.
    """
    sa, sb = tuple(a.shape), tuple(b.shape)
    if dims is not None:
        sa, sb = sa[dims], sb[dims]
    if sa != sb:
        raise ValueError(
            f"{name_a} and {name_b}: expected the same shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )


def check_spacing(
    spacing: Sequence[float] | None, ndim: int | Sequence[int], *, name: str = "spacing"
) -> tuple[float, ...]:
    """Voxel spacing as floats: one positive finite number per axis; None gives ones.

    Args:
        spacing: the spacing given by the user, or None.
        ndim: the allowed number(s) of values; None returns ``(1.0,) * ndim`` (the first).
        name: argument name, used in the message.

    Returns:
        A tuple of floats.

    Raises:
        TypeError: if a value is not a number.
        ValueError: if the count is not allowed or a value is not positive and finite.

    Example:
        >>> check_spacing([2, 0.5], 2)
        (2.0, 0.5)
    """
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if spacing is None:
        return (1.0,) * allowed[0]
    values = tuple(spacing) if isinstance(spacing, Sequence | np.ndarray) else (spacing,)
    if len(values) not in allowed:
        counts = " or ".join(map(str, allowed))
        raise ValueError(
            f"{name}: expected {counts} values (one per spatial axis), got {spacing!r}"
        )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name}: expected numbers, got {type(value).__name__}")
        if not math.isfinite(float(value)) or float(value) <= 0:
            raise ValueError(f"{name}: expected positive finite numbers, got {spacing!r}")
    return tuple(float(v) for v in values)


def import_cv2(purpose: str) -> ModuleType:
    """Import OpenCV, or raise an ImportError that names ``purpose`` and the extra.

    Raises:
        ImportError: if OpenCV is not installed.
    """
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            f'{purpose} needs OpenCV; install it with pip install "featsup[data]"'
        ) from err
    return cv2


def resolve_device(
    device: str | torch.device | None, *, local_rank: int | None = None
) -> torch.device:
    """The one device resolution: ``"auto"`` / None is CUDA when available, else the CPU.

    Args:
        device: ``"auto"``, None, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a
            :class:`torch.device`.
        local_rank: index given to a plain ``"cuda"`` (this process's GPU under torchrun);
            None leaves it without an index.

    Returns:
        The :class:`torch.device`.

    Raises:
        TypeError: if ``device`` is not a string, device or None.
        ValueError: if the string is not a device, or CUDA is asked for but absent.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    check_type("device", device, (str, torch.device))
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device: expected an available device, got {str(device)!r} but CUDA is not "
                "available; use device='cpu'"
            )
        if resolved.index is None and local_rank is not None:
            resolved = torch.device("cuda", local_rank)
    return resolved
