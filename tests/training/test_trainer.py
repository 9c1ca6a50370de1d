"""The Trainer loop: learning, exact resume, best model, stopping, errors, AMP, progress."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _trainer_toys import Blobs, deep_supervision_step, make_trainer, metric_fn, tiny_model
from torch import nn

from featsup.training import Trainer, cpu_has_bf16_units, dice_per_head, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_best_checkpoint_tracks_the_best_validation(tmp_path: Path) -> None:
    scores = [0.1, 0.5, 0.3, 0.7, 0.2]
    trainer = make_trainer(
        tmp_path, max_steps=5, val_every=1, val_data=Blobs(n=2),
        val_fn=metric_fn(scores), keep_best_by="val/score",
    )  # fmt: skip
    history = trainer.fit()
    assert [r["val/score"] for r in history if "val/score" in r] == scores
    assert (trainer.best_step, trainer.best_value) == (4, 0.7)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == 4 and best["best"]["value"] == 0.7
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 5
    lowest = make_trainer(
        None, max_steps=5, val_every=1, val_data=Blobs(n=2),
        val_fn=metric_fn(scores), keep_best_by="val/score", mode="min",
    )  # fmt: skip
    lowest.fit()
    assert lowest.best_step == 1


def test_early_stopping_stops_after_patience(tmp_path: Path) -> None:
    trainer = make_trainer(
        tmp_path, max_steps=20, val_every=2, val_data=Blobs(n=2),
        val_fn=metric_fn([0.5, 0.9, 0.8, 0.9, 0.85, 1.0, 1.0]),
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


def test_bf16_autocast_on_cpu_trains_and_keeps_float32_weights(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=20, amp="bf16", device="cpu")
    assert trainer.precision.dtype == torch.bfloat16
    history = trainer.fit()
    losses = [r["train/loss"] for r in history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert load_checkpoint(tmp_path / "last.pt")["scaler"] is None  # no scaler for bf16


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(True, False, True), (False, True, True), (False, False, False)],
)
def test_cpu_has_bf16_units_counts_amx_and_avx512_bf16(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, expected: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert cpu_has_bf16_units() is expected


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


def test_stop_when_stops_at_the_first_validation_that_meets_it(tmp_path: Path) -> None:
    seen: list[dict[str, float]] = []

    def reached(metrics: dict[str, float]) -> bool:
        seen.append(dict(metrics))
        return metrics["val/score"] >= 0.8

    trainer = make_trainer(
        tmp_path, max_steps=20, val_every=2, val_data=Blobs(n=2),
        val_fn=metric_fn([0.5, 0.7, 0.9, 0.95]), stop_when=reached,
    )  # fmt: skip
    trainer.fit()
    assert trainer.stopped_early and trainer.step == 6
    assert [m["val/score"] for m in seen] == [0.5, 0.7, 0.9]
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 6 and state["best"]["stopped_early"]
    with pytest.raises(ValueError, match="val_data"):
        make_trainer(None, max_steps=2, stop_when=reached)


def test_off_a_terminal_each_validation_is_one_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = make_trainer(
        None, max_steps=6, val_every=3, log_every=2, progress=None, val_data=Blobs(n=4),
        val_fn=lambda m, loader: dice_per_head(m, loader, num_classes=2),
    )  # fmt: skip
    trainer.fit()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2  # validations at steps 3 and 6, nothing else (no bar)
    for line, step in zip(lines, (3, 6), strict=True):
        fields = line.split(" | ")
        assert fields[0] == f"step {step}/6 (epoch {(step - 1) // 3})"
        train = [r for r in trainer.history if "train/loss" in r and r["step"] <= step][-1]
        assert fields[1].startswith(f"train ce_x0_1 {train['train/ce_x0_1']:.4g}, ")
        assert f"loss {train['train/loss']:.4g}" in fields[1]
        val = next(r for r in trainer.history if "val/dice_x0_1" in r and r["step"] == step)
        assert fields[2] == (
            f"val dice_x0_1 {val['val/dice_x0_1']:.4g}, dice_x0_2 {val['val/dice_x0_2']:.4g}"
        )
        assert fields[3].startswith("elapsed 0:00:") and ", remaining ~0:00:" in fields[3]
    make_trainer(None, max_steps=3, val_every=3, progress=False, val_data=Blobs(n=2)).fit()
    assert capsys.readouterr().err == ""  # progress=False: silent


def test_a_named_run_says_whose_log_lines_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    make_trainer(None, max_steps=2, val_every=2, progress=None, val_data=Blobs(n=2),
                 name="liver ES-DS").fit()  # fmt: skip
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("liver ES-DS: step 2/2 (epoch ")
    with pytest.raises(TypeError, match="name"):
        make_trainer(None, max_steps=2, name=3)


def test_the_trainer_tells_a_data_set_its_epoch(tmp_path: Path) -> None:
    class EpochBlobs(Blobs):
        def __init__(self) -> None:
            super().__init__(n=8)
            self.epochs: list[int] = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

    data = EpochBlobs()
    Trainer(tiny_model(), deep_supervision_step, data, max_steps=6, batch_size=4,
            progress=False).fit()  # fmt: skip
    assert data.epochs == [0, 1, 2]  # 2 batches per epoch: a new draw every epoch
