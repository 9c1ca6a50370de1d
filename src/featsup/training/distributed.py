"""Where a run executes: torchrun ranks, collectives, DDP wrapping, seeds, data order.

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

from featsup._wrappers import unwrap

__all__ = [
    "DistEnv",
    "EpochBatchSampler",
    "epoch_seed",
    "seed_everything",
    "unwrap_model",
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

    def wrap(
        self, model: nn.Module, device: torch.device, *, find_unused_parameters: bool
    ) -> nn.Module:
        """``model`` in DistributedDataParallel under torchrun, else ``model`` itself.

        Wrap once per model: a second wrapper would hook the parameters again.
        """
        if not self.distributed:
            return model
        return nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )

    def run_on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` computed on rank 0 and broadcast to every rank.

        An exception on rank 0 is re-raised there unchanged; the other ranks, released
        instead of waiting forever, raise a ``RuntimeError`` that quotes it.
        """
        result = None
        if self.main:
            try:
                result = fn()
            except Exception as error:
                self.broadcast(_FailedOnMain(repr(error)))  # free the others
                raise
        result = self.broadcast(result)
        if isinstance(result, _FailedOnMain):
            raise RuntimeError(f"failed on rank 0: {result.error}")
        return result

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


@dataclass(frozen=True)
class _FailedOnMain:
    error: str


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside DDP, DataParallel or :func:`torch.compile` wrappers.

    Args:
        model: a module, possibly wrapped.

    Returns:
        The innermost wrapped module (``model`` itself when it is not wrapped).

    Example:
        >>> net = nn.Linear(2, 2)
        >>> unwrap_model(nn.DataParallel(net)) is net
        True
    """
    return unwrap(model)


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
