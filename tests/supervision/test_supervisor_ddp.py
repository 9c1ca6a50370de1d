"""FeatureSupervisor under DistributedDataParallel (gloo on CPU).

Either order of wrapping taps the student's own modules (no ``module.`` prefix in level
names or hook paths) and leaves the frozen teacher out of DDP: wrapping the student
first (``FeatureSupervisor(DDP(student), teacher)``) keeps the teacher outside any
wrapper; wrapping the supervisor (``DDP(sup)``, as the Trainer does under torchrun)
skips the teacher's parameters and buffers, which the supervisor registers with DDP as
ignored. Two gloo processes on two halves of a batch give the feature loss of one process
on the whole batch, step after step (the student's BatchNorm on running statistics, since
per-rank batch statistics would differ by design).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor

pytest.importorskip("segmentation_models_pytorch")
import _supervision_worker  # tests/supervision/ is on sys.path (prepend import mode)

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("one_thread")]

WORKER = str(Path(__file__).with_name("_supervision_worker.py"))
STAGES = [f"stage{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def one_process_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A gloo group of one process, so that DDP can be built inside this test process."""
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    store = dist.FileStore(str(tmp_path_factory.mktemp("group") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def unetpp(in_channels: int) -> UNetPlusPlus:
    return UNetPlusPlus(in_channels, 2, widths=(4, 8, 16), skip_connections=in_channels == 1)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[:, 8:24, 4:20] = 1
    return target[:, None].float() + 0.3 * torch.randn(2, 1, 32, 32), target


@pytest.mark.usefixtures("one_process_group")
def test_ddp_student_is_tapped_inside_its_wrapper() -> None:
    student = unetpp(1)
    sup = FeatureSupervisor(DDP(student), unetpp(2))
    assert sup.level_names == ["x1_0", "x2_0"]
    assert sorted(n for n, m in student.named_modules() if m._forward_hooks) == [
        "encoder.x1_0", "encoder.x2_0"]  # fmt: skip
    assert sup.student_state_dict().keys() == student.state_dict().keys()  # no "module."
    out = sup(*batch())
    out.feature_loss.backward()
    assert student.encoder["x1_0"].conv1.conv.weight.grad is not None
    sup.close()
    by_name = FeatureSupervisor(DDP(unetpp(1)), unetpp(2), student_layers=["module.encoder.x2_0"])
    assert by_name.level_names == ["encoder.x2_0"]  # the DDP prefix is accepted and dropped


@pytest.mark.usefixtures("one_process_group")
def test_ddp_around_the_supervisor_skips_the_teacher() -> None:
    teacher = unetpp(2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model = DDP(FeatureSupervisor(unetpp(1), teacher))
    teacher_names = {f"teacher.{n}" for n, _ in [*teacher.named_parameters(),
                                                 *teacher.named_buffers()]}  # fmt: skip
    assert teacher_names <= model.parameters_to_ignore
    assert not [n for n in model.named_module_buffers if n.startswith("teacher.")]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        out = model(*batch())
        optimizer.zero_grad()
        (sum(h.mean() for h in out.output) + out.feature_loss).backward()
        optimizer.step()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_ddp_teacher_is_refused() -> None:
    wrapped = nn.DataParallel(unetpp(2))  # DDP's sibling; DDP itself needs a process group
    with pytest.raises(
        TypeError, match=r"teacher: expected the frozen network itself.*teacher\.module"
    ):
        FeatureSupervisor(unetpp(1), wrapped)


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_feature_loss(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
               "--standalone", WORKER, "--case", "wrappers", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "wrappers.json").read_text())
    single = _supervision_worker.supervision_losses("single")
    assert single["levels"] == STAGES and single["losses"][-1] < single["losses"][0]
    for mode in _supervision_worker.SUPERVISION_MODES:
        run = results[mode]
        gap = max(abs(a - b) / b for a, b in zip(run["losses"], single["losses"], strict=True))
        print(f"{mode}: max relative gap to one process {gap:.2g}")
        torch.testing.assert_close(
            torch.tensor(run["losses"]), torch.tensor(single["losses"]), rtol=1e-4, atol=1e-6
        )
        assert run["levels"] == STAGES and run["hooked"] == ["encoder"], mode
        assert run["teacher_unchanged"] and run["teacher_buffers_in_ddp"] == 0, mode
    supervisor = results["supervisor"]
    assert supervisor["ignored_by_ddp"] == supervisor["teacher_tensors"] > 0


@pytest.mark.slow
def test_a_compiled_student_under_two_gloo_processes(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
               "--standalone", WORKER, "--case", "compiled", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = json.loads((tmp_path / "compiled.json").read_text())
    single = _supervision_worker.compiled_losses()
    assert run["levels"] == single["levels"] == ["x1_0", "x2_0"]
    assert run["teacher_unchanged"] and single["teacher_unchanged"]
    assert all(g > 0 for g in run["grads"]) and all(map(math.isfinite, run["losses"]))
    torch.testing.assert_close(
        torch.tensor(run["losses"]), torch.tensor(single["losses"]), rtol=1e-4, atol=1e-6
    )
