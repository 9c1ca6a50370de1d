"""Training script for tests/training/test_distributed.py.

Run with ``python -m torch.distributed.run --nproc-per-node 2 --standalone`` (gloo on
CPU) or as a plain single process; both train the same tiny BatchNorm-free network on the
same data, so that their weights can be compared. Every rank writes the sample indices it
saw per step to ``OUT/indices_rank{R}.json``; rank 0 writes the Trainer's checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from featsup.training import Trainer, dice_per_head


class Squares(Dataset):
    def __init__(self, n: int = 16, size: int = 12) -> None:
        g = torch.Generator().manual_seed(3)
        self.images = torch.randn(n, 1, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.images[i]
        return {"image": image, "target": (image[0] > 0).long(), "index": torch.tensor(i)}


class TwoHeads(nn.Module):
    """A deep-supervised toy without BatchNorm (per-rank batch statistics would differ)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.GroupNorm(2, 6), nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head_1 = nn.Conv2d(6, 2, 1)
        self.head_2 = nn.Conv2d(6, 2, 1)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        h = self.body(image)
        return [self.head_1(h), self.head_2(h)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--interrupt-at",
        type=int,
        default=None,
        help="stop at this step, then resume from last.pt with a new model and Trainer",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    seen: list[list[int]] = []

    def step(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        seen.append(batch["index"].tolist())
        heads = model(batch["image"])
        parts = [F.cross_entropy(y, batch["target"]) for y in heads]
        return sum(parts) / len(parts), {"ce_head_1": parts[0]}

    def make_trainer(seed: int) -> Trainer:
        return Trainer(
            TwoHeads(seed), step, Squares(), val_data=Squares(n=4),
            val_fn=lambda m, loader: dice_per_head(m, loader, num_classes=2),
            keep_best_by="val/dice_x0_2", val_every=3, max_steps=args.steps,
            batch_size=args.batch_size, lr=0.05, log_every=1, checkpoint_dir=args.out,
            device="cpu", progress=False,
        )  # fmt: skip

    trainer = make_trainer(0)
    if args.interrupt_at is None:
        trainer.fit()
    else:
        trainer.fit(stop_at_step=args.interrupt_at)
        torch.manual_seed(1234)  # disturb the generators: the resume restores them
        trainer = make_trainer(7)  # a second Trainer in the same torchrun job
        trainer.fit(resume_from=args.out / "last.pt")
    rank = int(os.environ.get("RANK", "0"))
    (args.out / f"indices_rank{rank}.json").write_text(json.dumps(seen))
    print(f"rank {rank}: done, step {trainer.step}", flush=True)


if __name__ == "__main__":
    main()
