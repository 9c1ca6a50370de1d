"""The Trainer's data loaders: batches as a pure function of ``(seed, epoch, position)``.

:class:`Loaders` builds the training DataLoader over an :class:`EpochBatchSampler` (this
rank's share of a permutation seeded by ``seed + epoch``, from any batch of the epoch)
with its own generator reseeded every epoch, and the validation loader. Its
:meth:`~Loaders.settings` are what a resumed run must share with the original one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from featsup.training.distributed import DistEnv, EpochBatchSampler, epoch_seed

__all__ = ["Loaders"]


class Loaders:
    """Training and validation loaders of one run.

    Args:
        train_data: map-style data set.
        val_data: map-style data set, a ready DataLoader, or None.
        env: the rank layout.
        device: the training device (pinned memory on CUDA).
        batch_size: samples per process and step.
        val_batch_size: validation batch size (default ``batch_size``).
        shuffle: permute the data set every epoch.
        drop_last: drop each process's last incomplete batch of an epoch.
        seed: seed of the permutations and of the loader's generator.
        num_workers: DataLoader worker processes.
        collate_fn: DataLoader collate function.

    Attributes:
        steps_per_epoch: batches of one epoch on this rank.
        val: the validation loader, or None.

    Raises:
        ValueError: if ``drop_last`` leaves no batch.

    Example:
        >>> data = torch.arange(5.0)
        >>> loaders = Loaders(data, None, env=DistEnv(), device=torch.device("cpu"),
        ...     batch_size=2, val_batch_size=None, shuffle=False, drop_last=False, seed=0,
        ...     num_workers=0, collate_fn=None)
        >>> [b.tolist() for b in loaders.batches(epoch=0, start=1)]
        [[2.0, 3.0], [4.0]]
    """

    def __init__(
        self,
        train_data: Dataset[Any],
        val_data: Dataset[Any] | DataLoader[Any] | None,
        *,
        env: DistEnv,
        device: torch.device,
        batch_size: int,
        val_batch_size: int | None,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        num_workers: int,
        collate_fn: Callable[[list[Any]], Any] | None,
    ) -> None:
        self.env, self.seed, self.batch_size = env, seed, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_samples = len(train_data)  # type: ignore[arg-type]
        self._sampler = EpochBatchSampler(
            self.num_samples, batch_size, env, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.steps_per_epoch = self._sampler.batches_per_epoch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train_data: expected at least batch_size={batch_size} samples per "
                f"process with drop_last, got {self.num_samples}; lower batch_size"
            )
        self._generator = torch.Generator()
        self._train = DataLoader(
            train_data, batch_sampler=self._sampler, num_workers=num_workers,
            collate_fn=collate_fn, pin_memory=device.type == "cuda", generator=self._generator,
        )  # fmt: skip
        self.val: Iterable[Any] | None = None
        if isinstance(val_data, DataLoader):
            self.val = val_data
        elif val_data is not None:
            self.val = DataLoader(
                val_data, batch_size=val_batch_size or batch_size, shuffle=False,
                num_workers=num_workers, collate_fn=collate_fn,
            )  # fmt: skip

    def batches(self, *, epoch: int, start: int) -> Iterator[Any]:
        """The batches of ``epoch`` on this rank, from batch ``start`` on.

        A data set with ``set_epoch`` (featsup's slice and patch datasets) is told the
        epoch first, so that it redraws its random choices (augmentation, patches).
        """
        set_epoch = getattr(self._train.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        self._sampler.set_position(epoch=epoch, start=start)
        self._generator.manual_seed(epoch_seed(self.seed, epoch))
        return iter(self._train)

    def settings(self) -> dict[str, Any]:
        """What fixes the data order: seed, batch size, processes, data set size, flags."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.env.world_size,
            "num_samples": self.num_samples,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }
