"""Small shared input checks that raise one-line "expected / got / fix" errors.

Every public function of featsup validates user input through these helpers so that
messages look the same everywhere: the argument, what was expected, what was got and,
where one exists, the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "check_choice",
    "check_in_range",
    "check_ndim",
    "check_positive",
    "check_same_shape",
    "check_type",
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
