"""The frozen teacher's levels during training: run live, or taken from a cache.

:class:`TeacherLevels` is the teacher half of a :class:`~featsup.supervision.FeatureSupervisor`:
it builds the teacher's input (the one-hot label map, or a user function), measures the
teacher's levels, and then runs the teacher's encoder alone where the architecture has one
(featsup's protocol, smp), else its forward with hooks stopped after the deepest tapped
level, always under ``torch.no_grad()`` in eval mode; or it orders precomputed features
by level name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featsup.losses import one_hot
from featsup.supervision.levels import Levels, probe_levels
from featsup.supervision.taps import HookTap
from featsup.supervision.teacher import TeacherFeatureCache, build_feature_cache

__all__ = ["TeacherLevels"]

TeacherInput = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class TeacherLevels:
    """The supervised levels of a frozen teacher.

    Args:
        teacher: the frozen network.
        teacher_input: ``teacher_input(image, target)``, or None for the one-hot target.
        label_classes: classes of the label map, one-hot encoded as the teacher's input.
    """

    def __init__(
        self, teacher: nn.Module, teacher_input: TeacherInput | None, label_classes: int | None
    ) -> None:
        self.teacher = teacher
        self.teacher_input = teacher_input
        self.label_classes = label_classes
        self.levels: Levels | None = None
        self.picks: list[int] = []
        self.names: list[str] = []
        self.tap: HookTap | None = None

    def input_for(self, image: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The teacher's input: ``teacher_input(image, target)`` or the one-hot target."""
        if self.teacher_input is not None:
            return self.teacher_input(image, target)
        assert target is not None and self.label_classes is not None
        first = next(self.teacher.parameters())
        return one_hot(target.to(first.device), self.label_classes, dtype=first.dtype)

    def measure(self, found: Levels, image: torch.Tensor) -> Levels:
        """Measure the teacher's levels ``found`` on a probe for the student's ``image``."""
        gen = torch.Generator().manual_seed(1)
        target = torch.randint(0, self.label_classes or 1, (len(image), *image.shape[2:]),
                               generator=gen)  # fmt: skip
        return probe_levels(self.teacher, found, self.input_for(image, target), full=False)

    def select(self, levels: Levels, picks: Sequence[int]) -> None:
        """Supervise the levels ``picks`` of ``levels`` (hooks registered here if needed)."""
        self.levels, self.picks = levels, list(picks)
        self.names = [levels.names[i] for i in self.picks]
        if levels.kind not in ("protocol", "smp"):
            sources = [levels.sources[i] for i in self.picks]
            self.tap = HookTap(self.teacher, sources, stop_early=True)

    @torch.no_grad()
    def run(self, image: torch.Tensor, target: torch.Tensor | None) -> list[torch.Tensor]:
        """The supervised levels of the teacher for a batch."""
        assert self.levels is not None, "select() first"
        if self.teacher.training:  # somebody called teacher.train() directly
            self.teacher.eval()
        x = self.input_for(image, target)
        if self.tap is None:
            return self.levels.encode(self.teacher, x, self.picks)
        return self.tap.run(lambda: self.teacher(x))[1]

    def given(
        self, features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Precomputed levels (keyed by teacher level name, or a list in pair order).

        Raises:
            ValueError: if a level is missing or the list has the wrong length.
        """
        if isinstance(features, Mapping):
            missing = [n for n in self.names if n not in features]
            if missing:
                raise ValueError(
                    f"teacher_features: expected teacher levels {self.names}, "
                    f"got keys {sorted(features)}; fix: cache these levels"
                )
            return [features[n] for n in self.names]
        values = list(features)
        if len(values) != len(self.names):
            raise ValueError(
                f"teacher_features: expected {len(self.names)} maps ({self.names}), "
                f"got {len(values)}"
            )
        return values

    def cache(self, dataset: Any, device: torch.device, **options: Any) -> TeacherFeatureCache:
        """Run the teacher over ``dataset`` once (see ``cache_teacher_features``)."""

        def encode(image: torch.Tensor | None, target: torch.Tensor) -> list[torch.Tensor]:
            if image is None and self.teacher_input is not None:
                raise ValueError(
                    "dataset: expected (image, target) items for teacher_input, got targets "
                    "alone; fix: a dataset of (image, target) pairs"
                )
            image = torch.empty(0, device=device) if image is None else image.to(device)
            return self.run(image, target.to(device))

        return build_feature_cache(encode, dataset, list(self.names), **options)

    def hide_from_ddp(self, owner: nn.Module, prefix: str) -> None:
        """Make a ``DistributedDataParallel`` around ``owner`` skip the teacher entirely.

        Its parameters and buffers (``owner.<prefix>.*``) are then neither broadcast at
        wrapping, nor synchronised after a forward, nor bucketed for gradients.
        """
        names = [n for n, _ in self.teacher.named_parameters(prefix=prefix)]
        names += [n for n, _ in self.teacher.named_buffers(prefix=prefix)]
        ddp = nn.parallel.DistributedDataParallel
        ddp._set_params_and_buffers_to_ignore_for_model(owner, names)

    def remove(self) -> None:
        """Remove the teacher's hooks, if any (idempotent)."""
        if self.tap is not None:
            self.tap.remove()
