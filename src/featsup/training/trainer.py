"""A small, model-agnostic training loop with exact resume, AMP and DistributedDataParallel.

The :class:`Trainer` knows nothing about losses or models: a ``step_fn(model, batch)``
returns the loss and the values to log, a ``val_fn(model, loader)`` returns metrics
(:func:`~featsup.training.validation.dice_per_head` is a ready one). The loop composes
parts with their own state in the checkpoint: :class:`~featsup.training.loaders.Loaders`,
:class:`~featsup.training.device.Precision` (autocast, gradient scaling),
:class:`~featsup.training.progress.Progress` (history, bar or log lines),
:class:`~featsup.training.stopping.Stopping` (best model, early stop, ``stop_when``) and
:class:`~featsup.training.checkpoint.CheckpointStore` (``last.pt`` / ``best.pt``), and
with ``ema_decay`` :class:`~featsup.training.averaging.WeightAverage`.
Checkpoints, resume guarantees and ``torchrun`` use are described in ``docs/training.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from featsup.training._options import (
    check_count,
    check_options,
    check_step_output,
    mean_step_values,
)
from featsup.training.averaging import WeightAverage
from featsup.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointStore,
    get_rng_state,
    model_entries,
    recorded_preprocessing,
    set_rng_state,
)
from featsup.training.device import Precision, move_to_device, resolve_device
from featsup.training.distributed import DistEnv, seed_everything, unwrap_model
from featsup.training.loaders import Loaders
from featsup.training.progress import Progress
from featsup.training.schedule import SchedulerFactory, make_scheduler
from featsup.training.stopping import Stopping, StopWhen

__all__ = ["Trainer"]

StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping[str, Any]]]
ValFn = Callable[[nn.Module, Iterable[Any]], Mapping[str, float]]


class Trainer:
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
        stop_when: ``stop_when(metrics) -> bool`` called after every validation with the
            logged values (``{"val/<name>": float}``); True stops the run there (like
            early stopping: ``stopped_early``, ``last.pt`` written).
        amp: ``"auto"`` (bf16 where supported, else fp16, on CUDA; off on CPU),
            ``"bf16"`` (CUDA or CPU; see :func:`cpu_has_bf16_units`), ``"fp16"`` (CUDA
            only; fp16 uses a GradScaler) or None.
        grad_clip: max global gradient norm (logged as ``train/grad_norm``), or None.
        ema_decay: keep an exponential moving average of the weights
            (:class:`~featsup.training.averaging.WeightAverage`, updated after every
            optimizer step, this its largest decay) and use it wherever the weights are
            judged: ``val_fn`` sees the averaged weights, and ``stop_when``,
            ``keep_best_by`` and ``best.pt``'s ``"model"`` follow them; ``last.pt``
            holds the trained weights and the average (``"average"``), so a resume is
            exact. After :meth:`fit` the model holds its trained weights;
            :meth:`use_average` loads the average into it. None: no average.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` (under torchrun ``cuda:LOCAL_RANK``).
        seed: seeds the data order and, at the start of a fresh ``fit``, Python, NumPy
            and torch (``seed + rank``).
        progress: what rank 0 shows: None, a tqdm bar on a terminal and otherwise one
            line per validation on stderr (step, training losses, validation values,
            elapsed and remaining time); True, always a bar; False, nothing.
        name: what is training, shown as the bar's label and at the start of each log
            line (``"encoding teacher"``, ``"liver ES-DS"``); None: no name.
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
        stop_when: StopWhen | None = None,
        amp: Literal["auto", "bf16", "fp16"] | None = "auto",
        grad_clip: float | None = None,
        ema_decay: float | None = None,
        device: str | torch.device = "auto",
        seed: int = 0,
        progress: bool | None = None,
        name: str | None = None,
        find_unused_parameters: bool = False,
    ) -> None:
        check_options(locals())
        self.env = DistEnv.from_env()
        self.device = resolve_device(device, self.env)
        self.precision = Precision(amp, self.device)
        self.model = model.to(self.device)
        self._train_model: nn.Module = self.model
        self._wrapped: nn.Module | None = None
        self.step_fn = step_fn
        self.val_fn: ValFn = val_fn if val_fn else mean_step_values(step_fn, self.device)
        self.optimizer = optimizer or torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
        )
        self.preprocessing = recorded_preprocessing(train_data)
        self.data = Loaders(
            train_data, val_data, env=self.env, device=self.device, batch_size=batch_size,
            val_batch_size=val_batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
            num_workers=num_workers, collate_fn=collate_fn,
        )  # fmt: skip
        self.steps_per_epoch = self.data.steps_per_epoch
        by_epochs = epochs * self.steps_per_epoch if epochs is not None else None
        self.total_steps = min(n for n in (max_steps, by_epochs) if n is not None)
        self.scheduler = make_scheduler(
            scheduler, self.optimizer, warmup=warmup_steps, total=self.total_steps
        )
        self.log_every = log_every
        self.val_every = val_every or self.steps_per_epoch
        self.checkpoint_every = checkpoint_every or self.val_every
        self.store = CheckpointStore(checkpoint_dir, env=self.env)
        if history_path is None and self.store.directory is not None:
            history_path = self.store.directory / "history.jsonl"
        self.progress = Progress(
            history_path=Path(history_path) if history_path is not None else None,
            env=self.env, show=progress, total_steps=self.total_steps, name=name,
        )  # fmt: skip
        self.stopping = Stopping(
            keep_best_by=keep_best_by, mode=mode, min_delta=min_delta,
            patience=early_stopping_patience, stop_when=stop_when,
        )  # fmt: skip
        self.grad_clip = grad_clip
        self.average = WeightAverage(self.model, ema_decay) if ema_decay is not None else None
        self.find_unused_parameters = find_unused_parameters
        # the position; with the parts' states, all of it in the checkpoint
        self.step = self.epoch = self.batch_in_epoch = 0
        self._pending_rng: dict[str, Any] | None = None

    # ------------------------------------------------------------------ state views
    @property
    def history(self) -> list[dict[str, float]]:
        """One dict per logged event (``"step"``, ``"epoch"``, ``"train/..."``, ``"val/..."``)."""
        return self.progress.history

    @property
    def best_value(self) -> float | None:
        """The best ``keep_best_by`` value so far."""
        return self.stopping.best_value

    @property
    def best_step(self) -> int | None:
        """The step of :attr:`best_value`."""
        return self.stopping.best_step

    @property
    def stopped_early(self) -> bool:
        """True once early stopping or ``stop_when`` ended the run."""
        return self.stopping.stopped_early

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        *,
        resume_from: str | os.PathLike[str] | None = None,
        stop_at_step: int | None = None,
    ) -> list[dict[str, float]]:
        """Train until the last step, early stopping, ``stop_when`` or ``stop_at_step``.

        Args:
            resume_from: a checkpoint to :meth:`resume` from first.
            stop_at_step: stop after this global step (checkpointing it) while keeping
                the schedule of the whole run, for time-limited jobs; a later
                ``fit(resume_from=...)`` continues exactly.

        Returns:
            The history (:attr:`history`).
        """
        if resume_from is not None:
            self.resume(resume_from)
        check_count("stop_at_step", stop_at_step, low=self.step + 1)
        self.env.setup(self.device)
        try:
            if self._wrapped is None:  # once: a second DDP wrapper would hook again
                self._wrapped = self.env.wrap(
                    self.model, self.device, find_unused_parameters=self.find_unused_parameters
                )
            self._train_model = self._wrapped
            fresh = self._pending_rng is None and self.step == 0
            if self._pending_rng is not None:
                set_rng_state(self._pending_rng, self.device)
                self._pending_rng = None
            elif fresh:
                seed_everything(self.data.seed + self.env.rank)
            self.progress.start(step=self.step, fresh=fresh)
            self._loop(stop_at_step)
            self.env.barrier(self.device)  # rank 0 has written its files when fit returns
        finally:
            self.progress.close()
            self._train_model = self.model
        return self.history

    def _loop(self, stop_at_step: int | None) -> None:
        while self.step < self.total_steps and not self.stopped_early:
            for batch in self.data.batches(epoch=self.epoch, start=self.batch_in_epoch):
                self._train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                self.progress.advance()
                stop = self.step == stop_at_step
                self._after_step(stop)
                if stop or self.stopped_early or self.step >= self.total_steps:
                    return
            self.epoch += 1
            self.batch_in_epoch = 0

    def _train_step(self, batch: Any) -> None:
        batch = move_to_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            out = self.step_fn(self._train_model, batch)
        loss, logs = check_step_output(out, training=True)
        values = {**logs, "loss": loss, "lr": float(self.optimizer.param_groups[0]["lr"])}
        self.precision.backward(loss)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = self.precision.step(self.optimizer, params=params, grad_clip=self.grad_clip)
        if norm is not None:
            values["grad_norm"] = norm
        self.scheduler.step()
        if self.average is not None:
            self.average.update(self.model)
        self.progress.add_step(values, device=self.device)

    def _after_step(self, stop: bool) -> None:
        final = self.step >= self.total_steps
        if self.step % self.log_every == 0 or final:
            self.progress.log_train(step=self.step, epoch=self.epoch)
        if self.data.val is not None and (self.step % self.val_every == 0 or final):
            self._validate()
        due = self.step % self.checkpoint_every == 0 or final or stop or self.stopped_early
        if self.store.directory is not None and due:
            self.store.save("last.pt", self.state_dict())

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        with self._judged_weights():
            metrics = self.env.run_on_main(self._run_val_fn)
            self.progress.log_validation(metrics, step=self.step, epoch=self.epoch)
            if self.stopping.update(metrics, step=self.step) and self.store.directory is not None:
                self.store.save("best.pt", self.state_dict())

    def _judged_weights(self) -> AbstractContextManager[Any]:
        """The weights validation judges: the average with ``ema_decay``, else the model's."""
        return nullcontext() if self.average is None else self.average.applied(self.model)

    def use_average(self) -> None:
        """Load the weight average into the model (``ema_decay`` runs only), for serving.

        Raises:
            ValueError: if the Trainer keeps no average.
        """
        if self.average is None:
            raise ValueError("ema_decay: expected a Trainer with a weight average, got None")
        self.average.copy_to(self.model)

    def _run_val_fn(self) -> dict[str, float]:
        model = unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.precision.autocast():
                raw = self.val_fn(model, self.data.val)  # type: ignore[arg-type]
        finally:
            model.train(was_training)
        if not isinstance(raw, Mapping):
            raise TypeError(f"val_fn: expected a dict of floats, got {type(raw).__name__}")
        return {f"val/{k}": float(v) for k, v in raw.items()}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume; a collective under torchrun (call on every rank)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            **model_entries(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.state_dict(),
            "rng": self.env.gather(get_rng_state(self.device)),
            **self.progress.state_dict(),  # "history", "window"
            "best": self.stopping.state_dict(),
            "average": None if self.average is None else self.average.state_dict(),
            "settings": {**self.data.settings(), "total_steps": self.total_steps},
            "preprocessing": self.preprocessing,
            "torch_version": str(torch.__version__),
        }

    def save(self, path: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None) -> None:
        """Write a checkpoint atomically (rank 0 writes; call on every rank).

        Args:
            path: the file.
            extra: entries added to the checkpoint (for example a training report);
                their keys must differ from the Trainer's own.

        Raises:
            ValueError: if a key of ``extra`` is one of the Trainer's.
        """
        state = self.state_dict()
        if clash := sorted(set(extra or {}) & set(state)):
            raise ValueError(f"extra: expected keys other than the checkpoint's, got {clash}")
        self.store.write(path, {**state, **(extra or {})})

    def resume(self, path: str | os.PathLike[str]) -> Trainer:
        """Load a checkpoint written by :meth:`save`; the next :meth:`fit` continues it.

        Model, optimizer, scheduler, scaler, step, data position, history, best value and
        (at the start of :meth:`fit`) the random generators are restored; a warning names
        the settings of data order or schedule that differ from the checkpoint's.

        Args:
            path: a ``last.pt`` or ``best.pt`` file.

        Returns:
            ``self``.
        """
        settings = {**self.data.settings(), "total_steps": self.total_steps}
        state = self.store.load(path, settings=settings)
        unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["scaler"])
        self._pending_rng = state["rng"]
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.progress.load_state_dict(state, device=self.device)
        self.stopping.load_state_dict(state["best"])
        if self.average is not None:
            if state.get("average") is None:
                raise ValueError(
                    f"{path}: expected a checkpoint with a weight average (ema_decay), got "
                    "none; fix: resume with the ema_decay it was trained with"
                )
            self.average.load_state_dict(state["average"])
        return self
