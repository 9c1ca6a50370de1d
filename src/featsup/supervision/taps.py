"""Feature taps: read a network's encoder features without a second forward pass.

Which modules hold a model's levels is decided in :mod:`featsup.supervision.levels`. A student is
always tapped with forward hooks (:class:`HookTap`) so that its ordinary forward runs
once and the captured features keep their graph. A teacher runs its encoder alone where
the model has one; otherwise its forward is stopped as soon as the last tapped module has
fired (``stop_early``).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HookTap",
    "check_distinct",
    "frozen_modes",
    "input_channels",
    "resize_to",
    "resolve_module",
]


class _StopForward(Exception):
    """Raised by a teacher hook once every tapped level has fired."""


def resolve_module(model: nn.Module, name: str, argument: str) -> nn.Module:
    """Return ``model.get_submodule(name)`` with a did-you-mean error."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        known = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(
            f"{argument}: expected names of modules in {type(model).__name__}, got {name!r}{hint}"
        ) from None


def input_channels(model: nn.Module) -> int:
    """Input channels of ``model``: its ``in_channels`` or that of its first convolution.

    Raises:
        ValueError: if neither exists.
    """
    for owner in (model, getattr(model, "encoder", None)):
        for attr in ("in_channels", "_in_channels"):
            value = getattr(owner, attr, None)
            if isinstance(value, int):
                return value
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(module.in_channels)
    raise ValueError(
        f"model: expected an in_channels attribute or a convolution to infer the input "
        f"channels of {type(model).__name__}, got neither; fix: pass probe_channels"
    )


class HookTap:
    """Forward hooks that capture chosen levels of a model during its own forward pass.

    Hooks are registered once, here, and record only inside :meth:`run`; outputs are kept
    as they are (never detached). After the pass each hooked module must have fired exactly
    once and its output must not have been modified in place. Inside a
    :func:`torch.compile` graph the hooks are traced and replayed, but version counters
    are not observable: there the in-place check is left to an eager pass of the same
    network (the :class:`~featsup.supervision.FeatureSupervisor` probe).

    Args:
        model: the network to tap.
        sources: per level to capture, the dotted module path whose output holds it and,
            for a module returning a list (an smp encoder), the index in that list.
        stop_early: stop the forward pass once every hooked module has fired (for a
            frozen teacher whose decoder output is not needed).
    """

    def __init__(
        self,
        model: nn.Module,
        sources: Sequence[tuple[str, int | None]],
        *,
        stop_early: bool = False,
    ) -> None:
        self.model = model
        self.sources = list(sources)
        self.stop_early = stop_early
        self.modules = sorted({path for path, _ in self.sources})
        self._outputs: dict[str, Any] = {}
        self._versions: dict[str, list[int] | None] = {}
        self._counts = dict.fromkeys(self.modules, 0)
        self._armed = False
        self._handles = [
            resolve_module(model, path, "layers").register_forward_hook(partial(self._hook, path))
            for path in self.modules
        ]

    def _hook(self, path: str, module: nn.Module, args: Any, output: Any) -> None:
        if not self._armed:
            return
        self._counts[path] += 1
        self._outputs[path] = output
        self._versions[path] = None if torch.compiler.is_compiling() else _versions(output)
        if self.stop_early and all(self._counts.values()):
            raise _StopForward

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def run(self, fn: Callable[[], Any]) -> tuple[Any, list[torch.Tensor]]:
        """Call ``fn()`` (a forward pass of the model) and return its result and the levels.

        Returns:
            ``(result, features)``; ``result`` is None when the pass was stopped early.

        Raises:
            RuntimeError: if the hooks were removed, a tapped module fired zero times or
                more than once, or its output was modified in place after it fired.
        """
        if not self._handles:
            raise RuntimeError("tap: expected registered hooks, got a removed tap; fix: rewrap")
        self._counts = dict.fromkeys(self.modules, 0)
        self._armed, result = True, None
        try:
            result = fn()
        except _StopForward:
            pass
        finally:
            self._armed = False
        try:
            self._check()
            return result, [self._pick(path, index) for path, index in self.sources]
        finally:
            self._outputs.clear()

    def _check(self) -> None:
        for path, count in self._counts.items():
            if count != 1:
                raise RuntimeError(
                    f"tap {path!r}: expected the module to run once per forward, got {count} "
                    "calls; fix: tap a module that runs exactly once (not a shared or unused one)"
                )
        for path, output in self._outputs.items():
            before = self._versions[path]
            if before is not None and _versions(output) != before:
                raise RuntimeError(
                    f"tap {path!r}: expected its output to stay unchanged, got an in-place "
                    "update later in the forward; fix: tap the module after the in-place op"
                )

    def _pick(self, path: str, index: int | None) -> torch.Tensor:
        output = self._outputs[path]
        if index is not None:
            output = output[index]
        if not torch.is_tensor(output):
            raise RuntimeError(
                f"tap {path!r}: expected a tensor output, got {type(output).__name__}; "
                "fix: tap a module that returns one feature map"
            )
        return output

    def remove(self) -> None:
        """Remove the hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._outputs.clear()


# ---------------------------------------------------------------------- helpers
def _versions(output: Any) -> list[int]:
    """In-place version counters of a module output (a tensor or a list of them)."""
    tensors = output if isinstance(output, (list, tuple)) else [output]
    return [t._version if torch.is_tensor(t) else -1 for t in tensors]


def resize_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize (B, C, *spatial) ``x`` to ``size``: average pooling down, (bi/tri)linear up."""
    if all(a >= b for a, b in zip(x.shape[2:], size, strict=True)):
        if x.ndim == 4:
            return F.adaptive_avg_pool2d(x, size)  # type: ignore[arg-type]
        return F.adaptive_avg_pool3d(x, size)  # type: ignore[arg-type]
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def check_distinct(student: nn.Module, teacher: nn.Module) -> None:
    """Raise if the teacher is the student or shares parameters with it."""
    shared = {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
    if teacher is student or shared:
        raise ValueError(
            "teacher: expected a network separate from the student, got shared parameters; "
            "fix: pass copy.deepcopy(student) as teacher"
        )


@contextlib.contextmanager
def frozen_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag on exit."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
