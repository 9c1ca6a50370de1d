"""Encoder levels of a network: found by architecture, measured by one probe, paired by stride.

A network's levels are found once (:func:`find_levels`): by architecture for featsup's
protocol, smp and MONAI models (:mod:`featsup.supervision._arch`), by module names for any
other. One probe pass then measures each level (:func:`probe_levels`): its channels, its
reduction (input size / map size per spatial dimension, the encoder's stride there) and
its shape. :mod:`featsup.supervision._pairing` pairs two networks' levels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from featsup._wrappers import unwrap
from featsup.supervision._arch import Kind, recognise
from featsup.supervision.taps import HookTap, frozen_modes, input_channels, resolve_module

__all__ = [
    "EncoderLevel",
    "Levels",
    "encoder_levels",
    "find_levels",
    "probe_input",
    "probe_levels",
]


@dataclass(frozen=True)
class EncoderLevel:
    """One encoder level of a network, as measured by a probe pass.

    Attributes:
        name: level name: ``"x2_0"`` (featsup), ``"stage3"`` (smp), ``"down_2"`` (MONAI
            ``UNet``), the module path (other MONAI models) or the name given.
        module: dotted path of the module whose output holds the level.
        index: for a module that returns a list (an smp encoder), the index in it.
        channels: channels of the feature map.
        reduction: input size / map size per spatial dimension, e.g. ``(4, 4)`` for a
            map at a quarter of the input's height and width.
        shape: the map's shape at the probe, ``(2, channels, *spatial)``.
    """

    name: str
    module: str
    index: int | None = None
    channels: int = 0
    reduction: tuple[int, ...] = ()
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class Levels:
    """The encoder levels of one network, shallow to deep (bottleneck last).

    Attributes:
        kind: ``"protocol"``, ``"smp"``, ``"monai"`` or ``"hooks"`` (named modules).
        family: the class that defines the levels (``""`` for named modules); two
            networks of one family pair level by level.
        levels: one :class:`EncoderLevel` per level.
    """

    kind: Kind
    family: str
    levels: tuple[EncoderLevel, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Level names, shallow to deep."""
        return tuple(level.name for level in self.levels)

    @property
    def sources(self) -> list[tuple[str, int | None]]:
        """Per level, the module path and the index in its output (or None)."""
        return [(level.module, level.index) for level in self.levels]

    def encode(self, model: nn.Module, x: torch.Tensor, picks: Iterable[int]) -> list[torch.Tensor]:
        """Run only the encoder of ``model`` (``"protocol"`` or ``"smp"``); return ``picks``."""
        if self.kind == "protocol":
            features = model.encoder_features(x)  # type: ignore[operator]
            order = [info.name for info in model.feature_info]  # type: ignore[union-attr]
            return [features[order.index(self.levels[i].name)] for i in picks]
        if self.kind == "smp":
            features = model.encoder(x)  # type: ignore[operator]
            return [features[self.levels[i].index] for i in picks]  # type: ignore[index]
        raise ValueError(f"kind: expected 'protocol' or 'smp' to run an encoder, got {self.kind!r}")

    def measured(self, features: Sequence[torch.Tensor], size: tuple[int, ...]) -> Levels:
        """These levels with channels, reduction and shape read from probe ``features``.

        Levels with no channels (smp's empty ``mit`` stage) and, for a recognised
        architecture, full-resolution levels are dropped.
        """
        kept = []
        for level, feature in zip(self.levels, features, strict=True):
            if feature.ndim != len(size) + 2:
                raise ValueError(
                    f"level {level.name!r}: expected a (B, C, *spatial) map with {len(size)} "
                    f"spatial dims, got shape {tuple(feature.shape)}; fix: tap another module"
                )
            spatial = zip(size, feature.shape[2:], strict=True)
            reduction = tuple(max(1, round(s / max(n, 1))) for s, n in spatial)
            if feature.shape[1] == 0 or (self.kind != "hooks" and max(reduction) == 1):
                continue
            shape = tuple(feature.shape)
            kept.append(replace(level, channels=shape[1], reduction=reduction, shape=shape))
        if not kept:
            raise ValueError(
                f"model: expected at least one encoder level below full resolution, got none "
                f"of {list(self.names)}; fix: name the levels with layers=[...]"
            )
        return replace(self, levels=tuple(kept))


