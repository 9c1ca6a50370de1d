"""Feature taps: read a network's encoder features without a second forward pass.

A model's tappable levels are described once (:func:`describe_levels`):

- **protocol**: a model with ``feature_info`` (name, module path, channels) and
  ``encoder_features(x)``, such as featsup's :class:`~featsup.models.UNetPlusPlus`;
- **smp**: a segmentation-models-pytorch model, whose ``encoder`` returns a list of
  feature maps (the input itself first, then one map per stage);
- **hooks**: any other model, given the dotted names of the modules whose outputs are the
  levels, shallow to deep (the last one is the bottleneck).

A student is always tapped with forward hooks (:class:`HookTap`) so that its ordinary
forward runs once and the captured features keep their graph. A teacher runs its encoder
alone where the model has one (:meth:`Levels.encode`); otherwise its forward is stopped as
soon as the last tapped module has fired.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from featsup._checks import check_choice, check_positive

__all__ = [
    "HookTap",
    "Levels",
    "check_distinct",
    "describe_levels",
    "frozen_modes",
    "input_channels",
    "level_weights_for",
    "pair_levels",
    "resize_to",
]

Kind = Literal["protocol", "smp", "hooks"]


class _StopForward(Exception):
    """Raised by a teacher hook once every tapped level has fired."""


@dataclass(frozen=True)
class Levels:
    """The tappable encoder levels of one model, shallow to deep (bottleneck last).

    Attributes:
        kind: ``"protocol"``, ``"smp"`` or ``"hooks"``.
        names: one name per level (``"x1_0"``, ``"stage3"`` or the module path).
        sources: per level, the module path whose output holds it and, for a module that
            returns a list (an smp encoder), the index in that list.
    """

    kind: Kind
    names: tuple[str, ...]
    sources: tuple[tuple[str, int | None], ...]

    def encode(self, model: nn.Module, x: torch.Tensor, picks: Sequence[int]) -> list[torch.Tensor]:
        """Run only the encoder of ``model`` and return the levels ``picks``.

        Only for ``kind`` ``"protocol"`` and ``"smp"``; hooks-only models use a
        :class:`HookTap` with ``stop_early=True`` instead.
        """
        if self.kind == "protocol":
            features = model.encoder_features(x)  # type: ignore[operator]
            return [features[i] for i in picks]
        if self.kind == "smp":
            features = model.encoder(x)  # type: ignore[operator]
            return [features[self.sources[i][1]] for i in picks]  # type: ignore[index]
        raise ValueError(f"kind: expected 'protocol' or 'smp' to run an encoder, got {self.kind!r}")


def _is_smp(model: nn.Module) -> bool:
    encoder = getattr(model, "encoder", None)
    return (
        type(model).__module__.startswith("segmentation_models_pytorch")
        and isinstance(encoder, nn.Module)
        and isinstance(getattr(encoder, "out_channels", None), (list, tuple))
    )


def describe_levels(model: nn.Module, layers: Sequence[str] | None, role: str) -> Levels:
    """Describe the tappable levels of ``model``.

    Args:
        model: the network.
        layers: dotted module names (shallow to deep) to tap instead of the recognised
            levels; required for a model that is neither featsup's protocol nor smp.
        role: ``"student"`` or ``"teacher"``, for messages.

    Raises:
        ValueError: if ``layers`` names a missing module, is empty, or is needed but absent.
    """
    if layers is not None:
        if isinstance(layers, str) or not layers:
            raise ValueError(
                f"{role}_layers: expected a non-empty list of module names, got {layers!r}"
            )
        names = tuple(str(name) for name in layers)
        for name in names:
            resolve_module(model, name, f"{role}_layers")
        return Levels("hooks", names, tuple((name, None) for name in names))
    if hasattr(model, "feature_info") and callable(getattr(model, "encoder_features", None)):
        infos = list(model.feature_info)  # type: ignore[arg-type]
        return Levels(
            "protocol", tuple(i.name for i in infos), tuple((i.module, None) for i in infos)
        )
    if _is_smp(model):
        channels = list(model.encoder.out_channels)  # type: ignore[union-attr, arg-type]
        picks = [i for i in range(1, len(channels)) if channels[i] > 0]
        return Levels(
            "smp", tuple(f"stage{i}" for i in picks), tuple(("encoder", i) for i in picks)
        )
    raise ValueError(
        f"{role}: expected a featsup UNetPlusPlus, an smp model or {role}_layers naming the "
        f"encoder modules, got {type(model).__name__} without {role}_layers; "
        f"fix: pass {role}_layers=[...] (see dict({role}.named_modules()))"
    )


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
    once and its output must not have been modified in place.

    Args:
        model: the network to tap.
        levels: its :class:`Levels`.
        picks: indices of the levels to capture.
        stop_early: stop the forward pass once every hooked module has fired (for a
            frozen teacher whose decoder output is not needed).
    """

    def __init__(
        self, model: nn.Module, levels: Levels, picks: Sequence[int], *, stop_early: bool = False
    ) -> None:
        self.model = model
        self.levels = levels
        self.picks = list(picks)
        self.stop_early = stop_early
        self.modules = sorted({levels.sources[i][0] for i in self.picks})
        self._outputs: dict[str, Any] = {}
        self._versions: dict[str, list[int]] = {}
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
        tensors = output if isinstance(output, (list, tuple)) else [output]
        self._versions[path] = [t._version if torch.is_tensor(t) else -1 for t in tensors]
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
            return result, [self._pick(i) for i in self.picks]
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
            tensors = output if isinstance(output, (list, tuple)) else [output]
            now = [t._version if torch.is_tensor(t) else -1 for t in tensors]
            if now != self._versions[path]:
                raise RuntimeError(
                    f"tap {path!r}: expected its output to stay unchanged, got an in-place "
                    "update later in the forward; fix: tap the module after the in-place op"
                )

    def _pick(self, level: int) -> torch.Tensor:
        path, index = self.levels.sources[level]
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


