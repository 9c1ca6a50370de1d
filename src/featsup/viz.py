"""Pictures a person would rather look at than read: overlays and training curves.

Needs matplotlib (``pip install "featsup[viz]"``); it is imported inside each function
and drawn with the non-interactive Agg backend, so this works on headless machines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "load_history",
    "plot_cascade_case",
    "plot_cascade_panels",
    "plot_curves",
    "plot_training_curves",
    "save_figure",
]

_LIVER, _TUMOUR, _TRUTH = (0.1, 0.8, 0.2), (0.95, 0.15, 0.1), (1.0, 0.9, 0.0)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'featsup.viz needs matplotlib; install it with pip install "featsup[viz]"'
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Lay out a matplotlib figure, write it to ``path`` (folders made) and close it.

    Args:
        fig: a ``matplotlib.figure.Figure``.
        path: the image file to write; its suffix picks the format (``.png``, ``.pdf``...).
        dpi: dots per inch.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    out = Path(path)
    try:
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi)
    finally:  # closed however it ends: figures left open pile up in a long loop
        _pyplot().close(fig)
    return out


def _overlay(ax: Any, image: np.ndarray, mask: np.ndarray | None, color: Sequence[float]) -> None:
    ax.imshow(image, cmap="gray", interpolation="nearest")
    if mask is not None and mask.any():
        rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
        rgba[mask.astype(bool)] = (*color, 0.45)
        ax.imshow(rgba, interpolation="nearest")
    ax.set_axis_off()


def _contour(ax: Any, mask: np.ndarray | None) -> None:
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[_TRUTH], linewidths=0.8)


def plot_cascade_panels(
    path: str | os.PathLike[str],
    *,
    image: np.ndarray,
    liver: np.ndarray,
    roi_image: np.ndarray | None,
    tumour: np.ndarray,
    truth: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Save the paper's Fig. 15-18 for one axial slice: original, liver, ROI, tumour.

    Args:
        path: output PNG.
        image: (H, W) windowed CT slice (any range; shown in gray).
        liver: (H, W) predicted liver mask.
        roi_image: (h, w) resized liver-ROI crop fed to the tumour model, or None.
        tumour: (H, W) predicted tumour mask.
        truth: (H, W) ground-truth labels {0, 1, 2}, drawn as yellow contours.
        title: figure title.

    Returns:
        The path written.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    _overlay(axes[0], image, None, _LIVER)
    axes[0].set_title("original")
    _overlay(axes[1], image, liver, _LIVER)
    _contour(axes[1], None if truth is None else truth > 0)
    axes[1].set_title("liver (green), truth (yellow)")
    if roi_image is not None:
        axes[2].imshow(roi_image, cmap="gray", interpolation="nearest")
    axes[2].set_axis_off()
    axes[2].set_title("liver ROI, resized")
    _overlay(axes[3], image, tumour, _TUMOUR)
    _contour(axes[3], None if truth is None else truth == 2)
    axes[3].set_title("tumour (red), truth (yellow)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def load_history(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Read a JSON-lines training history (one record per line)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(
    path: str | os.PathLike[str],
    histories: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    keys: Sequence[str],
    title: str = "",
    ylabel: str = "",
) -> Path:
    """Plot ``keys`` against ``step`` for several runs (like the paper's Fig. 11-14).

    Args:
        path: output PNG.
        histories: run name -> records (dicts with ``"step"`` and the keys).
        keys: values to draw, one panel each.
        title: figure title.
        ylabel: y-axis label.

    Returns:
        The path written.

    Raises:
        ValueError: if no run has any of ``keys``.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    drawn = 0
    for ax, key in zip(axes[0], keys, strict=True):
        for name, records in histories.items():
            points = [(r["step"], r[key]) for r in records if key in r and "step" in r]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=name, linewidth=1.4)
                drawn += 1
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not drawn:
        plt.close(fig)
        raise ValueError(f"keys: none of {list(keys)} is in the histories")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_training_curves(
    prefix: str | os.PathLike[str],
    histories: Mapping[str, str | os.PathLike[str] | Iterable[Mapping[str, Any]]],
    *,
    title: str = "",
) -> list[Path]:
    """The paper's Fig. 11-14 for Trainer runs: losses and validation Dice per head.

    Writes ``{prefix}_loss.png`` (``train/loss``, ``train/seg``, ``train/feature``, those
    logged) and ``{prefix}_dice.png`` (``val/dice_x0_k`` of every head logged), each only
    when something of it was logged.

    Args:
        prefix: path and file-name start of the two PNGs.
        histories: run name -> its ``history.jsonl`` path or its records.
        title: prepended to each figure's title.

    Returns:
        The paths written.

    Raises:
        ValueError: if the runs logged none of these values.
    """
    runs = {
        name: load_history(h) if isinstance(h, (str, os.PathLike)) else list(h)
        for name, h in histories.items()
    }
    logged = {key for records in runs.values() for r in records for key in r}
    losses = [k for k in ("train/loss", "train/seg", "train/feature") if k in logged]
    heads = sorted((k for k in logged if k.startswith("val/dice_x0_")), key=lambda k: int(k[12:]))
    if not losses and not heads:
        raise ValueError(
            f"histories: expected records with train/loss, train/seg, train/feature or "
            f"val/dice_x0_k, got only {sorted(logged)}"
        )
    lead = f"{title}: " if title else ""
    figures = (("loss", losses, "training losses"), ("dice", heads, "validation Dice"))
    return [
        plot_curves(f"{prefix}_{name}.png", runs, keys=keys, title=lead + what)
        for name, keys, what in figures
        if keys
    ]


