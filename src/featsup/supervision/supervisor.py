"""Frozen-teacher encoder feature supervision for any encoder-decoder (paper sections 3, 4.2.4).

A frozen *teacher* (the paper's encoding UNet++, trained label -> label) encodes the one-hot
label map; its encoder features supervise the *student*'s encoder features at the
bottleneck only (BS) or at every encoder level (ES), through the Smooth-L1 loss of
eq. 15-16. The total training loss is eq. 17,
``w1 * DS-Loss(output, target) + w2 * SL1-Loss(features)``: :class:`FeatureSupervisor`
returns the student's output unchanged, so any segmentation or deep-supervision loss
applies, together with the feature loss.

::

    image ──> student (runs once; hooks read its encoder levels) ──> output ─> Seg / DS loss
                        │ X(1,0) .. X(4,0)  [1x1 conv / resize if shapes differ]
                        v
                  feature loss (smooth L1 per level, weighted) ──────────────> + w2 * ...
                        ^
    one-hot(target) ──> frozen teacher encoder (no grad, eval)   or   TeacherFeatureCache
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from featsup._checks import check_choice, check_positive, check_type
from featsup.losses.feature import feature_loss
from featsup.supervision._arch import unwrap
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
from featsup.supervision.taps import (
    HookTap,
    check_distinct,
    input_channels,
    level_weights_for,
    resize_to,
)

__all__ = ["FeatureSupervisor", "SupervisedOutput"]

_log = logging.getLogger(__name__)
_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel)

LevelRef = int | str
LevelSpec = Literal["all", "bottleneck"] | Sequence[LevelRef | tuple[LevelRef, LevelRef]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SupervisedOutput:
    """What :class:`FeatureSupervisor` returns.

    Attributes:
        output: the student's output, exactly as its ``forward`` returns it (a tensor or
            the list of deep-supervision heads).
        feature_loss: scalar, ``weight * sum_l level_weight_l * loss_l``.
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
    pairs. The student's forward runs once: hooks, registered here (inside a
    ``DistributedDataParallel`` student), read its levels with their graph. The teacher
    is frozen for good (eval mode even after :meth:`train`, no gradients, run under
    ``torch.no_grad()``, skipped by a ``DistributedDataParallel`` around this module) and
    runs only its encoder where it has one; its parameters are not among
    :meth:`parameters`, the trainable adapters are.

    Args:
        student: the network being trained (or its ``DistributedDataParallel`` wrapper).
        teacher: the frozen encoding network; a different object from ``student``.
        levels: ``"all"`` (every level the two share, ES), ``"bottleneck"`` (the deepest
            shared level, BS), or a list of level names or indices valid for both
            networks, or of ``(student_level, teacher_level)`` pairs.
        loss: ``"smooth_l1"`` (paper eq. 16 with ``beta``), ``"mse"`` or a callable
            ``loss(student_features, teacher_features) -> scalar``.
        beta: Smooth-L1 transition point, >= 0 (1.0 in the paper).
        weight: w2 of eq. 17, multiplies the summed level losses.
        level_weights: one weight per supervised level; default ``1 / n`` each (the mean
            over levels, as the deep-supervision loss averages its heads).
        adapters: ``"auto"`` adds a trainable 1x1 conv on the student side where the
            channels differ and resizes the student map where the sizes differ; ``None``
            requires equal shapes.
        feature_norm: ``"none"``, or ``"channel"``: standardise each (B, C) map of the
            student (after its adapter) and of the teacher (without gradient) to zero
            mean and unit variance over space before the loss, a parameter-free
            instance norm that makes the loss blind to the teacher's feature scale.
        num_classes: classes of the default teacher input (the one-hot target); default
            the teacher's input channels.
        teacher_input: ``teacher_input(image, target) -> tensor`` replacing the one-hot map.
        student_layers: module names to tap in the student instead of its recognised levels.
        teacher_layers: the same for the teacher.
        probe_size: spatial size of the probe used here to measure the levels: an int
            (repeated for each spatial dim of the student) or a tuple (2D or 3D); must
            suit both networks.
        probe_channels: input channels of the student, if they cannot be inferred.

    Raises:
        ValueError: on bad options, unknown levels, no level of equal reduction, levels of
            two networks of one family that differ for ``levels="all"``, or
            (``adapters=None``) unequal shapes, listing both.
        TypeError: if ``student`` or ``teacher`` is not an ``nn.Module``, or the teacher
            is wrapped in ``DistributedDataParallel``.

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
        loss: Literal["smooth_l1", "mse"] | LossFn = "smooth_l1",
        beta: float = 1.0,
        weight: float = 1.0,
        level_weights: Sequence[float] | None = None,
        adapters: Literal["auto"] | None = "auto",
        feature_norm: Literal["none", "channel"] = "none",
        num_classes: int | None = None,
        teacher_input: TeacherInput | None = None,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        probe_size: int | Sequence[int] = 64,
        probe_channels: int | None = None,
    ) -> None:
        super().__init__()
        check_type("student", student, nn.Module)
        check_type("teacher", teacher, nn.Module)
        if isinstance(teacher, _WRAPPERS):
            raise TypeError(
                f"teacher: expected the frozen network itself, got {type(teacher).__name__}; "
                "fix: pass teacher.module (a frozen teacher has no gradients to synchronise)"
            )
        check_distinct(student, teacher)
        if not callable(loss):
            check_choice("loss", loss, ("smooth_l1", "mse"))
        check_positive("beta", beta, strict=False)
        check_positive("weight", weight, strict=False)
        check_choice("adapters", adapters, ("auto", None))
        check_choice("feature_norm", feature_norm, ("none", "channel"))
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.loss, self.beta, self.weight, self.adapter_mode = loss, beta, weight, adapters
        self.feature_norm = feature_norm
        self.teacher_input = teacher_input
        self.num_classes = self._resolve_num_classes(num_classes)
        self._teacher_side = TeacherLevels(self.teacher, teacher_input, self.num_classes)
        self._measure_levels(student_layers, teacher_layers, probe_size, probe_channels)
        self._pairs = pair_levels(levels, self._student_levels, self._teacher_levels)
        self.level_names = [self._student_levels.names[s] for s, _ in self._pairs]
        self.teacher_level_names = [self._teacher_levels.names[t] for _, t in self._pairs]
        self.level_weights = level_weights_for(level_weights, len(self._pairs))
        s_sources = self._student_levels.sources
        # hooks go on the network's own modules, inside a DistributedDataParallel wrapper
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
    def _resolve_num_classes(self, num_classes: int | None) -> int | None:
        if self.teacher_input is not None:
            return num_classes
        channels = input_channels(self.teacher)
        if num_classes is not None and num_classes != channels:
            raise ValueError(
                f"num_classes: expected the teacher's input channels ({channels}) for its "
                f"one-hot input, got {num_classes}; fix: pass teacher_input=..."
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
        if student_layers is not None and inner is not self.student:  # DDP's "module." prefix
            student_layers = [n.removeprefix("module.") for n in student_layers]
        student = find_levels(inner, student_layers, "student")
        teacher = find_levels(self.teacher, teacher_layers, "teacher")
        image = probe_input(inner, probe_size, probe_channels)
        # the student runs its whole forward: every tapped module must fire exactly once
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
        """The student's own ``state_dict`` (no teacher, no adapters, no DDP prefix)."""
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
        level_losses: dict[str, torch.Tensor] = {}
        parts = []
        if self._synced is not None:
            student = self._synced(student)
        else:
            student = [adapter(s) for adapter, s in zip(self.adapters, student, strict=True)]
        for k, (s, t) in enumerate(zip(student, teacher, strict=True)):
            s = self._resize(k, s, t)
            t = t.to(device=s.device, dtype=s.dtype)
            if self.feature_norm == "channel":
                s = _standardise(s)
                with torch.no_grad():
                    t = _standardise(t)
            part = self._level_loss(s, t)
            level_losses[self.level_names[k]] = part
            parts.append(self.level_weights[k] * part)
        total = torch.stack(parts).sum() if len(parts) > 1 else parts[0]
        return SupervisedOutput(output, self.weight * total, level_losses)

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

    def _level_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if callable(self.loss):
            return self.loss(s, t)
        return feature_loss(s, t, kind=self.loss, beta=self.beta)

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
        loss = getattr(self.loss, "__name__", self.loss)
        return (
            f"{self._pairing_text()},\nloss={loss!r}, beta={self.beta}, weight={self.weight}, "
            f"feature_norm={self.feature_norm!r}"
        )


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> zero mean, unit variance over space per sample and channel."""
    dims = tuple(range(2, x.ndim))
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    return (x - mean) * torch.rsqrt(var + 1e-5)