def find_levels(model: nn.Module, layers: Sequence[str] | None, role: str) -> Levels:
    """The (not yet measured) levels of ``model``: recognised, or the modules ``layers``.

    Raises:
        ValueError: if ``layers`` names a missing module or is empty, or if the model is
            not recognised and ``layers`` is None.
    """
    argument = f"{role}_layers" if role in ("student", "teacher") else "layers"
    if layers is not None:
        if isinstance(layers, str) or not layers:
            raise ValueError(
                f"{argument}: expected a non-empty list of module names, got {layers!r}"
            )
        names = [str(name) for name in layers]
        for name in names:
            resolve_module(model, name, argument)
        return Levels("hooks", "", tuple(EncoderLevel(name, name) for name in names))
    found = recognise(model)
    if found is None:
        raise ValueError(
            f"{role}: expected a featsup UNetPlusPlus, an smp model, a MONAI UNet, BasicUNet, "
            f"BasicUNetPlusPlus, DynUNet or SegResNet, or {argument} naming the encoder "
            f"modules, got {type(model).__name__} without {argument}; "
            f"fix: pass {argument}=[...] (see dict({role}.named_modules()))"
        )
    kind, family, candidates = found
    levels = tuple(EncoderLevel(name, path, index) for name, (path, index) in candidates)
    return Levels(kind, family, levels)


def probe_input(
    model: nn.Module, probe_size: int | Sequence[int], channels: int | None = None
) -> torch.Tensor:
    """A seeded random (2, C, *size) probe on ``model``'s device and dtype.

    An int ``probe_size`` is repeated for each spatial dim of the model's first
    convolution (2 for ``Conv2d``, 3 for ``Conv3d``).

    Raises:
        ValueError: if ``probe_size`` has not 2 or 3 sizes.
    """
    if isinstance(probe_size, int):
        conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        dims = len(conv.kernel_size) if conv is not None else 2
        size = (probe_size,) * dims
    else:
        size = tuple(int(s) for s in probe_size)
    if len(size) not in (2, 3):
        raise ValueError(f"probe_size: expected an int or 2 or 3 sizes, got {probe_size!r}")
    first = next(model.parameters())
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, channels or input_channels(model), *size, generator=gen)
    return image.to(first.device, first.dtype)


@torch.no_grad()
def probe_levels(model: nn.Module, levels: Levels, x: torch.Tensor, *, full: bool) -> Levels:
    """Measure ``levels`` of ``model`` on input ``x`` (eval mode, no grad, modes restored).

    Args:
        model: the (unwrapped) network.
        levels: from :func:`find_levels`.
        x: its input.
        full: run the whole forward through hooks (checks each tapped module runs once
            and is not changed in place); else only the encoder, or stop the forward once
            every level has fired.
    """
    with frozen_modes(model):
        model.eval()
        if not full and levels.kind in ("protocol", "smp"):
            features = levels.encode(model, x, range(len(levels.levels)))
        else:
            tap = HookTap(model, levels.sources, stop_early=not full)
            try:
                features = tap.run(lambda: model(x))[1]
            finally:
                tap.remove()
    return levels.measured(features, tuple(x.shape[2:]))


def encoder_levels(
    model: nn.Module,
    *,
    layers: Sequence[str] | None = None,
    probe_size: int | Sequence[int] = 64,
    in_channels: int | None = None,
) -> list[EncoderLevel]:
    """The encoder levels of ``model``, shallow to deep, measured by one probe pass.

    Args:
        model: a featsup UNet++, an smp model, a MONAI ``UNet``, ``BasicUNet``,
            ``BasicUNetPlusPlus``, ``DynUNet`` or ``SegResNet`` (2D or 3D), possibly
            wrapped in ``DistributedDataParallel`` or :func:`torch.compile`, or any model
            with ``layers``.
        layers: dotted module names to use as levels instead of the recognised ones.
        probe_size: spatial size of the probe: an int (each spatial dim) or a tuple.
        in_channels: input channels, if they cannot be inferred.

    Returns:
        One :class:`EncoderLevel` per level (full-resolution levels of a recognised
        architecture left out).

    Raises:
        ValueError: for an unrecognised model without ``layers`` or a bad probe size.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> levels = encoder_levels(UNetPlusPlus(1, 2, widths=(4, 8, 16)), probe_size=32)
        >>> [(lv.name, lv.channels, lv.reduction) for lv in levels]
        [('x1_0', 8, (2, 2)), ('x2_0', 16, (4, 4))]
    """
    inner = unwrap(model)
    found = find_levels(inner, layers, "model")
    x = probe_input(inner, probe_size, in_channels)
    return list(probe_levels(inner, found, x, full=False).levels)
