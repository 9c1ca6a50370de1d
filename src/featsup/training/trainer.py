"""A small, model-agnostic training loop with exact resume, AMP and DistributedDataParallel.

The :class:`Trainer` knows nothing about losses or models: a ``step_fn(model, batch)``
returns the loss and the values to log, a ``val_fn(model, loader)`` returns metrics.
:func:`dice_per_head` (from :mod:`featsup.training.validation`) is a ready ``val_fn`` body for
deep-supervised segmentation models.
Checkpoints, resume guarantees and ``torchrun`` use are described in ``docs/training.md``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from featsup.training._setup import (
    check_count,
    check_options,
    check_step_output,
    lr_lambda,
    move_to_device,
)
from featsup.training.checkpoint import (
    set_rng_state,
)
from featsup.training.distributed import (
    DistEnv,
    EpochBatchSampler,
    epoch_seed,
    resolve_amp,
    resolve_device,
    seed_everything,
)
from featsup.training.progress import TrainerLogging

__all__ = ["Trainer"]

StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping[str, Any]]]
ValFn = Callable[[nn.Module, Iterable[Any]], Mapping[str, float]]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], Any]


class Trainer(TrainerLogging):
    """Train any model with a user step function; resume exactly; run under torchrun.

    Each optimizer step takes one batch per process, calls ``step_fn(model, batch)``
    under autocast, back-propagates the loss (through a GradScaler with fp16), clips
    gradients, steps the optimizer and the per-step schedule. Every ``log_every`` steps
    the running means of the loss and of the logged values (averaged over processes)
    go to the history and the progress bar; every ``val_every`` steps ``val_fn`` runs
    on rank 0 in eval mode without gradients. The data order is a function of
    ``(seed, epoch)``, so a checkpoint taken mid-epoch resumes with the same batches.

    Args:
        model: the module to train (for example a UNet++ or a FeatureSupervisor); moved
            to ``device``.
        step_fn: ``step_fn(model, batch) -> (loss, logs)``: ``batch`` is a collated
            batch already on the device (a dict or tuple of tensors), ``model`` the
            training module (DDP-wrapped under torchrun; reach attributes through
            :func:`unwrap_model`); ``loss`` a scalar tensor with a graph, ``logs`` a
            dict of scalar tensors or floats (the same keys every step), logged as
            ``train/<key>``.
        train_data: map-style data set (``__len__`` and ``__getitem__``).
        val_data: map-style data set or a ready DataLoader for validation.
        val_fn: ``val_fn(model, loader) -> {name: float}`` (batches not moved; use
            ``model``'s device), logged as ``val/<name>``; default: the mean over the
            loader of ``step_fn``'s loss and logs. See :func:`dice_per_head`.
        optimizer: default ``AdamW(trainable parameters, lr, weight_decay)``.
        lr: learning rate of the default optimizer.
        weight_decay: weight decay of the default optimizer.
        scheduler: ``"cosine"`` (to zero at the last step), ``"constant"``, or a factory
            ``f(optimizer, total_steps) -> LRScheduler`` stepped once per step.
        warmup_steps: linear warm-up steps of the built-in schedules.
        max_steps: optimizer steps to run; with ``epochs`` too, the smaller count wins.
        epochs: passes over ``train_data``.
        batch_size: samples per process and step (global batch = ``batch_size`` x N).
        val_batch_size: batch size of the validation loader (default ``batch_size``).
        shuffle: reshuffle every epoch (permutation seeded by ``seed + epoch``).
        drop_last: drop each process's last incomplete batch of an epoch.
        num_workers: DataLoader worker processes.
        collate_fn: DataLoader collate function.
        log_every: steps per logged running mean.
        val_every: steps between validations (default once per epoch; always at the end).
        checkpoint_every: steps between ``last.pt`` writes (default ``val_every``; always
            at the end, on early stopping and at ``stop_at_step``).
        checkpoint_dir: folder of ``last.pt`` and ``best.pt``; None writes nothing.
        history_path: JSON-lines history (default ``checkpoint_dir / "history.jsonl"``).
        keep_best_by: validation value, as logged (``"val/dice_x0_4"``), that selects
            ``best.pt`` and drives early stopping.
        mode: ``"max"`` or ``"min"``: which direction of ``keep_best_by`` is better.
        early_stopping_patience: stop after this many validations without improvement.
        min_delta: improvement smaller than this does not count.
        amp: ``"auto"`` (bf16 where supported, else fp16, on CUDA; off on CPU),
            ``"bf16"`` (CUDA or CPU; see :func:`cpu_has_bf16_units`), ``"fp16"`` (CUDA
            only; fp16 uses a GradScaler) or None.
        grad_clip: max global gradient norm (logged as ``train/grad_norm``), or None.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` (under torchrun ``cuda:LOCAL_RANK``).
        seed: seeds the data order and, at the start of a fresh ``fit``, Python, NumPy
            and torch (``seed + rank``).
        progress: tqdm bar on rank 0: True, False, or None (only on a terminal).
        find_unused_parameters: passed to DistributedDataParallel; needed when some
            trainable parameters get no gradient (for example unused heads).

    Raises:
        ValueError: for out-of-range or inconsistent options (neither ``max_steps`` nor
            ``epochs``; unknown ``scheduler``/``mode``/``amp`` with a did-you-mean).
        TypeError: for arguments of the wrong type.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> net = nn.Linear(3, 1)
        >>> data = TensorDataset(torch.randn(16, 3), torch.randn(16, 1))
        >>> def step(model, batch):
        ...     loss = (model(batch[0]) - batch[1]).square().mean()
        ...     return loss, {}
        >>> history = Trainer(net, step, data, max_steps=4, batch_size=4, progress=False).fit()
        >>> [record["step"] for record in history]
        [4]
    """

    def __init__(
        self,
        model: nn.Module,
        step_fn: StepFn,
        train_data: Dataset[Any],
        *,
        val_data: Dataset[Any] | DataLoader[Any] | None = None,
        val_fn: ValFn | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        scheduler: Literal["cosine", "constant"] | SchedulerFactory = "cosine",
        warmup_steps: int = 0,
        max_steps: int | None = None,
        epochs: int | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        log_every: int = 10,
        val_every: int | None = None,
        checkpoint_every: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        history_path: str | os.PathLike[str] | None = None,
        keep_best_by: str | None = None,
        mode: Literal["max", "min"] = "max",
        early_stopping_patience: int | None = None,
        min_delta: float = 0.0,
        amp: Literal["auto", "bf16", "fp16"] | None = "auto",
        grad_clip: float | None = None,
        device: str | torch.device = "auto",
        seed: int = 0,
        progress: bool | None = None,
        find_unused_parameters: bool = False,
    ) -> None:
        check_options(locals())
        self.env = DistEnv.from_env()
        self.device = resolve_device(device, self.env)
        self._amp_dtype = resolve_amp(amp, self.device)
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self._amp_dtype == torch.float16 else None
        )
        self.model = model.to(self.device)
        self._train_model: nn.Module = self.model
        self._ddp: nn.Module | None = None
        self.step_fn = step_fn
        self.val_fn: ValFn = val_fn if val_fn is not None else self._mean_step_values
        self.optimizer = optimizer or torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
        )
        self.seed, self.batch_size, self.shuffle, self.drop_last = (
            seed,
            batch_size,
            shuffle,
            drop_last,
        )
        self._setup_data(train_data, val_data, val_batch_size, num_workers, collate_fn)
        self.total_steps = int(
            min(
                max_steps if max_steps is not None else math.inf,
                epochs * self.steps_per_epoch if epochs is not None else math.inf,
            )
        )
        self.scheduler = self._make_scheduler(scheduler, warmup_steps)
        self.log_every = log_every
        self.val_every = val_every or self.steps_per_epoch
        self.checkpoint_every = checkpoint_every or self.val_every
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if history_path is None and self.checkpoint_dir is not None:
            history_path = self.checkpoint_dir / "history.jsonl"
        self.history_path = Path(history_path) if history_path is not None else None
        self.keep_best_by, self.mode = keep_best_by, mode
        self.early_stopping_patience, self.min_delta = early_stopping_patience, min_delta
        self.grad_clip, self.progress = grad_clip, progress
        self.find_unused_parameters = find_unused_parameters
        # the training state, all of it in the checkpoint
        self.step = self.epoch = self.batch_in_epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.bad_validations = 0
        self.stopped_early = False
        self._window: dict[str, torch.Tensor] = {}
        self._window_count = 0
        self._pending_rng: dict[str, Any] | None = None

    # ------------------------------------------------------------------ set-up helpers
    def _setup_data(
        self,
        train_data: Dataset[Any],
        val_data: Dataset[Any] | DataLoader[Any] | None,
        val_batch_size: int | None,
        num_workers: int,
        collate_fn: Callable[[list[Any]], Any] | None,
    ) -> None:
        self._num_samples = len(train_data)  # type: ignore[arg-type]
        self._sampler = EpochBatchSampler(
            self._num_samples, self.batch_size, self.env,
            shuffle=self.shuffle, seed=self.seed, drop_last=self.drop_last,
        )  # fmt: skip
        self.steps_per_epoch = self._sampler.batches_per_epoch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train_data: expected at least batch_size={self.batch_size} samples per "
                f"process with drop_last, got {self._num_samples}; lower batch_size"
            )
        self._loader_generator = torch.Generator()
        self._loader = DataLoader(
            train_data, batch_sampler=self._sampler, num_workers=num_workers,
            collate_fn=collate_fn, pin_memory=self.device.type == "cuda",
            generator=self._loader_generator,
        )  # fmt: skip
        self._val_loader: Iterable[Any] | None = None
        if isinstance(val_data, DataLoader):
            self._val_loader = val_data
        elif val_data is not None:
            self._val_loader = DataLoader(
                val_data, batch_size=val_batch_size or self.batch_size, shuffle=False,
                num_workers=num_workers, collate_fn=collate_fn,
            )  # fmt: skip

    def _make_scheduler(self, scheduler: str | SchedulerFactory, warmup: int) -> Any:
        if isinstance(scheduler, str):
            factor = lr_lambda(scheduler, warmup, self.total_steps)
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        made = scheduler(self.optimizer, self.total_steps)
        if not all(hasattr(made, a) for a in ("step", "state_dict", "load_state_dict")):
            raise TypeError(
                f"scheduler: expected the factory to return an LRScheduler, got "
                f"{type(made).__name__}"
            )
        return made

    def _mean_step_values(self, model: nn.Module, loader: Iterable[Any]) -> dict[str, float]:
        """Default ``val_fn``: batch-mean of ``step_fn``'s loss and logs over the loader."""
        sums: dict[str, float] = {}
        count = 0
        for batch in loader:
            out = self.step_fn(model, move_to_device(batch, self.device))
            loss, logs = check_step_output(out, training=False)
            for key, value in {**logs, "loss": loss}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
        return {key: value / max(count, 1) for key, value in sums.items()}

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        *,
        resume_from: str | os.PathLike[str] | None = None,
        stop_at_step: int | None = None,
    ) -> list[dict[str, float]]:
        """Train until the last step, early stopping, or ``stop_at_step``.

        Args:
            resume_from: a checkpoint to :meth:`resume` from first.
            stop_at_step: stop after this global step (checkpointing it) while keeping
                the schedule of the whole run, for time-limited jobs; a later
                ``fit(resume_from=...)`` continues exactly.

        Returns:
            The history: one dict per logged event with ``"step"``, ``"epoch"`` and
            ``"train/..."`` or ``"val/..."`` values.
        """
        if resume_from is not None:
            self.resume(resume_from)
        check_count("stop_at_step", stop_at_step, low=self.step + 1)
        self.env.setup(self.device)
        bar = None
        try:
            self._train_model = self._wrap_model()
            if self._pending_rng is not None:
                set_rng_state(self._pending_rng, self.device)
                self._pending_rng = None
            elif self.step == 0:
                seed_everything(self.seed + self.env.rank)
                if self.env.main and self.history_path is not None:
                    self.history_path.parent.mkdir(parents=True, exist_ok=True)
                    self.history_path.write_text("")
            bar = tqdm(
                total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True,
                disable=(None if self.progress is None else not self.progress)
                if self.env.main else True,
            )  # fmt: skip
            self._loop(bar, stop_at_step)
            self.env.barrier(self.device)  # rank 0 has written its files when fit returns
        finally:
            if bar is not None:
                bar.close()
            self._train_model = self.model
        return self.history

    def _wrap_model(self) -> nn.Module:
        if not self.env.distributed:
            return self.model
        if self._ddp is None:  # wrapped once: a second wrapper would hook the parameters again
            self._ddp = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters,
            )
        return self._ddp

    def _loop(self, bar: Any, stop_at_step: int | None) -> None:
        while self.step < self.total_steps and not self.stopped_early:
            self._sampler.set_position(epoch=self.epoch, start=self.batch_in_epoch)
            self._loader_generator.manual_seed(epoch_seed(self.seed, self.epoch))
            for batch in self._loader:
                self._train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                bar.update(1)
                stop = self.step == stop_at_step
                self._after_step(bar, stop)
                if stop or self.stopped_early or self.step >= self.total_steps:
                    return
            self.epoch += 1
            self.batch_in_epoch = 0

    def _train_step(self, batch: Any) -> None:
        batch = move_to_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.step_fn(self._train_model, batch)
        loss, logs = check_step_output(out, training=True)
        values = {**logs, "loss": loss, "lr": float(self.optimizer.param_groups[0]["lr"])}
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            values["grad_norm"] = nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().reshape(()).to(self.device, dtype)
            else:
                value = torch.tensor(float(value), dtype=dtype, device=self.device)
            self._window[key] = self._window[key] + value if key in self._window else value
        self._window_count += 1

    def _after_step(self, bar: Any, stop: bool) -> None:
        final = self.step >= self.total_steps
        if self.step % self.log_every == 0 or final:
            self._log_train(bar)
        if self._val_loader is not None and (self.step % self.val_every == 0 or final):
            self._validate(bar)
        due = self.step % self.checkpoint_every == 0 or final or stop or self.stopped_early
        if self.checkpoint_dir is not None and due:
            self.save(self.checkpoint_dir / "last.pt")
