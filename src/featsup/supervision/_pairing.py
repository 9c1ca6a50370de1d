"""Pairing two networks' encoder levels, and the adapters between the pairs.

:func:`pair_levels` pairs two networks' measured levels (:mod:`featsup.supervision.levels`):

levels of equal reduction are paired (the deepest level of each reduction where a network
has several, as a dilated encoder does), and levels one side lacks are left out. A
teacher that mirrors its student (two featsup UNet++ of one depth) pairs level by level
this way too, since its levels have the student's reductions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from featsup._checks import check_choice
from featsup._wrappers import wrapper_layers
from featsup.supervision.levels import Levels

__all__ = [
    "build_adapters",
    "format_reduction",
    "level_index",
    "pair_levels",
    "pairing_text",
    "synchronised_adapters",
]


def format_reduction(reduction: tuple[int, ...]) -> str:
    """``(4, 4)`` -> ``"1/4"``; an anisotropic ``(2, 2, 1)`` -> ``"1/(2, 2, 1)"``."""
    return f"1/{reduction[0]}" if len(set(reduction)) == 1 else f"1/{reduction}"


def _by_reduction(levels: Levels) -> dict[tuple[int, ...], int]:
    deepest: dict[tuple[int, ...], int] = {}
    for i, level in enumerate(levels.levels):
        deepest[level.reduction] = i  # a later (deeper) level of one reduction wins
    return deepest


def _pair_by_reduction(student: Levels, teacher: Levels) -> list[tuple[int, int]]:
    s_map, t_map = _by_reduction(student), _by_reduction(teacher)
    pairs = sorted((s_map[r], t_map[r]) for r in s_map.keys() & t_map.keys())
    if not pairs:
        s_red = [format_reduction(lv.reduction) for lv in student.levels]
        t_red = [format_reduction(lv.reduction) for lv in teacher.levels]
        raise ValueError(
            f"levels: expected student and teacher levels of equal reduction, got student "
            f"{s_red} and teacher {t_red}; fix: levels=[(student, teacher), ...]"
        )
    return pairs


def pair_levels(spec: Any, student: Levels, teacher: Levels) -> list[tuple[int, int]]:
    """Turn a ``levels`` option into (student index, teacher index) pairs."""
    if isinstance(spec, str):
        check_choice("levels", spec, ("all", "bottleneck"))
        pairs = _pair_by_reduction(student, teacher)
        return pairs[-1:] if spec == "bottleneck" else pairs
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
    n = len(levels.levels)
    if isinstance(ref, int) and -n <= ref < n:
        return ref % n
    if isinstance(ref, str) and ref in levels.names:
        return levels.names.index(ref)
    raise ValueError(
        f"levels: expected {role} level names {list(levels.names)} or indices in "
        f"[-{n}, {n}), got {ref!r}; fix: a (student, teacher) pair where names differ"
    )


def pairing_text(student: Levels, teacher: Levels, pairs: list[tuple[int, int]]) -> str:
    """One line: the pairs with their reduction, and the levels left out on each side."""
    pairs_text = ", ".join(
        f"{student.levels[s].name}->{teacher.levels[t].name} "
        f"({format_reduction(student.levels[s].reduction)})"
        for s, t in pairs
    )
    s_paired, t_paired = {s for s, _ in pairs}, {t for _, t in pairs}
    s_out = [lv.name for i, lv in enumerate(student.levels) if i not in s_paired]
    t_out = [lv.name for i, lv in enumerate(teacher.levels) if i not in t_paired]
    return f"paired [{pairs_text}], left out student {s_out} and teacher {t_out}"


def build_adapters(
    student: Levels, teacher: Levels, pairs: list[tuple[int, int]], *, mode: str | None
) -> nn.ModuleList:
    """Per pair, a 1x1 conv (student -> teacher channels) where the channels differ.

    Raises:
        ValueError: if ``mode`` is None and a pair's probe shapes differ, listing both.
    """
    adapters = nn.ModuleList()
    for s, t in pairs:
        s_level, t_level = student.levels[s], teacher.levels[t]
        if s_level.shape == t_level.shape:
            adapters.append(nn.Identity())
            continue
        if mode is None:
            raise ValueError(
                f"adapters: expected equal student and teacher shapes at level "
                f"{s_level.name!r} (probe), got student {s_level.shape} and teacher "
                f"{t_level.shape}; fix: adapters='auto' or other levels"
            )
        conv = nn.Conv2d if len(s_level.shape) == 4 else nn.Conv3d
        same = s_level.channels == t_level.channels
        adapters.append(nn.Identity() if same else conv(s_level.channels, t_level.channels, 1))
    return adapters


class _AdapterStack(nn.Module):
    """Apply adapter ``k`` to feature ``k`` in one call, so that DDP can wrap the adapters."""

    def __init__(self, adapters: nn.ModuleList) -> None:
        super().__init__()
        self.adapters = adapters

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [adapter(f) for adapter, f in zip(self.adapters, features, strict=True)]


def synchronised_adapters(student: nn.Module, adapters: nn.ModuleList) -> nn.Module | None:
    """A DDP wrapper of ``adapters`` in the process group of a DDP ``student``, else None.

    ``student`` counts as DDP when a DDP wrapper is among its wrapper layers (for
    example ``torch.compile(DDP(net))``).

    The adapters belong to the supervisor, not to the student that the user wrapped: this
    wrapper broadcasts their initial weights from rank 0 and averages their gradients,
    as DDP does for the student.
    """
    ddp = nn.parallel.DistributedDataParallel
    found = [layer for layer in wrapper_layers(student) if isinstance(layer, ddp)]
    if not found or not any(p.requires_grad for p in adapters.parameters()):
        return None
    student = found[0]
    return ddp(
        _AdapterStack(adapters), device_ids=student.device_ids,
        output_device=student.output_device, process_group=student.process_group,
    )  # fmt: skip
