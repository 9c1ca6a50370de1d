"""Which modules hold the encoder levels of each recognised architecture.

Each recogniser returns the *candidate* levels of one model, shallow to deep: a name and
the module (plus, for a module returning a list, the index) whose output is the level.
Channels and reductions are not declared here: :func:`featsup.supervision.levels.probe_levels`
reads them from one probe pass, so that every encoder, dilated or not, 2D or 3D, is
described by what it computes. Full-resolution candidates (MONAI's first block) are
listed and dropped after the probe, when their reduction is known.

Recognised (no import of the libraries is needed; classes are matched by module and name,
subclasses included):

- featsup's protocol: ``feature_info`` and ``encoder_features`` (:class:`UNetPlusPlus`);
- segmentation-models-pytorch: any model whose ``encoder`` has ``out_channels`` (every
  encoder, transformers such as ``mit_b0`` included): ``stage1``..``stageN`` of the
  encoder's feature list;
- MONAI: ``UNet``, ``BasicUNet``, ``BasicUNetPlusPlus``, ``DynUNet``, ``SegResNet``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import nn

__all__ = ["Candidates", "Kind", "recognise"]

Kind = Literal["protocol", "smp", "monai", "hooks"]
# (kind, family, [(level name, (module path, index in the module's output list or None))])
Candidates = tuple[Kind, str, list[tuple[str, tuple[str, int | None]]]]


def _family(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _protocol(model: nn.Module) -> Candidates | None:
    if not hasattr(model, "feature_info") or not callable(getattr(model, "encoder_features", None)):
        return None
    infos = list(model.feature_info)  # type: ignore[arg-type]
    return "protocol", _family(type(model)), [(i.name, (i.module, None)) for i in infos]


def _smp(model: nn.Module) -> Candidates | None:
    encoder = getattr(model, "encoder", None)
    if not (
        type(model).__module__.startswith("segmentation_models_pytorch")
        and isinstance(encoder, nn.Module)
        and isinstance(getattr(encoder, "out_channels", None), (list, tuple))
    ):
        return None
    count = len(encoder.out_channels)  # type: ignore[arg-type]
    levels: list[tuple[str, tuple[str, int | None]]] = [
        (f"stage{i}", ("encoder", i))
        for i in range(1, count)  # 0 is the input itself
    ]
    return "smp", _family(type(encoder)), levels


# ---------------------------------------------------------------------- MONAI
def _monai_unet(model: nn.Module) -> list[tuple[str, str]]:
    """``UNet``: the down layer of each nested block, then the bottom layer."""
    levels: list[tuple[str, str]] = []
    path, block = "model", getattr(model, "model", None)
    while (
        isinstance(block, nn.Sequential)
        and len(block) == 3
        and type(block[1]).__name__ == "SkipConnection"
    ):
        levels.append((f"down_{len(levels) + 1}", f"{path}.0"))
        path, block = f"{path}.1.submodule", block[1].submodule
    return [*levels, ("bottom", path)]


def _children(model: nn.Module, name: str) -> list[str]:
    container = getattr(model, name, None)
    return [f"{name}.{k}" for k, _ in container.named_children()] if container else []


def _monai_dynunet(model: nn.Module) -> list[tuple[str, str]]:
    paths = ["input_block", *_children(model, "downsamples"), "bottleneck"]
    return [(p, p) for p in paths]


def _monai_segresnet(model: nn.Module) -> list[tuple[str, str]]:
    return [(p, p) for p in _children(model, "down_layers")]


def _named(*paths: str) -> Callable[[nn.Module], list[tuple[str, str]]]:
    return lambda model: [(p, p) for p in paths]


_MONAI: dict[str, Callable[[nn.Module], list[tuple[str, str]]]] = {
    "UNet": _monai_unet,
    "BasicUNet": _named("conv_0", "down_1", "down_2", "down_3", "down_4"),
    "BasicUNetPlusPlus": _named("conv_0_0", "conv_1_0", "conv_2_0", "conv_3_0", "conv_4_0"),
    "DynUNet": _monai_dynunet,
    "SegResNet": _monai_segresnet,
}


def _monai(model: nn.Module) -> Candidates | None:
    for cls in type(model).__mro__:
        if cls.__module__.startswith("monai.networks.nets") and cls.__name__ in _MONAI:
            levels = _MONAI[cls.__name__](model)
            return "monai", _family(cls), [(name, (path, None)) for name, path in levels]
    return None


def recognise(model: nn.Module) -> Candidates | None:
    """Candidate levels of a recognised architecture, or None for any other model."""
    for recogniser in (_protocol, _smp, _monai):
        found = recogniser(model)
        if found is not None:
            return found
    return None
