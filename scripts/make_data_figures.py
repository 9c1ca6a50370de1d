"""Draw the before/after figures of docs/data.md from one synthetic phantom.

Usage:
    python scripts/make_data_figures.py [--out docs/images] [--seed 8]

Writes docs/images/data_*.png (matplotlib, needs featsup[viz,data]).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from scipy import ndimage

from featsup.data import (
    Preprocessing,
    SliceAugment,
    clahe,
    crop_to_roi,
    darkness_channel,
    hu_window,
    largest_connected_component,
    make_phantom,
    normalize,
    preprocess_volume,
    uncrop,
)

DPI = 80


def _show(ax, image, title, **kwargs) -> None:  # type: ignore[no-untyped-def]
    ax.imshow(image, cmap="gray", interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def _contours(ax, labels) -> None:  # type: ignore[no-untyped-def]
    ax.contour(labels >= 1, [0.5], colors="lime", linewidths=0.8)
    if (labels == 2).any():
        ax.contour(labels == 2, [0.5], colors="red", linewidths=0.8)


def _save(fig, out: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    fig.tight_layout()
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)
    print(f"wrote {out / name}")


def fig_phantom(vol, lab, spacing, k, out: Path) -> None:  # type: ignore[no-untyped-def]
    liver_window = {"vmin": -160, "vmax": 240}  # W400 / L40, the usual abdomen window
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6))
    _show(axes[0], vol[k], f"axial slice {k}, HU [-1000, 1000]", vmin=-1000, vmax=1000)
    _show(axes[1], vol[k], "same slice, HU [-160, 240]", **liver_window)
    _show(axes[2], vol[k], "labels: liver (green), tumour (red)", **liver_window)
    _contours(axes[2], lab[k])
    row = int(np.argmax((lab == 2).sum(axis=(0, 2)))) if (lab == 2).any() else vol.shape[1] // 2
    _show(
        axes[3],
        vol[:, row, :],
        f"coronal row {row} (superior at top)",
        origin="lower",
        aspect=spacing[0] / spacing[2],
        **liver_window,
    )
    _contours(axes[3], lab[:, row, :])
    _save(fig, out, "data_phantom.png")


def fig_window(vol, k, out: Path) -> None:  # type: ignore[no-untyped-def]
    windowed = hu_window(vol[k])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
    _show(axes[0], vol[k], "before: raw HU (full range)")
    _show(axes[1], windowed, "after: hu_window [-100, 400] -> uint8")
    axes[2].hist(vol[k].ravel(), bins=200, range=(-1100, 1100), color="0.4", log=True)
    axes[2].axvspan(-100, 400, color="tab:orange", alpha=0.3, label="window")
    axes[2].set_xlabel("HU")
    axes[2].set_title("slice histogram", fontsize=10)
    axes[2].legend()
    _save(fig, out, "data_hu_window.png")


def fig_clahe(vol, k, out: Path) -> None:  # type: ignore[no-untyped-def]
    windowed = hu_window(vol[k])
    equalised = clahe(windowed)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
    _show(axes[0], windowed, "before: windowed")
    _show(axes[1], equalised, "after: CLAHE (clip 4, 8 x 8 tiles)")
    body = windowed > 0
    axes[2].hist(windowed[body], bins=64, range=(0, 255), alpha=0.6, label="windowed")
    axes[2].hist(equalised[body], bins=64, range=(0, 255), alpha=0.6, label="CLAHE")
    axes[2].set_title("grey levels of non-black pixels", fontsize=10)
    axes[2].legend()
    _save(fig, out, "data_clahe.png")


def fig_normalize(vol, k, out: Path) -> None:  # type: ignore[no-untyped-def]
    equalised = clahe(hu_window(vol[k]))
    minmax, zscore = normalize(equalised), normalize(equalised, mode="zscore")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
    _show(axes[0], equalised, "before: CLAHE uint8 [0, 255]")
    axes[0].images[0].set_clim(0, 255)
    _show(axes[1], minmax, "after: normalize minmax -> [0, 1]", vmin=0, vmax=1)
    axes[2].hist(minmax.ravel(), bins=64, alpha=0.6, label="minmax", log=True)
    axes[2].hist(zscore.ravel(), bins=64, alpha=0.6, label="zscore", log=True)
    axes[2].set_title("value distributions", fontsize=10)
    axes[2].legend()
    _save(fig, out, "data_normalize.png")


def fig_roi(vol, lab, k, out: Path) -> None:  # type: ignore[no-untyped-def]
    image = clahe(hu_window(vol))
    size = (320, 320)  # no smaller than the box, so nearest uncrop is exact
    crop, roi = crop_to_roi(image, lab > 0, margin=(1, 8, 8), size=size)
    crop_lab, _ = crop_to_roi(lab, lab > 0, margin=(1, 8, 8), size=size, mode="nearest")
    back = uncrop(crop_lab, roi, mode="nearest")
    kk = k - roi.bbox[0][0]
    (y0, y1), (x0, x1) = roi.bbox[1], roi.bbox[2]
    masked = np.where(crop_lab[kk] > 0, crop[kk], 0)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    _show(axes[0], image[k], "before: slice with the liver box + margin")
    axes[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow"))
    _show(axes[1], crop[kk], f"crop_to_roi: {y1 - y0} x {x1 - x0} -> {size[0]} x {size[1]}")
    _contours(axes[1], crop_lab[kk])
    _show(axes[2], masked, "tumour-stage input: outside liver = 0")
    _show(axes[3], image[k], f"uncrop of the label crop: {int((back != lab).sum())} voxels differ")
    _contours(axes[3], back[k])
    _save(fig, out, "data_roi_crop.png")


def fig_darkness(vol, lab, spacing, k, out: Path) -> None:  # type: ignore[no-untyped-def]
    tumour = Preprocessing(hu_window=(-50.0, 250.0), clahe=False)  # the example's
    image = preprocess_volume(vol, preprocessing=tumour)[k]
    liver = lab[k] > 0
    (y0, y1), (x0, x1) = (np.flatnonzero(liver.any(axis=a))[[0, -1]] for a in (1, 0))
    box = (slice(max(0, y0 - 8), y1 + 9), slice(max(0, x0 - 8), x1 + 9))
    sigmas = (3.5 / spacing[1], 12.0 / spacing[1])  # 3.5 and 12 mm at this phantom's pixels
    masked = np.where(liver, image, 0)[box]
    dark = darkness_channel(masked, liver[box], sigmas)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    _show(axes[0], masked, "tumour-stage input (window -50..250, outside liver = 0)")
    _contours(axes[0], lab[k][box])
    shown = axes[1].imshow(dark, cmap="magma", vmin=0, vmax=2)
    axes[1].set_title("darkness_channel (1.0 = 30 HU below the liver around)", fontsize=9)
    axes[1].axis("off")
    _contours(axes[1], lab[k][box])
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    _save(fig, out, "data_darkness.png")


def fig_lcc(lab, out: Path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    noisy = lab > 0
    blobs = ndimage.binary_dilation(rng.random(lab.shape) > 0.99999, iterations=3)
    noisy = noisy | blobs
    clean = largest_connected_component(noisy)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.9))
    n_blobs = int(ndimage.label(blobs)[1])
    _show(axes[0], noisy.max(axis=0), f"before: mask + {n_blobs} stray blobs (projection)")
    _show(axes[1], clean.max(axis=0), "after: largest_connected_component (3D)")
    _save(fig, out, "data_lcc.png")


def fig_augment(vol, lab, k, out: Path) -> None:  # type: ignore[no-untyped-def]
    image = normalize(clahe(hu_window(vol[k])))[None]
    aug = SliceAugment(rotation_p=1.0)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    _show(axes[0], image[0], "original")
    _contours(axes[0], lab[k])
    for i, ax in enumerate(axes[1:]):
        a_img, a_lab = aug(image, lab[k].astype(np.int64), np.random.default_rng([0, 0, i]))
        _show(ax, a_img[0], f"SliceAugment, seed (0, 0, {i})", vmin=0, vmax=1.2)
        _contours(ax, a_lab)
    _save(fig, out, "data_augment.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    vol, lab, spacing = make_phantom(args.seed, (100, 512, 512))
    tumour, liver = (lab == 2).sum(axis=(1, 2)), (lab == 1).sum(axis=(1, 2))
    k = int(np.argmax(tumour if tumour.any() else liver))  # the slice with most tumour
    fig_phantom(vol, lab, spacing, k, args.out)
    fig_window(vol, k, args.out)
    fig_clahe(vol, k, args.out)
    fig_normalize(vol, k, args.out)
    fig_roi(vol, lab, k, args.out)
    fig_darkness(vol, lab, spacing, k, args.out)
    fig_lcc(lab, args.out)
    fig_augment(vol, lab, k, args.out)


if __name__ == "__main__":
    main()