# ---------------------------------------------------------------------- level pairing and helpers
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


def level_weights_for(weights: Sequence[float] | None, n: int) -> list[float]:
    """Check per-level weights; default ``1 / n`` each."""
    if weights is None:
        return [1.0 / n] * n
    values = [float(w) for w in weights]
    if len(values) != n:
        raise ValueError(f"level_weights: expected {n} weights (one per level), got {len(values)}")
    for value in values:
        check_positive("level_weights", value, strict=False)
    return values


def pair_levels(spec: Any, student: Levels, teacher: Levels) -> list[tuple[int, int]]:
    """Turn a ``levels`` option into (student index, teacher index) pairs."""
    if isinstance(spec, str):
        check_choice("levels", spec, ("all", "bottleneck"))
        if spec == "bottleneck":
            return [(len(student.names) - 1, len(teacher.names) - 1)]
        if len(student.names) != len(teacher.names):
            raise ValueError(
                f"levels: expected as many student levels {list(student.names)} as teacher "
                f"levels {list(teacher.names)} for 'all'; fix: levels=[(student, teacher), ...]"
            )
        return [(i, i) for i in range(len(student.names))]
    if not isinstance(spec, Sequence) or not spec:
        raise ValueError(f"levels: expected 'all', 'bottleneck' or a non-empty list, got {spec!r}")
    pairs = []
    for item in spec:
        s_ref, t_ref = item if isinstance(item, tuple) else (item, item)
        s_index = level_index(s_ref, student, "student")
        pairs.append((s_index, level_index(t_ref, teacher, "teacher")))
    return pairs


def level_index(ref: int | str, levels: Levels, role: str) -> int:
    """Index of level ``ref`` (a name or a possibly negative index) in ``levels``."""
    n = len(levels.names)
    if isinstance(ref, int) and -n <= ref < n:
        return ref % n
    if isinstance(ref, str) and ref in levels.names:
        return levels.names.index(ref)
    raise ValueError(
        f"levels: expected {role} level names {list(levels.names)} or indices in "
        f"[-{n}, {n}), got {ref!r}; fix: a (student, teacher) pair where names differ"
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
