"""Rank layout and batch order; two gloo processes under torchrun against one process.

The DDP tests compare two gloo processes on CPU with one process on the same global batch.

DDP averages the two ranks' gradients of per-rank mean losses, which is the gradient of
the mean loss over the global batch, so the runs agree up to float32 summation order.
Tolerance: rtol 1e-5, atol 1e-6 on every weight after 6 AdamW steps (measured: max abs
difference 7e-8). The network has no BatchNorm: per-rank batch statistics would
make the runs differ by design (use SyncBatchNorm on GPUs for that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featsup.training import load_checkpoint
from featsup.training.distributed import DistEnv, EpochBatchSampler

WORKER = str(Path(__file__).parent / "_ddp_worker.py")


def run(out: Path, *worker_args: str, nproc: int | None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launcher = [sys.executable]
    if nproc is not None:
        launcher += ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone"]
    command = [*launcher, WORKER, "--out", str(out), *worker_args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def seen(out: Path, rank: int) -> list[list[int]]:
    return json.loads((out / f"indices_rank{rank}.json").read_text())


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted 2-process run, shared by the tests below (each launch costs ~10 s)."""
    out = tmp_path_factory.mktemp("ddp")
    run(out, "--batch-size", "2", nproc=2)
    return out


@pytest.mark.distributed
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(
    tmp_path: Path, ddp_run: Path
) -> None:
    run(tmp_path / "single", "--batch-size", "4", nproc=None)
    # same global batches: rank 0 and rank 1 together see the single process's batch
    ranks = (seen(ddp_run, 0), seen(ddp_run, 1))
    single = seen(tmp_path / "single", 0)
    assert len(single) == 6
    for step, batch in enumerate(single):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
        assert not set(ranks[0][step]) & set(ranks[1][step])
    ddp = load_checkpoint(ddp_run / "last.pt")
    one = load_checkpoint(tmp_path / "single" / "last.pt")
    assert ddp["step"] == one["step"] == 6 and ddp["settings"]["world_size"] == 2
    assert len(ddp["rng"]) == 2  # one generator state per rank
    for name, weight in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], weight, rtol=1e-5, atol=1e-6, msg=name)
    diff = max(float((one["model"][k] - ddp["model"][k]).abs().max()) for k in one["model"])
    print(f"max |DDP - single| over the weights: {diff:.3g}")
    # logged losses are averaged over ranks: they match the single process's too
    losses = [[r["train/loss"] for r in c["history"] if "train/loss" in r] for c in (ddp, one)]
    torch.testing.assert_close(
        torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-4, atol=1e-6
    )
    assert [r["val/dice_x0_2"] for r in ddp["history"] if "val/dice_x0_2" in r] == pytest.approx(
        [r["val/dice_x0_2"] for r in one["history"] if "val/dice_x0_2" in r], abs=1e-3
    )
    assert (ddp_run / "best.pt").is_file()
    history_lines = (ddp_run / "history.jsonl").read_text().splitlines()
    assert len(history_lines) == len(ddp["history"])  # rank 0 only writes


@pytest.mark.distributed
@pytest.mark.slow
def test_distributed_resume_equals_uninterrupted(tmp_path: Path, ddp_run: Path) -> None:
    # both ranks stop at step 4 (rank 0 checkpoints), then resume with a new model and
    # Trainer (the process group is created a second time) and finish at step 6
    run(tmp_path, "--batch-size", "2", "--interrupt-at", "4", nproc=2)
    full = load_checkpoint(ddp_run / "last.pt")
    resumed = load_checkpoint(tmp_path / "last.pt")
    assert resumed["step"] == 6
    for name, weight in full["model"].items():
        torch.testing.assert_close(resumed["model"][name], weight, rtol=0, atol=0, msg=name)
    assert resumed["history"] == full["history"]
    for rank in (0, 1):
        assert seen(tmp_path, rank) == seen(ddp_run, rank)  # the same batches, in order


def test_batch_sampler_resumes_mid_epoch_with_the_same_order() -> None:
    env = DistEnv()
    sampler = EpochBatchSampler(10, 3, env, shuffle=True, seed=4, drop_last=False)
    sampler.set_position(epoch=2, start=0)
    whole = list(sampler)
    assert sorted(i for batch in whole for i in batch) == list(range(10))
    sampler.set_position(epoch=2, start=2)
    assert list(sampler) == whole[2:]
    sampler.set_position(epoch=3, start=0)
    assert list(sampler) != whole  # a new permutation each epoch


def test_environment_without_torchrun_is_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert DistEnv.from_env() == DistEnv(1, 0, 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK"):
        DistEnv.from_env()
    assert os.environ["WORLD_SIZE"] == "2"
