"""The logging half of :class:`featsup.training.Trainer`: history, validation, best model."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featsup._checks import check_choice
from featsup.training.checkpoint import TrainerCheckpointing, unwrap_model


class TrainerLogging(TrainerCheckpointing):
    """Training logs, validation runs and best-checkpoint tracking of the Trainer.

    The attributes annotated below (and in :class:`TrainerCheckpointing`) are set by the
    Trainer.
    """

    checkpoint_dir: Path | None
    mode: str
    min_delta: float
    early_stopping_patience: int | None
    _amp_dtype: torch.dtype | None
    val_fn: Callable[[nn.Module, Iterable[Any]], Mapping[str, float]]
    _val_loader: Any

    def _autocast(self) -> AbstractContextManager[Any]:
        if self._amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    def _record(self, record: dict[str, float]) -> None:
        self.history.append(record)
        if self.env.main and self.history_path is not None:
            with self.history_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _log_train(self, bar: Any) -> None:
        if not self._window_count:
            return
        means = self.env.mean({k: v / self._window_count for k, v in self._window.items()})
        self._window, self._window_count = {}, 0
        record: dict[str, float] = {"step": self.step, "epoch": self.epoch}
        record.update({f"train/{k}": v for k, v in means.items()})
        if not math.isfinite(record["train/loss"]):
            raise FloatingPointError(
                f"train/loss: expected a finite running loss, got {record['train/loss']} at "
                f"step {self.step}; lower lr, set grad_clip or check the data"
            )
        self._record(record)
        bar.set_postfix({k[6:]: f"{v:.4g}" for k, v in record.items() if k[:6] == "train/"})

    def _run_val_fn(self) -> dict[str, float]:
        model = unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self._autocast():
                raw = self.val_fn(model, self._val_loader)  # type: ignore[arg-type]
        finally:
            model.train(was_training)
        if not isinstance(raw, Mapping):
            raise TypeError(f"val_fn: expected a dict of floats, got {type(raw).__name__}")
        return {f"val/{k}": float(v) for k, v in raw.items()}

    def _validate(self, bar: Any) -> None:
        metrics: dict[str, float] | str | None = None
        if self.env.main:
            try:
                metrics = self._run_val_fn()
            except Exception as error:
                self.env.broadcast(f"val_fn failed on rank 0: {error!r}")  # free the others
                raise
        metrics = self.env.broadcast(metrics)
        if isinstance(metrics, str):
            raise RuntimeError(metrics)
        assert metrics is not None  # rank 0 computed it
        self._record({"step": self.step, "epoch": self.epoch, **metrics})
        if self.keep_best_by is not None:
            self._track_best(metrics)
        bar.set_postfix({k[4:]: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)

    def _track_best(self, metrics: dict[str, float]) -> None:
        name = check_choice("keep_best_by", self.keep_best_by, sorted(metrics))
        value, best = metrics[name], self.best_value
        if self.mode == "max":
            better = best is None or value > best + self.min_delta
        else:
            better = best is None or value < best - self.min_delta
        if better and not math.isnan(value):
            self.best_value, self.best_step, self.bad_validations = value, self.step, 0
            if self.checkpoint_dir is not None:
                self.save(self.checkpoint_dir / "best.pt")
            return
        self.bad_validations += 1
        patience = self.early_stopping_patience
        if patience is not None and self.bad_validations >= patience:
            self.stopped_early = True
