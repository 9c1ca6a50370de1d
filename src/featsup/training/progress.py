"""What a run reports: its history, running means, and a progress bar or log lines.

:class:`Progress` keeps the history (in memory and as JSON lines), the running sums of
the current logging window, and shows the run on rank 0: a tqdm bar on a terminal, and
off a terminal (a batch job's log file) one line per validation with the step, the
latest training losses, the validation values (the Dice of every head) and the elapsed
and estimated remaining time.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from featsup.training.distributed import DistEnv

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def _values(record: Mapping[str, float], prefix: str) -> str:
    n = len(prefix)
    return ", ".join(f"{k[n:]} {v:.4g}" for k, v in record.items() if k.startswith(prefix))


class Progress:
    """History, running means and the bar or log lines of one Trainer.

    Args:
        history_path: JSON-lines file of the history (rank 0 writes it), or None.
        env: the rank layout; only rank 0 writes and shows.
        show: True: a tqdm bar; None: a bar on a terminal, else one line on stderr per
            validation; False: neither.
        total_steps: steps of the whole run (for the bar and the remaining time).
        name: what is training (``"encoding teacher"``, ``"liver ES-DS"``): the bar's
            label and the start of each log line, so that a log of several runs says
            which line is whose; None labels the bar ``"train"`` and leaves lines bare.

    Attributes:
        history: one dict per logged event (``"step"``, ``"epoch"``, ``"train/..."`` or
            ``"val/..."``).

    Example:
        >>> progress = Progress(history_path=None, env=DistEnv(), show=False, total_steps=2)
        >>> progress.start(step=0, fresh=True)
        >>> progress.add_step({"loss": torch.tensor(0.5)}, device=torch.device("cpu"))
        >>> progress.advance()
        >>> progress.log_train(step=1, epoch=0)
        >>> progress.close()
        >>> progress.history
        [{'step': 1, 'epoch': 0, 'train/loss': 0.5}]
    """

    def __init__(
        self,
        *,
        history_path: Path | None,
        env: DistEnv,
        show: bool | None,
        total_steps: int,
        name: str | None = None,
    ) -> None:
        self.history_path, self.env, self.show = history_path, env, show
        self.total_steps, self.name = total_steps, name
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._bar: Any = None
        self._lines = False
        self._started = (0.0, 0)  # (time, step) of the start of this fit

    # ------------------------------------------------------------------ display
    def start(self, *, step: int, fresh: bool) -> None:
        """Open the bar or the log lines at ``step``; a ``fresh`` run empties the file."""
        if fresh and self.env.main and self.history_path is not None:
            self.history_path.parent.mkdir(parents=True, exist_ok=True)
            self.history_path.write_text("")
        terminal = sys.stderr.isatty()
        bar = self.env.main and (self.show or (self.show is None and terminal))
        self._lines = self.env.main and self.show is None and not terminal
        self._bar = tqdm(
            total=self.total_steps,
            initial=step,
            desc=self.name or "train",
            dynamic_ncols=True,
            disable=not bar,
        )
        self._started = (time.monotonic(), step)

    def advance(self) -> None:
        """One optimizer step done."""
        self._bar.update(1)

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ------------------------------------------------------------------ records
    def add_step(self, values: Mapping[str, torch.Tensor | float], *, device: torch.device) -> None:
        """Add one step's values (scalar tensors or floats) to the running sums."""
        dtype = torch.float32 if device.type == "mps" else torch.float64
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().reshape(()).to(device, dtype)
            else:
                value = torch.tensor(float(value), dtype=dtype, device=device)
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._count += 1

    def log_train(self, *, step: int, epoch: int) -> None:
        """Record the window's means (over steps and ranks; a collective) as ``train/...``.

        Raises:
            FloatingPointError: if the mean loss is not finite.
        """
        if not self._count:
            return
        means = self.env.mean({k: v / self._count for k, v in self._sums.items()})
        self._sums, self._count = {}, 0
        record: dict[str, float] = {"step": step, "epoch": epoch}
        record.update({f"train/{k}": v for k, v in means.items()})
        if not math.isfinite(record["train/loss"]):
            raise FloatingPointError(
                f"train/loss: expected a finite running loss, got {record['train/loss']} at "
                f"step {step}; lower lr, set grad_clip or check the data"
            )
        self._record(record)
        self._bar.set_postfix({k[6:]: f"{v:.4g}" for k, v in record.items() if k[:6] == "train/"})

    def log_validation(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        """Record ``{"val/<name>": value}`` and show it (bar postfix or one log line)."""
        self._record({"step": step, "epoch": epoch, **metrics})
        self._bar.set_postfix({k[4:]: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
        if self._lines:
            sys.stderr.write(self.line(metrics, step=step, epoch=epoch) + "\n")
            sys.stderr.flush()

    def line(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> str:
        """The log line of a validation: step, losses, values, elapsed and remaining time.

        Example:
            >>> p = Progress(history_path=None, env=DistEnv(), show=False, total_steps=10)
            >>> p.line({"val/dice_x0_1": 0.5}, step=5, epoch=0).split(" | ")[:2]
            ['step 5/10 (epoch 0)', 'val dice_x0_1 0.5']
            >>> p.name = "liver teacher"
            >>> p.line({"val/dice": 0.9}, step=5, epoch=0).split(" | ")[0]
            'liver teacher: step 5/10 (epoch 0)'
        """
        parts = [f"step {step}/{self.total_steps} (epoch {epoch})"]
        if self.name:
            parts[0] = f"{self.name}: {parts[0]}"
        train = next((r for r in reversed(self.history) if "train/loss" in r), None)
        if train is not None:
            parts.append("train " + _values(train, "train/"))
        parts.append("val " + _values(metrics, "val/"))
        started, first = self._started
        elapsed = time.monotonic() - started if started else 0.0
        done = step - first
        left = elapsed / done * (self.total_steps - step) if done > 0 else math.nan
        remaining = _clock(left) if math.isfinite(left) else "?"
        parts.append(f"elapsed {_clock(elapsed)}, remaining ~{remaining}")
        return " | ".join(parts)

    def _record(self, record: dict[str, float]) -> None:
        self.history.append(record)
        if self.env.main and self.history_path is not None:
            with self.history_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``"history"`` and ``"window"`` entries."""
        return {
            "history": [dict(r) for r in self.history],
            "window": {"count": self._count, "sums": {k: v.cpu() for k, v in self._sums.items()}},
        }

    def load_state_dict(self, state: Mapping[str, Any], *, device: torch.device) -> None:
        """Restore history and window; rank 0 rewrites the history file from the checkpoint."""
        self.history = list(state["history"])
        self._count = state["window"]["count"]
        self._sums = {k: v.to(device) for k, v in state["window"]["sums"].items()}
        if self.env.main and self.history_path is not None:
            lines = "".join(json.dumps(r) + "\n" for r in self.history)
            self.history_path.parent.mkdir(parents=True, exist_ok=True)
            self.history_path.write_text(lines)
