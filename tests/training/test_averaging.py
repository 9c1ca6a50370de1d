"""The weight average (``Trainer(ema_decay=...)``): its arithmetic, what validation judges,
what the checkpoints hold, and an exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _trainer_toys import Blobs, make_trainer, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from featsup.training import WeightAverage, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=25, deadline=None)
@given(
    decay=st.floats(0.01, 0.999),
    values=st.lists(st.floats(-10, 10), min_size=1, max_size=12),
)
def test_the_average_follows_its_recurrence(decay: float, values: list[float]) -> None:
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.5)
    average, expected = WeightAverage(net, decay), 0.5
    for t, value in enumerate(values, start=1):
        with torch.no_grad():
            net.weight.fill_(value)
        average.update(net)
        d = min(decay, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * value
    assert float(average.state["weight"]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert average.updates == len(values)


def test_integer_buffers_are_copied_and_applied_restores_everything() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    average = WeightAverage(net, 0.9)
    net.train()
    net(torch.randn(4, 1, 8, 8))  # counts a batch, moves the running statistics
    average.update(net)
    assert int(average.state["1.num_batches_tracked"]) == 1
    own = {k: v.clone() for k, v in net.state_dict().items()}
    with average.applied(net) as inner:
        assert inner is net
        net(torch.randn(4, 1, 8, 8))  # changes the statistics inside the block only
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, own[key], rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match=r"decay: expected a number in \(0, 1\)"):
        WeightAverage(net, 1.0)


def judged(seen: list[torch.Tensor]) -> Any:
    """A val_fn that records the first weight it is shown and returns it as the score."""

    def val_fn(model: nn.Module, loader: Any) -> dict[str, float]:
        weight = next(model.parameters()).detach().clone()
        seen.append(weight)
        return {"score": float(weight.flatten()[0])}

    return val_fn


def test_validation_and_best_checkpoint_judge_the_average(tmp_path: Path) -> None:
    seen: list[torch.Tensor] = []
    trainer = make_trainer(
        tmp_path, max_steps=6, val_every=3, val_data=Blobs(n=2), val_fn=judged(seen),
        keep_best_by="val/score", ema_decay=0.5,
    )  # fmt: skip
    trainer.fit()
    assert trainer.average is not None and trainer.average.updates == 6
    first = next(iter(trainer.average.state))
    torch.testing.assert_close(seen[-1], trainer.average.state[first], rtol=0, atol=0)
    trained = next(trainer.model.parameters()).detach().clone()
    assert not torch.equal(trained, seen[-1])  # validation saw the average, not these
    best = load_checkpoint(tmp_path / "best.pt")
    torch.testing.assert_close(best["model"][first], seen[best["step"] // 3 - 1], rtol=0, atol=0)
    last = load_checkpoint(tmp_path / "last.pt")
    torch.testing.assert_close(last["model"][first], trained, rtol=0, atol=0)
    assert last["average"]["updates"] == 6
    trainer.use_average()
    torch.testing.assert_close(next(trainer.model.parameters()), seen[-1], rtol=0, atol=0)


def test_resume_with_an_average_equals_uninterrupted_training(tmp_path: Path) -> None:
    common: dict[str, Any] = {"max_steps": 8, "val_every": 4, "ema_decay": 0.8,
                              "val_data": Blobs(n=4)}  # fmt: skip
    full = make_trainer(tmp_path / "full", **common)
    full.fit()
    part = make_trainer(tmp_path / "part", **common)
    part.fit(stop_at_step=5)
    again = make_trainer(tmp_path / "part", model=tiny_model(seed=7), **common)
    again.fit(resume_from=tmp_path / "part" / "last.pt")
    assert full.average is not None and again.average is not None
    assert again.average.updates == full.average.updates == 8
    for key, value in full.average.state.items():
        torch.testing.assert_close(again.average.state[key], value, rtol=0, atol=0, msg=key)
    assert again.history == full.history
    plain = make_trainer(None, max_steps=2, ema_decay=0.8)
    make_trainer(tmp_path / "none", max_steps=2).fit()
    with pytest.raises(ValueError, match="weight average"):
        plain.resume(tmp_path / "none" / "last.pt")
    with pytest.raises(ValueError, match="ema_decay"):
        make_trainer(None, max_steps=2).use_average()
    with pytest.raises(ValueError, match=r"ema_decay: expected a number in \(0, 1\)"):
        make_trainer(None, max_steps=2, ema_decay=0.0)
