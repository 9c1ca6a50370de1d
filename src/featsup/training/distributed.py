"""Where a run executes: torchrun ranks, device, precision, seeds, collectives, data order.

Under ``torchrun --nproc-per-node N`` every process sees ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; without them the run is a single process and every helper here is a
no-op. The data order is a pure function of ``(seed, epoch)``: a
:class:`~torch.utils.data.DistributedSampler` (also used with one process) permutes the
data set with a generator seeded by ``seed + epoch`` and gives rank ``r`` the indices
``r, r + N, r + 2N, ...``; :class:`EpochBatchSampler` cuts them into batches and can
start from any batch of the epoch, which is what makes a mid-epoch resume exact.
"""

from __future__ import annotations

import atexit
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from featsup._checks import check_choice

__all__ = [
    "DistEnv",
    "EpochBatchSampler",
    "cpu_has_bf16_units",
    "epoch_seed",
    "resolve_amp",
    "resolve_device",
    "seed_everything",
]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"{name}: expected an integer environment variable, got {raw!r}; "
            "launch with torchrun or unset it"
        ) from None


@dataclass(frozen=True)
class DistEnv:
    """Rank layout of this process, read from the torchrun environment variables.

    Attributes:
        world_size: number of processes (1 without torchrun).
        rank: global rank of this process.
        local_rank: rank on this machine, which selects the GPU.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistEnv:
        """Read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (defaults 1, 0, 0)."""
        env = cls(_env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0))
        if env.world_size < 1 or not 0 <= env.rank < env.world_size:
            raise ValueError(
                f"WORLD_SIZE/RANK: expected 0 <= RANK < WORLD_SIZE, got {env.rank} and "
                f"{env.world_size}; launch with torchrun"
            )
        return env

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0

    def setup(self, device: torch.device) -> None:
        """Join the process group (NCCL on CUDA, gloo otherwise) unless already joined.

        A group created here stays up for later Trainers of the same process and is
        destroyed at interpreter exit: destroying and re-creating the default group
        inside one torchrun job reuses stale rendezvous keys and can fail to connect.
        """
        if not self.distributed:
            return
        if dist.is_initialized():
            if dist.get_world_size() != self.world_size:
                raise ValueError(
                    f"WORLD_SIZE: expected the initialised process group's size "
                    f"{dist.get_world_size()}, got {self.world_size}"
                )
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        atexit.register(_destroy_group)

    def barrier(self, device: torch.device) -> None:
        """Wait for every rank (no-op with one process)."""
        if self.distributed:
            dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)

    def mean(self, values: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Average scalar tensors over the ranks (keys must agree on every rank)."""
        keys = sorted(values)
        if not keys:
            return {}
        stacked = torch.stack([values[k].reshape(()) for k in keys])
        if self.distributed:
            dist.all_reduce(stacked)
            stacked = stacked / self.world_size
        return dict(zip(keys, stacked.tolist(), strict=True))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one rank for one epoch, optionally starting after ``start`` batches.

    Args:
        num_samples: length of the data set.
        batch_size: samples per batch on this rank.
        env: the rank layout.
        shuffle: permute the data set each epoch.
        seed: base seed of the permutation (epoch ``e`` uses ``seed + e``).
        drop_last: drop this rank's last batch when it is incomplete.

    Example:
        >>> s = EpochBatchSampler(5, 2, DistEnv(), shuffle=False, seed=0, drop_last=False)
        >>> s.set_position(epoch=0, start=1)
        >>> list(s)
        [[2, 3], [4]]
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        env: DistEnv,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
    ) -> None:
        self.sampler: DistributedSampler[int] = DistributedSampler(
            range(num_samples),  # type: ignore[arg-type]
            num_replicas=env.world_size,
            rank=env.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.start = 0

    @property
    def batches_per_epoch(self) -> int:
        """Batches of a whole epoch on this rank."""
        n, b = self.sampler.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_position(self, *, epoch: int, start: int) -> None:
        """Select the epoch's permutation and the first batch to yield."""
        self.sampler.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.sampler)
        b = self.batch_size
        for k in range(self.start, self.batches_per_epoch):
            yield indices[k * b : (k + 1) * b]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's legacy and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global generator, on purpose)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the DataLoader's own generator (worker seeds) for one epoch."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def resolve_device(device: str | torch.device, env: DistEnv) -> torch.device:
    """The training device; under torchrun, plain ``"cuda"`` means this rank's GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: expected an available device, got {device!r}; use 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", env.local_rank if env.distributed else 0)
        if env.distributed:
            torch.cuda.set_device(dev)
    return dev


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` on ``device`` (None: full precision).

    ``"auto"`` is bfloat16 (or float16 where bfloat16 is missing) on CUDA and full
    precision elsewhere; ``"bf16"`` also runs on CPUs, where oneDNN uses the bfloat16
    matrix units of CPUs that have them (Intel AMX) and emulates them otherwise.
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
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX tiles).

    Where it does, ``amp="bf16"`` made an optimizer step of the example's CPU preset
    1.28-1.34x faster (2-core Xeon with AMX, docs/benchmarks.md);
    elsewhere bfloat16 is emulated and rarely pays.
    """
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False
