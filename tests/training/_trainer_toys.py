"""Shared toys of the training tests: a tiny segmentation task, model, step and Trainer."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from featsup.models import UNetPlusPlus
from featsup.training import Trainer


class Blobs(Dataset):
    """Tiny segmentation task: foreground where the image is bright; random flips drawn
    from Python's and NumPy's global generators (exercises their resume)."""

    def __init__(self, n: int = 12, size: int = 16, augment: bool = False) -> None:
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 1, size, size, generator=g)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.images[i]
        if self.augment and random.random() < 0.5:
            image = image.flip(-1)
        if self.augment and np.random.rand() < 0.5:  # noqa: NPY002 (the global one, on purpose)
            image = image.flip(-2)
        return {"image": image, "target": (image[0] > 0.3).long(), "index": torch.tensor(i)}


def tiny_model(seed: int = 0) -> UNetPlusPlus:
    torch.manual_seed(seed)
    return UNetPlusPlus(1, 2, widths=(4, 8, 8))


def deep_supervision_step(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, Any]]:
    # input noise from torch's global generator (exercises its resume)
    image = batch["image"] + 0.05 * torch.randn_like(batch["image"])
    heads = model(image)
    parts = [F.cross_entropy(y, batch["target"]) for y in heads]
    loss = torch.stack(parts).mean()
    return loss, {f"ce_x0_{j + 1}": p for j, p in enumerate(parts)}


def make_trainer(tmp: Path | None, model: nn.Module | None = None, **kwargs: Any) -> Trainer:
    options: dict[str, Any] = {
        "batch_size": 4,
        "lr": 1e-2,
        "progress": False,
        "log_every": 1,
        "checkpoint_dir": tmp,
    }
    options.update(kwargs)
    data = options.pop("data", Blobs())
    return Trainer(model or tiny_model(), deep_supervision_step, data, **options)


def metric_fn(values: list[float]) -> Any:
    calls = iter(values)

    def val_fn(model: nn.Module, loader: Any) -> dict[str, float]:
        return {"score": next(calls)}

    return val_fn
