"""Frozen-teacher encoder feature supervision for any encoder-decoder (paper sections 3, 4.2.4).

A frozen *teacher* (the paper's encoding UNet++, trained label -> label) encodes the one-hot
label map; its encoder features supervise the *student*'s encoder features at the
bottleneck only (BS) or at every encoder level (ES), through the Smooth-L1 loss of
eq. 15-16, computed by :class:`~featsup.losses.FeatureLoss`. The total training loss is
eq. 17, ``w1 * DS-Loss(output, target) + w2 * SL1-Loss(features)``:
:class:`FeatureSupervisor` returns the student's output unchanged and the unweighted
feature loss, so any segmentation or deep-supervision loss applies, and w2 is set once,
in :class:`~featsup.losses.TotalLoss` (``feature_weight``).

::

    image ──> student (runs once; hooks read its encoder levels) ──> output ─> Seg / DS loss
                        │ X(1,0) .. X(4,0)  [1x1 conv / resize if shapes differ]
                        v
                  FeatureLoss (smooth L1 per level, weighted) ───────────────> + w2 * ...
                        ^
    one-hot(target) ──> frozen teacher encoder (no grad, eval)   or   TeacherFeatureCache
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from featsup._checks import check_choice, check_type
from featsup._wrappers import unwrap, wrapper_layers
from featsup.losses.feature import FeatureLoss
from featsup.supervision._pairing import (
    build_adapters,
    pair_levels,
    pairing_text,
    synchronised_adapters,
)
from featsup.supervision._teacher_input import TeacherInput, TeacherLevels
from featsup.supervision.cache import TeacherFeatureCache
from featsup.supervision.levels import (
    EncoderLevel,
    find_levels,
    probe_input,
    probe_levels,
)
from featsup.supervision.taps import HookTap, check_distinct, input_channels, resize_to

__all__ = ["FeatureSupervisor", "SupervisedOutput"]

_log = logging.getLogger(__name__)

LevelRef = int | str
LevelSpec = Literal["all", "bottleneck"] | Sequence[LevelRef | tuple[LevelRef, LevelRef]]


@dataclass
class SupervisedOutput:
    """What :class:`FeatureSupervisor` returns.

    Attributes:
        output: the student's output, exactly as its ``forward`` returns it (a tensor or
            the list of deep-supervision heads).
        feature_loss: scalar, ``sum_l w_l * loss_l`` with the level weights of the
            supervisor's :class:`~featsup.losses.FeatureLoss` (w2 is applied by
            :class:`~featsup.losses.TotalLoss`).
        level_losses: the unweighted loss of each supervised level, keyed by the student's
            level name, for logging.
    """

    output: Any
    feature_loss: torch.Tensor
    level_losses: dict[str, torch.Tensor] = field(default_factory=dict)


class FeatureSupervisor(nn.Module):
    """Wrap a student and a frozen teacher; supervise the student's encoder features.

    Levels are found automatically for featsup's :class:`~featsup.models.UNetPlusPlus`
    (X(1,0)..X(d,0)), segmentation-models-pytorch models (``stage1``..``stageN`` of the
    encoder's feature list, any encoder) and MONAI's ``UNet``, ``BasicUNet``,
    ``BasicUNetPlusPlus``, ``DynUNet`` and ``SegResNet`` (2D or 3D); any other model is
    tapped by module names (``student_layers`` / ``teacher_layers``, shallow to deep). One
    probe pass at construction measures each level's channels and reduction (stride);
    ``levels="all"`` pairs levels of equal reduction (two networks of one family, such as
    two featsup UNet++, level by level), leaves out those one side lacks and logs the
    pairs. The student's forward runs once: hooks, registered here on the network's own
    modules (inside a ``DistributedDataParallel`` or :func:`torch.compile` student; the
    probe runs the network eagerly, where in-place updates of a tapped output are
    caught), read its levels with their graph. The teacher
    is frozen for good (eval mode even after :meth:`train`, no gradients, run under
    ``torch.no_grad()``, skipped by a ``DistributedDataParallel`` around this module) and
    runs only its encoder where it has one; its parameters are not among
    :meth:`parameters`, the trainable adapters are.

    Args:
        student: the network being trained, or its ``DistributedDataParallel`` or
            :func:`torch.compile` wrapper.
        teacher: the frozen encoding network; a different object from ``student``.
        levels: ``"all"`` (every level the two share, ES), ``"bottleneck"`` (the deepest
            shared level, BS), or a list of level names or indices valid for both
            networks, or of ``(student_level, teacher_level)`` pairs.
        loss: the feature loss of the supervised levels (eq. 16), given the student's
            maps (after their adapters) and the teacher's (detached); default
            ``FeatureLoss()``: Smooth-L1 with ``beta=1``, levels averaged. Its options
            (``kind``, ``beta``, one weight per level, ``feature_norm``) are the only
            feature-loss settings; w2 is ``TotalLoss(feature_weight=)``.
        adapters: ``"auto"`` adds a trainable 1x1 conv on the student side where the
            channels differ and resizes the student map where the sizes differ; ``None``
            requires equal shapes.
        label_classes: classes of the label map, one-hot encoded as the teacher's input
            (so equal to the teacher's input channels, the default); with
            ``teacher_input``, the classes of the probe's random label map.
        teacher_input: ``teacher_input(image, target) -> tensor`` replacing the one-hot map.
        student_layers: module names to tap in the student instead of its recognised levels.
        teacher_layers: the same for the teacher.
        probe_size: spatial size of the probe used here to measure the levels: an int
            (repeated for each spatial dim of the student) or a tuple (2D or 3D); must
            suit both networks.
        probe_channels: input channels of the student, if they cannot be inferred.

    Raises:
        ValueError: on bad options, unknown levels, no level of equal reduction, levels of
            two networks of one family that differ for ``levels="all"``, level weights
            of ``loss`` not one per level, or (``adapters=None``) unequal shapes.
        TypeError: if ``student`` or ``teacher`` is not an ``nn.Module``, ``loss`` not a
            ``FeatureLoss``, or the teacher is wrapped in ``DistributedDataParallel``.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> student = UNetPlusPlus(1, 2, widths=(4, 8, 16))
        >>> teacher = UNetPlusPlus(2, 2, widths=(4, 8, 16), skip_connections=False)
        >>> sup = FeatureSupervisor(student, teacher, levels="all")
        >>> out = sup(torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32)))
        >>> len(out.output), sorted(out.level_losses), out.feature_loss.shape
        (2, ['x1_0', 'x2_0'], torch.Size([]))
        >>> sup.close()
    """

    _synced: nn.Module | None  # DDP of the adapters for a DDP student (not a submodule)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        levels: LevelSpec = "all",
        loss: FeatureLoss | None = None,
        adapters: Literal["auto"] | None = "auto",
        label_classes: int | None = None,
        teacher_input: TeacherInput | None = None,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        probe_size: int | Sequence[int] = 64,
        probe_channels: int | None = None,
    ) -> None:
        super().__init__()
        check_type("student", student, nn.Module)
        check_type("teacher", teacher, nn.Module)
        if isinstance(teacher, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            raise TypeError(
                f"teacher: expected the frozen network itself, got {type(teacher).__name__}; "
                "fix: pass teacher.module (a frozen teacher has no gradients to synchronise)"
            )
        check_distinct(student, teacher)
        check_choice("adapters", adapters, ("auto", None))
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.loss = _checked_loss(loss)
        self.adapter_mode = adapters
        self.teacher_input = teacher_input
        self.label_classes = self._resolve_label_classes(label_classes)
        self._teacher_side = TeacherLevels(self.teacher, teacher_input, self.label_classes)
        self._measure_levels(student_layers, teacher_layers, probe_size, probe_channels)
        self._pairs = pair_levels(levels, self._student_levels, self._teacher_levels)
        self.level_names = [self._student_levels.names[s] for s, _ in self._pairs]
        self.teacher_level_names = [self._teacher_levels.names[t] for _, t in self._pairs]
        self.level_weights = list(self.loss.level_weights(len(self._pairs)))
        s_sources = self._student_levels.sources
        # hooks go on the network's own modules, inside DDP or torch.compile wrappers
        self._student_tap = HookTap(unwrap(student), [s_sources[s] for s, _ in self._pairs])
        try:
            self._teacher_side.select(self._teacher_levels, [t for _, t in self._pairs])
            self.adapters = build_adapters(
                self._student_levels, self._teacher_levels, self._pairs, mode=adapters
            ).to(next(student.parameters()).device)
            # a DDP student: its adapters are synchronised alike (kept out of the module tree)
            object.__setattr__(self, "_synced", synchronised_adapters(student, self.adapters))
        except BaseException:
            self.close()  # a failed construction leaves no hooks behind
            raise
        self._teacher_side.hide_from_ddp(self, "teacher")
        _log.info("FeatureSupervisor: %s", self._pairing_text())

    # ------------------------------------------------------------------ construction helpers
    def _resolve_label_classes(self, label_classes: int | None) -> int | None:
        if self.teacher_input is not None:
            return label_classes
        channels = input_channels(self.teacher)
        if label_classes is not None and label_classes != channels:
            raise ValueError(
                f"label_classes: expected the teacher's input channels ({channels}) for its "
                f"one-hot input, got {label_classes}; fix: pass teacher_input=..."
            )
        return channels

    def _measure_levels(
        self,
        student_layers: Sequence[str] | None,
        teacher_layers: Sequence[str] | None,
        probe_size: int | Sequence[int],
        probe_channels: int | None,
    ) -> None:
        """Find both networks' levels and measure them with one probe pass each."""
        inner = unwrap(self.student)
        if student_layers is not None:  # names as seen from the wrappers: drop their prefixes
            student_layers = [_inner_name(n, self.student) for n in student_layers]
        student = find_levels(inner, student_layers, "student")
        teacher = find_levels(self.teacher, teacher_layers, "teacher")
        image = probe_input(inner, probe_size, probe_channels)
        # the whole forward, eagerly (even for a compiled student): every tap fires once, unchanged
        self._student_levels = probe_levels(inner, student, image, full=True)
        self._teacher_levels = self._teacher_side.measure(teacher, image)

    # ------------------------------------------------------------------ levels
    @property
    def student_levels(self) -> list[EncoderLevel]:
        """Every encoder level found in the student (paired or not), shallow to deep."""
        return list(self._student_levels.levels)

    @property
    def teacher_levels(self) -> list[EncoderLevel]:
        """Every encoder level found in the teacher (paired or not), shallow to deep."""
        return list(self._teacher_levels.levels)

    def _pairing_text(self) -> str:
        return pairing_text(self._student_levels, self._teacher_levels, self._pairs)

    # ------------------------------------------------------------------ mode and parameters
    def train(self, mode: bool = True) -> FeatureSupervisor:
        """Set the student and adapters to ``mode``; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """Trainable parameters: the student's and the adapters', never the teacher's."""
        skip = f"{prefix}.teacher." if prefix else "teacher."
        for name, param in super().named_parameters(prefix, recurse, remove_duplicate):
            if not name.startswith(skip):
                yield name, param

    def student_state_dict(self) -> dict[str, Any]:
        """The student's own ``state_dict`` (no teacher, no adapters, no wrapper prefix)."""
        return unwrap(self.student).state_dict()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        image: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        teacher_features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | None = None,
    ) -> SupervisedOutput:
        """Run the student once and compare its levels with the teacher's.

        Args:
            image: (B, C, H, W) student input.
            target: (B, H, W) integer label map (or (B, K, H, W) one-hot) fed to the
                teacher as one-hot; unused when ``teacher_features`` is given.
            teacher_features: precomputed teacher levels, from
                :meth:`TeacherFeatureCache.lookup` (keyed by teacher level name) or a
                list in the order of :attr:`teacher_level_names`.

        Returns:
            A :class:`SupervisedOutput`.

        Raises:
            ValueError: if neither ``target`` nor ``teacher_features`` is given, or the
                features do not match.
            RuntimeError: after :meth:`close`, or if a tapped module did not run once.
        """
        if teacher_features is None:
            if target is None and self.teacher_input is None:
                raise ValueError(
                    "target: expected a label map for the teacher, got None; "
                    "fix: pass target or teacher_features"
                )
            teacher = self._teacher_side.run(image, target)
        else:
            teacher = self._teacher_side.given(teacher_features)
        output, student = self._student_tap.run(lambda: self.student(image))
        return self._compare(output, student, teacher)

    def _compare(
        self, output: Any, student: list[torch.Tensor], teacher: list[torch.Tensor]
    ) -> SupervisedOutput:
        if self._synced is not None:
            student = self._synced(student)
        else:
            student = [adapter(s) for adapter, s in zip(self.adapters, student, strict=True)]
        pairs = list(enumerate(zip(student, teacher, strict=True)))
        student = [self._resize(k, s, t) for k, (s, t) in pairs]
        # the teacher is frozen: no gradient flows to its side, even from given features
        teacher = [t.detach().to(device=s.device, dtype=s.dtype) for _, (s, t) in pairs]
        total, parts = self.loss.terms(student, teacher)
        return SupervisedOutput(output, total, dict(zip(self.level_names, parts, strict=True)))

    def _resize(self, k: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if s.shape[2:] != t.shape[2:] and self.adapter_mode == "auto":
            s = resize_to(s, tuple(t.shape[2:]))
        if s.shape != t.shape:
            raise ValueError(
                f"level {self.level_names[k]!r}: expected equal student and teacher shapes, "
                f"got student {tuple(s.shape)} and teacher {tuple(t.shape)}; "
                "fix: adapters='auto', or teacher features of this batch"
            )
        return s

    # ------------------------------------------------------------------ cache
    def cache_teacher_features(
        self,
        dataset: Any,
        *,
        batch_size: int = 16,
        path: str | None = None,
        dtype: torch.dtype = torch.float16,
        progress: bool = False,
    ) -> TeacherFeatureCache:
        """Compute the teacher's supervised levels for every sample once ("predict and save").

        Valid when the labels seen in training equal those cached (no label-changing
        augmentation). Look features up with ``cache.lookup(index)`` and pass them as
        ``teacher_features``.

        Args:
            dataset: ``dataset[i]`` is ``(image, target, ...)`` or a target alone; ``i``
                in ``range(len(dataset))`` is the index used for lookups.
            batch_size: samples per teacher pass.
            path: a directory to write float16/float32 ``.npy`` memory maps to; None keeps
                the features in memory.
            dtype: ``torch.float16`` (half the memory) or ``torch.float32`` (exact).
            progress: show a tqdm bar.

        Returns:
            A :class:`TeacherFeatureCache` keyed by :attr:`teacher_level_names`.
        """
        device = next(self.student.parameters()).device
        return self._teacher_side.cache(
            dataset, device, batch_size=batch_size, path=path, dtype=dtype, progress=progress
        )

    # ------------------------------------------------------------------ hooks lifetime
    def close(self) -> None:
        """Remove every hook from the student and the teacher (idempotent)."""
        for part in (self.__dict__.get("_student_tap"), self.__dict__.get("_teacher_side")):
            if part is not None:
                part.remove()

    remove = close

    def __enter__(self) -> FeatureSupervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def extra_repr(self) -> str:  # noqa: D102
        return self._pairing_text()


def _checked_loss(loss: FeatureLoss | None) -> FeatureLoss:
    loss = FeatureLoss() if loss is None else loss
    check_type("loss", loss, FeatureLoss)
    if loss.reduction == "none":
        raise ValueError(
            "loss: expected a FeatureLoss reducing each level to a scalar, got "
            "reduction='none'; fix: FeatureLoss(reduction='mean')"
        )
    return loss


def _inner_name(name: str, student: nn.Module) -> str:
    """A module name relative to the network, without the prefixes of its wrappers."""
    for layer in wrapper_layers(student):
        for prefix in ("module.", "_orig_mod."):
            if name.startswith(prefix) and getattr(layer, prefix[:-1], None) is not None:
                name = name.removeprefix(prefix)
                break
    return name
