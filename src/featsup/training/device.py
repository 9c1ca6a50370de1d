"""Where tensors live, in which layout and precision: device, batch moving, AMP.

:func:`resolve_device` picks the training device (this rank's GPU under torchrun),
:func:`move_to_device` moves a collated batch there, and :class:`Precision` owns the
autocast dtype and, for float16, the gradient scaler: it runs the forward pass under
autocast and the backward pass and optimizer step through the scaler.
:func:`channels_last_pays` says which memory layout trains faster on a device, and
:func:`keep_freed_memory` stops glibc from handing each step's memory back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from featsup import _checks
from featsup._checks import check_choice
from featsup.training.distributed import DistEnv

__all__ = [
    "Precision",
    "channels_last_pays",
    "cpu_has_bf16_units",
    "keep_freed_memory",
    "move_to_device",
    "resolve_amp",
    "resolve_device",
]


def resolve_device(device: str | torch.device, env: DistEnv) -> torch.device:
    """The training device; under torchrun, plain ``"cuda"`` means this rank's GPU.

    Args:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``.
        env: the rank layout (selects ``cuda:LOCAL_RANK`` under torchrun).

    Returns:
        The device.

    Raises:
        ValueError: for an unknown or unavailable device.

    Example:
        >>> resolve_device("cpu", DistEnv())
        device(type='cpu')
    """
    dev = _checks.resolve_device(device, local_rank=env.local_rank if env.distributed else 0)
    if dev.type == "cuda" and env.distributed:
        torch.cuda.set_device(dev)
    return dev


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts, lists and tuples (named ones too) to ``device``.

    Args:
        batch: a tensor, or dicts, lists and tuples of them; other values pass through.
        device: the destination.

    Returns:
        The same structure with its tensors on ``device``.

    Example:
        >>> move_to_device({"image": torch.zeros(1), "name": "a"}, torch.device("cpu"))
        {'image': tensor([0.]), 'name': 'a'}
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [move_to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` on ``device`` (None: full precision).

    ``"auto"`` is bfloat16 (or float16 where bfloat16 is missing) on CUDA and full
    precision elsewhere; ``"bf16"`` also runs on CPUs, where oneDNN uses the bfloat16
    units of CPUs that have them (Intel AMX, AVX-512 BF16) and emulates them otherwise.

    Args:
        amp: ``"auto"``, ``"bf16"``, ``"fp16"`` or None.
        device: the training device.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None.

    Raises:
        ValueError: for an unknown ``amp`` or float16 off CUDA.

    Example:
        >>> resolve_amp("bf16", torch.device("cpu"))
        torch.bfloat16
    """
    check_choice("amp", amp, ("auto", "bf16", "fp16", None))
    if device.type != "cuda":
        if amp == "bf16" and device.type == "cpu":
            return torch.bfloat16
        if amp in ("bf16", "fp16"):
            raise ValueError(
                f"amp: expected None, 'auto' or (on CPU) 'bf16' on device {device}, got "
                f"{amp!r}; float16 autocast runs on CUDA only"
            )
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware: Intel AMX tiles or AVX-512 BF16.

    Where it does, ``amp="bf16"`` made an optimizer step of the example's CPU preset
    1.28-1.34x faster on a 2-core Xeon with AMX and 1.20x on a 2-core AMD EPYC with
    AVX-512 BF16 (docs/benchmarks.md); elsewhere bfloat16 is emulated and rarely pays.

    Returns:
        True where the AMX tile or the AVX-512 BF16 instructions are available.

    Example:
        >>> isinstance(cpu_has_bf16_units(), bool)
        True
    """
    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]  # fmt: skip
    return any(bool(probe()) for probe in probes if probe is not None)


def channels_last_pays(device: str | torch.device, spatial_dims: int = 2) -> bool:
    """Whether a UNet++ trains faster channels-last than contiguous on ``device``.

    Measured with ``benchmarks/teacher_layout.py`` (docs/benchmarks.md), float32 steps of
    the cascade example's CPU models. On a 2-core AMD EPYC with AVX-512, channels-last made
    an encoding teacher's step 1.28-1.49x faster. On a 2-core AMD EPYC with AVX2 only,
    contiguous (NCHW) was faster in 2D (a student's step 1.08-1.19x, a teacher's
    1.02-1.20x) and channels-last-3d faster in 3D (1.32-1.33x). So: True on CUDA, in 3D,
    and in 2D on CPUs with AVX-512; False in 2D on CPUs with AVX2 at most.

    Args:
        device: the training device.
        spatial_dims: 2 or 3.

    Returns:
        True where :meth:`~featsup.models.UNetPlusPlus.use_channels_last` pays.

    Raises:
        ValueError: for ``spatial_dims`` other than 2 or 3.

    Example:
        >>> channels_last_pays("cuda"), channels_last_pays("cpu", spatial_dims=3)
        (True, True)
    """
    check_choice("spatial_dims", spatial_dims, (2, 3))
    if torch.device(device).type != "cpu" or spatial_dims == 3:
        return True
    probe = getattr(torch.cpu, "_is_avx512_supported", None)
    return bool(probe()) if probe is not None else True


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """Keep the memory a training step frees for the next step (glibc on Linux only).

    By default glibc returns the free top of its heap to the system once it exceeds a
    few MB, and serves large blocks with fresh ``mmap`` calls, so each CPU training step
    faults its activations in again page by page. This raises both thresholds
    (``mallopt``): the process keeps up to ``trim_threshold`` bytes free at the heap's
    top, and blocks up to ``mmap_threshold`` bytes come from the heap. The resident size
    then stays near its peak. The setting is process-wide and lasts until the process
    ends; calling it again is harmless. See docs/benchmarks.md for what it gains.

    Args:
        trim_threshold: free bytes kept at the heap's top (at most 2**31 - 1).
        mmap_threshold: blocks from this size up get their own mapping (glibc allows at
            most 32 MiB on 64-bit systems).

    Returns:
        True when glibc took both settings; False elsewhere (another C library or
        system), where nothing changes.

    Raises:
        ValueError: for a threshold below 0 or above 2**31 - 1.

    Example:
        >>> isinstance(keep_freed_memory(), bool)
        True
    """
    for name, value in (("trim_threshold", trim_threshold), ("mmap_threshold", mmap_threshold)):
        if not 0 <= value < 2**31:
            raise ValueError(f"{name}: expected 0 <= bytes < 2**31, got {value}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):  # glibc's mallopt only
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    took = [mallopt(_M_MMAP_THRESHOLD, mmap_threshold), mallopt(_M_TRIM_THRESHOLD, trim_threshold)]
    return all(flag == 1 for flag in took)


class Precision:
    """Autocast and, for float16, gradient scaling of one training run.

    Args:
        amp: as :func:`resolve_amp`.
        device: the training device.

    Attributes:
        dtype: the autocast dtype, or None for full precision.
        scaler: a :class:`torch.amp.GradScaler` with float16, else None.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> precision = Precision("bf16", torch.device("cpu"))
        >>> with precision.autocast():
        ...     loss = net(torch.ones(1, 2)).float().square().mean()
        >>> precision.backward(loss)
        >>> precision.step(opt, params=list(net.parameters()), grad_clip=None)
        >>> precision.dtype, precision.scaler
        (torch.bfloat16, None)
    """

    def __init__(self, amp: str | None, device: torch.device) -> None:
        self.device = device
        self.dtype = resolve_amp(amp, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None

    def autocast(self) -> AbstractContextManager[Any]:
        """Autocast to :attr:`dtype` on the device (a no-op in full precision)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (scaled with float16)."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        params: list[nn.Parameter],
        grad_clip: float | None,
    ) -> torch.Tensor | None:
        """Clip the (unscaled) gradients of ``params`` to ``grad_clip`` and step ``optimizer``.

        Returns:
            The global gradient norm before clipping, or None without ``grad_clip``.
        """
        norm = None
        if grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            norm = nn.utils.clip_grad_norm_(params, grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        return norm

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state, or None without a scaler."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the scaler's state (ignored without a scaler or a saved state)."""
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)
