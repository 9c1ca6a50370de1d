"""Training script for tests/supervision/test_supervisor_ddp.py.

Run with ``python -m torch.distributed.run --nproc-per-node 2 --standalone`` (gloo on
CPU). ``--case wrappers`` trains a FeatureSupervisor around an smp U-Net on each rank's
share of one batch, once with the student wrapped in DDP inside the supervisor and once
with DDP around the supervisor (as the Trainer does); ``--case compiled`` trains
``DDP(FeatureSupervisor(torch.compile(student), teacher))``. Rank 0 writes the feature
loss of every step (mean over the ranks) and checks to ``OUT/<case>.json``. The same
functions called in one process give the reference on the whole batch. The student's
BatchNorm runs on its running statistics (eval mode): per-rank batch statistics would
differ from the single process's by design (SyncBatchNorm needs GPUs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor

SUPERVISION_MODES = ("student", "supervisor")


def supervision_models() -> tuple[nn.Module, nn.Module]:
    """The same smp resnet18 U-Net student and encoding UNet++ teacher on every rank."""
    import segmentation_models_pytorch as smp

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


def compiled_losses(steps: int = 3) -> dict[str, Any]:
    """Train ``steps`` SGD steps; under torchrun each rank takes its share of the batch."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.manual_seed(0)
    student = UNetPlusPlus(1, 2, widths=(4, 8, 16)).eval()  # BN on running statistics
    teacher = UNetPlusPlus(2, 2, widths=(4, 8, 16), skip_connections=False)
    before = [t.clone() for t in teacher.state_dict().values()]
    g = torch.Generator().manual_seed(5)
    image = torch.randn(4, 1, 32, 32, generator=g)
    target = (image[:, 0] > 0.5).long()
    share = slice(rank * len(image) // world, (rank + 1) * len(image) // world)
    sup = FeatureSupervisor(torch.compile(student, backend="aot_eager"), teacher)
    model: nn.Module = nn.parallel.DistributedDataParallel(sup) if world > 1 else sup
    optimizer = torch.optim.SGD(sup.parameters(), lr=0.05)
    losses, grads = [], []
    for _ in range(steps):
        out = model(image[share], target[share])
        loss = F.cross_entropy(out.output[-1], target[share]) + out.feature_loss
        optimizer.zero_grad()
        loss.backward()
        grads.append(float(student.encoder["x1_0"].conv1.conv.weight.grad.abs().sum()))
        optimizer.step()
        value = out.feature_loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
        losses.append(value.item() / world)
    return {
        "losses": losses,
        "grads": grads,
        "levels": sup.level_names,
        "teacher_unchanged": all(
            torch.equal(a, b) for a, b in zip(before, teacher.state_dict().values(), strict=True)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=("wrappers", "compiled"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    if args.case == "wrappers":
        result = {mode: supervision_losses(mode, args.steps) for mode in SUPERVISION_MODES}
    else:
        result = compiled_losses(args.steps)
    if dist.get_rank() == 0:
        (args.out / f"{args.case}.json").write_text(json.dumps(result))
    # Both ranks leave together. CI saw rank 0 abort at exit twice ("terminate called
    # without an active exception"); the likely cause is rank 1 tearing its gloo pairs down
    # while rank 0 was still writing. Not proven: the abort is too rare to reproduce here.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