def plot_cascade_case(
    path: str | os.PathLike[str],
    volume_hu: np.ndarray,
    result: Any,
    *,
    truth: np.ndarray | None = None,
    tumour_size: tuple[int, int] = (128, 128),
    hu_window: tuple[float, float] | None = None,
    title: str = "",
) -> Path:
    """:func:`plot_cascade_panels` for the most telling slice of one cascade result.

    The slice is the one with the most tumour in ``truth`` (else the most liver; without
    ``truth``, in the prediction); the ROI panel is that slice's liver-masked crop,
    resized as the tumour model saw it.

    Args:
        path: output PNG.
        volume_hu: (D, H, W) CT in Hounsfield units.
        result: the :class:`~featsup.inference.CascadeResult` of ``volume_hu``.
        truth: (D, H, W) labels {0, 1, 2}, drawn as contours.
        tumour_size: the tumour model's ROI size.
        hu_window: display window (the model's ``preprocessing.hu_window``); None is
            :data:`featsup.data.preprocess.HU_WINDOW`.
        title: prefix of the figure title.

    Returns:
        The written path.
    """
    from featsup.data import hu_window as window
    from featsup.data import resize
    from featsup.data.preprocess import HU_WINDOW

    low, high = hu_window or HU_WINDOW
    labels = truth if truth is not None else result.labels
    tumour_voxels = (labels == 2).sum(axis=(1, 2))
    k = int(tumour_voxels.argmax() if tumour_voxels.any() else (labels > 0).sum((1, 2)).argmax())
    image = window(volume_hu[k], low=low, high=high, output="uint8")
    roi_image = None
    if result.roi is not None:
        _, rows, cols = result.roi.slices
        crop = np.where(result.labels[k, rows, cols] > 0, image[rows, cols], 0)
        roi_image = resize(crop.astype(np.float32), tuple(tumour_size))
    return plot_cascade_panels(
        path, image=image, liver=result.labels[k] > 0, roi_image=roi_image,
        tumour=result.labels[k] == 2, truth=None if truth is None else truth[k],
        title=f"{title}, slice {k}" if title else f"slice {k}",
    )  # fmt: skip
