"""Training script for tests/test_distributed.py.

Run with ``python -m torch.distributed.run --nproc-per-node 2 --standalone`` (gloo on
CPU) or as a plain single process; both train the same tiny BatchNorm-free network on the
same data, so that their weights can be compared. Every rank writes the sample indices it
saw per step to ``OUT/indices_rank{R}.json``; rank 0 writes the Trainer's checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


# ---------------------------------------------------------------------- feature supervision
# For tests/test_supervision_ddp.py: ``--supervision`` trains a FeatureSupervisor around an
# smp U-Net on each rank's share of one batch, once with the student wrapped in DDP inside
# the supervisor and once with DDP around the supervisor (as the Trainer does), and rank 0
# writes the feature loss of every step (mean over the ranks) to ``OUT/supervision.json``.
# The student's BatchNorm runs on its running statistics (eval mode): per-rank batch
# statistics would differ from the single process's by design (SyncBatchNorm needs GPUs).
SUPERVISION_MODES = ("student", "supervisor")


def supervision_models() -> tuple[nn.Module, nn.Module]:
    """The same smp resnet18 U-Net student and encoding UNet++ teacher on every rank."""
    import segmentation_models_pytorch as smp

    from featsup.models import UNetPlusPlus

    torch.manual_seed(0)
    student = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=2,
                       decoder_channels=(32, 16, 16, 8, 8))  # fmt: skip
    teacher = UNetPlusPlus(2, 2, widths=(4, 8, 8, 16, 16, 32), skip_connections=False)
    return student.eval(), teacher


def supervision_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    image = torch.randn(4, 1, 64, 64, generator=g)
    return image, (image[:, 0] > 0.5).long()


def supervision_losses(mode: str, steps: int = 3) -> dict[str, Any]:
    """Train ``steps`` SGD steps in ``mode`` ("student", "supervisor" or "single")."""
    import torch.distributed as dist

    from featsup.supervision import FeatureSupervisor

    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    student, teacher = supervision_models()
    before = [t.clone() for t in teacher.state_dict().values()]
    image, target = supervision_batch()
    share = slice(rank * len(image) // world, (rank + 1) * len(image) // world)
    ddp = nn.parallel.DistributedDataParallel
    model: nn.Module
    if mode == "student":  # wrapped before the supervisor: taps go inside the wrapper
        sup = model = FeatureSupervisor(ddp(student), teacher)
    elif mode == "supervisor":  # the supervisor wrapped, as the Trainer does
        sup = FeatureSupervisor(student, teacher)
        model = ddp(sup)
    else:
        sup = model = FeatureSupervisor(student, teacher)
    optimizer = torch.optim.SGD(sup.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        out = model(image[share], target[share])
        loss = F.cross_entropy(out.output, target[share]) + out.feature_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        value = out.feature_loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
        losses.append(value.item() / world)
    buffers = getattr(model, "named_module_buffers", {})
    return {
        "losses": losses,
        "levels": sup.level_names,
        "hooked": sorted(n for n, m in student.named_modules() if m._forward_hooks),
        "teacher_unchanged": all(
            torch.equal(a, b) for a, b in zip(before, teacher.state_dict().values(), strict=True)
        ),
        "ignored_by_ddp": len(getattr(model, "parameters_to_ignore", ())),
        "teacher_buffers_in_ddp": sum(n.startswith("teacher.") for n in buffers),
        "teacher_tensors": len([*teacher.named_parameters(), *teacher.named_buffers()]),
    }


def supervision_main() -> None:
    import torch.distributed as dist

    parser = argparse.ArgumentParser()
    parser.add_argument("--supervision", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {mode: supervision_losses(mode, args.steps) for mode in SUPERVISION_MODES}
    if dist.get_rank() == 0:
        (args.out / "supervision.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__" and "--supervision" in sys.argv:
    supervision_main()
    sys.exit(0)


if __name__ == "__main__":
    main()
