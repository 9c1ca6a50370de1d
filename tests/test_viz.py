from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from featsup.viz import plot_training_curves


def test_training_curves_draw_the_logged_losses_and_heads(tmp_path) -> None:
    history = tmp_path / "history.jsonl"
    records = [{"step": s, "train/loss": 1.0 / s, "train/seg": 0.5 / s} for s in (1, 2, 3)]
    records += [{"step": 3, "val/dice_x0_1": 0.5, "val/dice_x0_2": 0.6}]
    history.write_text("\n".join(json.dumps(r) for r in records))
    loss, dice = plot_training_curves(tmp_path / "curves", {"a": history, "b": records})
    assert (loss.name, dice.name) == ("curves_loss.png", "curves_dice.png")
    assert loss.stat().st_size > 0 and dice.stat().st_size > 0
    only_losses = plot_training_curves(tmp_path / "l", {"a": records[:3]})  # no validation
    assert [p.name for p in only_losses] == ["l_loss.png"]
    with pytest.raises(ValueError, match="expected records with"):
        plot_training_curves(tmp_path / "none", {"a": [{"step": 1}]})  # nothing logged


def test_save_figure_writes_into_new_folders_and_closes(tmp_path) -> None:
    import matplotlib.pyplot as plt

    from featsup.viz import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, str(tmp_path / "a" / "b" / "line.png"), dpi=50)
    assert out == tmp_path / "a" / "b" / "line.png"
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)  # closed: no figure piles up in a long loop
    fig, _ = plt.subplots()
    with pytest.raises(ValueError):  # an unknown format is refused, and the figure closed
        save_figure(fig, tmp_path / "line.nosuchformat")
    assert not plt.fignum_exists(fig.number)
