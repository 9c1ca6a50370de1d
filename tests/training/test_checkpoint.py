"""Checkpoint files: atomic writes under interruption, clear errors, model rebuilding."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from _trainer_toys import Blobs, make_trainer, tiny_model

import featsup.training.checkpoint as ckpt_module
from featsup.models import UNetPlusPlus
from featsup.training import Trainer, load_checkpoint, load_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


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

    from featsup.supervision import FeatureSupervisor, segmentation_step

    teacher = UNetPlusPlus(2, 2, widths=(4, 8, 8), skip_connections=False)
    sup = FeatureSupervisor(tiny_model(seed=5), teacher, label_classes=2)
    Trainer(sup, segmentation_step(), Blobs(), max_steps=1, progress=False,
            checkpoint_dir=tmp_path / "sup").fit()  # fmt: skip
    student = load_model(tmp_path / "sup" / "last.pt", part="student")
    torch.testing.assert_close(student.state_dict(), sup.student.state_dict())
    with pytest.raises(ValueError, match="pass model="):
        load_model(tmp_path / "sup" / "last.pt")  # the wrapper has no config
    with pytest.raises(ValueError, match="part='model'"):
        load_model(tmp_path / "last.pt", part="student")
