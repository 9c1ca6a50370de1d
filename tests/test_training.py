from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import featsup.training.checkpoint as ckpt_module
from featsup.models import UNetPlusPlus
from featsup.training import (
    Trainer,
    dice_per_head,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from featsup.training.distributed import DistEnv, EpochBatchSampler


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    # tiny convolutions: one thread is ~10x faster than two on a busy 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_fit_reduces_loss_and_writes_history(tmp_path: Path) -> None:
    trainer = make_trainer(
        tmp_path, max_steps=30, scheduler="constant", warmup_steps=3, val_every=10,
        val_data=Blobs(n=6), val_fn=lambda m, loader: dice_per_head(m, loader, num_classes=2),
    )  # fmt: skip
    history = trainer.fit()
    losses = [r["train/loss"] for r in history if "train/loss" in r]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    dice = [r for r in history if "val/dice_x0_2" in r]
    assert [r["step"] for r in dice] == [10, 20, 30]
    assert dice[-1]["val/dice_x0_2"] > 0.7  # measured 0.91: the task is learnt
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == history
    assert set(history[0]) == {
        "step",
        "epoch",
        "train/loss",
        "train/lr",
        "train/ce_x0_1",
        "train/ce_x0_2",
    }
    assert history[0]["train/lr"] == pytest.approx(1e-2 / 3)  # warm-up 1/3
    assert (tmp_path / "last.pt").is_file()


def test_epochs_count_and_drop_last() -> None:
    data = Blobs(n=10)
    assert make_trainer(None, epochs=2, data=data).total_steps == 6  # ceil(10 / 4) x 2
    assert make_trainer(None, epochs=2, data=data, drop_last=True).total_steps == 4
    assert make_trainer(None, epochs=5, max_steps=7, data=data).total_steps == 7


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


def _metric_fn(values: list[float]) -> Any:
    calls = iter(values)

    def val_fn(model: nn.Module, loader: Any) -> dict[str, float]:
        return {"score": next(calls)}

    return val_fn


@pytest.mark.parametrize(
    ("num_workers", "augment"),
    # random augmentation inside worker processes is not part of the exact guarantee
    [(0, True), pytest.param(2, False, marks=pytest.mark.slow)],
)
def test_resume_equals_uninterrupted_training(
    tmp_path: Path, num_workers: int, augment: bool
) -> None:
    # 12 samples / batch 4 = 3 batches per epoch: the stop at step 5 is mid-epoch; the
    # running-mean window (log_every 3) spans the stop; validation every 4 steps.
    common = {
        "max_steps": 10,
        "num_workers": num_workers,
        "log_every": 3,
        "val_every": 4,
        "warmup_steps": 2,
        "data": Blobs(augment=augment),
        "val_data": Blobs(n=4),
        "keep_best_by": "val/loss",
        "mode": "min",
    }
    full = make_trainer(tmp_path / "full", **common)
    full.fit()
    first = make_trainer(tmp_path / "part", **common)
    first.fit(stop_at_step=5)
    assert first.step == 5 and load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 5
    torch.manual_seed(123)  # disturb every generator: resume must restore them
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    second = make_trainer(tmp_path / "part", model=tiny_model(seed=7), **common)
    second.fit(resume_from=tmp_path / "part" / "last.pt")
    assert second.step == 10
    for (name, a), (_, b) in zip(
        full.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(
        full.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"], rtol=0, atol=0
    )
    assert second.history == full.history
    assert (tmp_path / "part" / "history.jsonl").read_text() == (
        tmp_path / "full" / "history.jsonl"
    ).read_text()
    assert second.best_step == full.best_step


def test_resume_detects_a_different_run(tmp_path: Path) -> None:
    make_trainer(tmp_path, max_steps=2).fit()
    other = make_trainer(None, max_steps=4, batch_size=2)
    with pytest.warns(UserWarning, match="batch_size"):
        other.resume(tmp_path / "last.pt")
    assert other.step == 2


def test_interrupted_save_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit()
    before = load_checkpoint(tmp_path / "last.pt")
    trainer.step = 99

    def half_then_crash(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04" + b"\0" * 1000)  # the start of a zip, then the "crash"
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module.torch, "save", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.save(tmp_path / "last.pt")
    monkeypatch.undo()
    after = load_checkpoint(tmp_path / "last.pt")
    assert after["step"] == before["step"] == 2
    torch.testing.assert_close(after["model"], before["model"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl", "last.pt"]


KILLED_WRITER = textwrap.dedent(
    """
    import io, sys, time, torch
    import featsup.training.checkpoint as c
    path = sys.argv[1]
    c.save_checkpoint(path, {"format": c.CHECKPOINT_FORMAT, "step": 1, "w": torch.ones(1000)})
    real_save = torch.save
    def slow_save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("HALF", flush=True)
        time.sleep(60)
    c.torch.save = slow_save
    c.save_checkpoint(path, {"format": c.CHECKPOINT_FORMAT, "step": 2, "w": torch.zeros(1000)})
    """
)


def test_process_killed_while_saving_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "HALF"
    finally:
        child.kill()
        child.wait()
    state = load_checkpoint(path)
    assert state["step"] == 1
    torch.testing.assert_close(state["w"], torch.ones(1000))
    leftovers = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")  # the half-written one
    save_checkpoint(path, {"format": ckpt_module.CHECKPOINT_FORMAT, "step": 3})
    assert load_checkpoint(path)["step"] == 3


def test_truncated_checkpoint_gives_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="readable torch checkpoint"):
        load_checkpoint(bad)
    torch.save({"a": 1}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="format"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_best_checkpoint_tracks_the_best_validation(tmp_path: Path) -> None:
    scores = [0.1, 0.5, 0.3, 0.7, 0.2]
    trainer = make_trainer(
        tmp_path, max_steps=5, val_every=1, val_data=Blobs(n=2),
        val_fn=_metric_fn(scores), keep_best_by="val/score",
    )  # fmt: skip
    history = trainer.fit()
    assert [r["val/score"] for r in history if "val/score" in r] == scores
    assert (trainer.best_step, trainer.best_value) == (4, 0.7)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == 4 and best["best"]["value"] == 0.7
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 5
    lowest = make_trainer(
        None, max_steps=5, val_every=1, val_data=Blobs(n=2),
        val_fn=_metric_fn(scores), keep_best_by="val/score", mode="min",
    )  # fmt: skip
    lowest.fit()
    assert lowest.best_step == 1


def test_early_stopping_stops_after_patience(tmp_path: Path) -> None:
    trainer = make_trainer(
        tmp_path, max_steps=20, val_every=2, val_data=Blobs(n=2),
        val_fn=_metric_fn([0.5, 0.9, 0.8, 0.9, 0.85, 1.0, 1.0]),
        keep_best_by="val/score", early_stopping_patience=3,
    )  # fmt: skip
    trainer.fit()
    assert trainer.stopped_early and trainer.step == 10 and trainer.best_step == 4
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 10
    # resuming a stopped run does nothing more
    again = make_trainer(None, max_steps=20, val_data=Blobs(n=2), keep_best_by="val/loss")
    again.fit(resume_from=tmp_path / "last.pt")
    assert again.step == 10


def test_default_validation_averages_step_values(tmp_path: Path) -> None:
    history = make_trainer(None, max_steps=3, val_data=Blobs(n=5), val_batch_size=2).fit()
    val = [r for r in history if "val/loss" in r]
    assert len(val) == 1 and val[0]["step"] == 3  # once per epoch and at the end
    assert {"val/ce_x0_1", "val/ce_x0_2"} <= set(val[0])


def test_non_finite_loss_raises() -> None:
    def nan_step(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        return model(batch["image"])[0].mean() * float("nan"), {}

    trainer = Trainer(tiny_model(), nan_step, Blobs(), max_steps=3, progress=False, log_every=1)
    with pytest.raises(FloatingPointError, match="step 1"):
        trainer.fit()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_steps": None}, ValueError, "max_steps/epochs"),
        ({"scheduler": "cosin"}, ValueError, "did you mean 'cosine'"),
        ({"mode": "maximum"}, ValueError, "did you mean 'max'"),
        ({"amp": "fp16"}, ValueError, "CUDA only"),
        ({"amp": "fp32"}, ValueError, "amp"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"device": "tpu9"}, ValueError, "device"),
        ({"keep_best_by": "val/loss"}, ValueError, "val_data"),
        ({"early_stopping_patience": 2, "val_data": Blobs(2)}, ValueError, "keep_best_by"),
        ({"data": iter(range(3))}, TypeError, "map-style"),
        ({"data": Blobs(n=3), "batch_size": 4, "drop_last": True}, ValueError, "train_data"),
        ({"scheduler": 3}, ValueError, "scheduler"),
    ],
)
def test_bad_arguments_raise_clear_errors(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    options = {"max_steps": 2, **kwargs}
    with pytest.raises(error, match=match):
        make_trainer(None, **options)


def test_val_fn_errors_propagate_unchanged() -> None:
    def broken(model: nn.Module, loader: Any) -> dict[str, float]:
        raise KeyError("dice")

    trainer = make_trainer(None, max_steps=2, val_data=Blobs(2), val_fn=broken)
    with pytest.raises(KeyError, match="dice"):
        trainer.fit()
    assert trainer.model.training  # eval mode was undone
    not_a_dict = make_trainer(None, max_steps=1, val_data=Blobs(2), val_fn=lambda m, d: 0.5)
    with pytest.raises(TypeError, match="val_fn"):
        not_a_dict.fit()


def test_unknown_best_metric_is_reported_at_the_first_validation() -> None:
    trainer = make_trainer(None, max_steps=2, val_data=Blobs(2), keep_best_by="loss")
    with pytest.raises(ValueError, match="did you mean 'val/loss'"):
        trainer.fit()


@pytest.mark.parametrize(
    ("step_fn", "error", "match"),
    [
        (lambda m, b: m(b["image"])[0].mean(), TypeError, r"\(loss, \{\}\)"),
        (lambda m, b: (m(b["image"])[0].mean().detach(), {}), ValueError, "requires grad"),
        (lambda m, b: (m(b["image"])[0], {}), ValueError, "scalar loss"),
        (lambda m, b: (m(b["image"])[0].mean(), {"x": "a"}), TypeError, "'x'"),
    ],
)
def test_bad_step_outputs_raise_clear_errors(step_fn: Any, error: type, match: str) -> None:
    trainer = Trainer(tiny_model(), step_fn, Blobs(), max_steps=1, progress=False)
    with pytest.raises(error, match=match):
        trainer.fit()


class FixedHeads(nn.Module):
    """Returns given logits per head, ignoring its input."""

    def __init__(self, heads: list[torch.Tensor]) -> None:
        super().__init__()
        self.heads = heads
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        return [h[self.calls - 1] for h in self.heads]


def test_dice_per_head_is_global_over_the_loader() -> None:
    target = torch.tensor([[[0, 1, 1, 0]], [[1, 1, 0, 0]]])  # 2 batches of (1, 1, 4)
    pred = torch.tensor([[[0, 1, 0, 0]], [[1, 1, 1, 1]]])
    # head 1 predicts `pred`, head 2 predicts the target exactly
    logits_1 = F.one_hot(pred, 2).permute(0, 3, 1, 2).float()[:, None]
    logits_2 = F.one_hot(target, 2).permute(0, 3, 1, 2).float()[:, None]
    model = FixedHeads([logits_1, logits_2])
    loader = [{"image": torch.zeros(1, 1, 1, 4), "target": target[k : k + 1]} for k in range(2)]
    dice = dice_per_head(model, loader, num_classes=2)
    # global: intersection 1 + 2 = 3, |P| = 1 + 4 = 5, |T| = 2 + 2 = 4 -> 6 / 9
    assert dice == pytest.approx({"dice_x0_1": 6 / 9, "dice_x0_2": 1.0})


def test_dice_per_head_scores_every_head_of_the_student() -> None:
    student = UNetPlusPlus(1, 2, widths=(4, 8, 8), deep_supervision=False).train()

    class Supervised(nn.Module):  # the shape of a FeatureSupervisor
        def __init__(self) -> None:
            super().__init__()
            self.student = student
            self.adapter = nn.Conv2d(8, 8, 1)

    data = Blobs(n=3)
    loader = [{"image": data.images, "target": (data.images[:, 0] > 0.3).long()}]
    dice = dice_per_head(Supervised(), loader, num_classes=2, head_names=["a", "b"])
    assert sorted(dice) == ["dice_a", "dice_b"]
    assert all(0.0 <= v <= 1.0 for v in dice.values())
    assert student.training and student.deep_supervision is False  # restored
    with pytest.raises(ValueError, match="head_names"):
        dice_per_head(student, loader, num_classes=2, head_names=["a"])
    with pytest.raises(ValueError, match="num_classes"):
        dice_per_head(student, loader, num_classes=1)


def test_load_model_rebuilds_the_model_and_the_student(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit()
    rebuilt = load_model(tmp_path / "last.pt")
    x = torch.randn(1, 1, 16, 16)
    trainer.model.eval()
    for a, b in zip(rebuilt(x), trainer.model(x), strict=True):
        torch.testing.assert_close(a, b)
    into = load_model(tmp_path / "last.pt", model=tiny_model(seed=3))
    torch.testing.assert_close(into.state_dict(), trainer.model.state_dict())

    class Supervised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = tiny_model(seed=5)
            self.adapter = nn.Conv2d(1, 1, 1)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return self.student(self.adapter(x))

    sup = Supervised()
    Trainer(sup, deep_supervision_step, Blobs(), max_steps=1, progress=False,
            checkpoint_dir=tmp_path / "sup").fit()  # fmt: skip
    student = load_model(tmp_path / "sup" / "last.pt", part="student")
    torch.testing.assert_close(student.state_dict(), sup.student.state_dict())
    with pytest.raises(ValueError, match="pass model="):
        load_model(tmp_path / "sup" / "last.pt")  # the wrapper has no config
    with pytest.raises(ValueError, match="part='model'"):
        load_model(tmp_path / "last.pt", part="student")


def test_bf16_autocast_on_cpu_trains_and_keeps_float32_weights(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=20, amp="bf16", device="cpu")
    assert trainer._amp_dtype == torch.bfloat16
    history = trainer.fit()
    losses = [r["train/loss"] for r in history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert load_checkpoint(tmp_path / "last.pt")["scaler"] is None  # no scaler for bf16


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(tmp_path: Path, amp: str) -> None:
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    trainer = make_trainer(tmp_path, max_steps=20, amp=amp, device="cuda", grad_clip=1.0)
    history = trainer.fit()
    losses = [r["train/loss"] for r in history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    state = load_checkpoint(tmp_path / "last.pt")
    assert (state["scaler"] is not None) == (amp == "fp16")
    assert state["rng"][0]["cuda"] is not None
    resumed = make_trainer(tmp_path, max_steps=25, amp=amp, device="cuda")
    resumed.fit(resume_from=tmp_path / "last.pt")
    assert resumed.step == 25


def test_environment_without_torchrun_is_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert DistEnv.from_env() == DistEnv(1, 0, 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK"):
        DistEnv.from_env()
    assert os.environ["WORLD_SIZE"] == "2"
