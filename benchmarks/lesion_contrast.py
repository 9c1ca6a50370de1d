"""How well each preprocessing keeps lesions apart from the liver, on a run's own cases.

For every case of a finished example run's training and validation sets (its test cases
are never loaded), and for each named preprocessing: the voxel-wise separability of
tumour from liver, as the area under the ROC curve of one global intensity threshold
over the whole volume (0.5: indistinguishable, 1: every tumour voxel darker, or every one
brighter, than every liver voxel); liver voxels within 2 voxels of the liver's edge or a
tumour are left out. No model is involved: this asks what the input offers the model.

The paper's preprocessing (HU window, CLAHE with clip limit 4 on 8 x 8 tiles, min-max)
equalises each tile's histogram on its own: a tile filled by a lesion is stretched to the
same grey range as a tile of plain liver, and the liver's narrow histogram is stretched
with its noise. ``--figure`` draws one slice per preprocessing with the tumour outlined.

    python benchmarks/lesion_contrast.py outputs/run10_seed4 --json contrast.json \\
        --figure docs/images/lesion_contrast.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _example_run import example_split
from scipy import ndimage, stats

from featsup import data as fd
from featsup.data.preprocess import preprocess_volume

PREPROCESSINGS = {
    "window": fd.Preprocessing(clahe=False),
    "clahe 4, 8x8 (paper)": fd.Preprocessing(),
    "clahe 2, 4x4": fd.Preprocessing(clip_limit=2.0, tile_grid_size=(4, 4)),
}


def separability(image: np.ndarray, tumour: np.ndarray, liver: np.ndarray) -> float:
    """ROC area of one global threshold between ``tumour`` and ``liver`` voxels, >= 0.5."""
    u = stats.mannwhitneyu(image[tumour], image[liver], method="asymptotic").statistic
    area = float(u) / (tumour.sum() * liver.sum())
    return max(area, 1.0 - area)


def case_contrast(case: fd.LitsCase, max_liver_voxels: int = 50_000) -> dict | None:
    """Tumour voxels and the separability under each preprocessing; None without tumour."""
    loaded = fd.load_case(case)
    labels = np.asarray(loaded.labels)
    tumour = labels == 2
    if not tumour.any():
        return None
    liver = ndimage.binary_erosion(labels == 1, iterations=2) & ~ndimage.binary_dilation(
        tumour, iterations=2
    )
    keep = np.flatnonzero(liver)  # a fixed subsample: the test is O(n log n) in voxels
    keep = np.random.default_rng(0).choice(keep, min(len(keep), max_liver_voxels), replace=False)
    liver = np.zeros(labels.size, bool)
    liver[keep] = True
    volume, tumour = np.asarray(loaded.volume, np.float32), tumour.ravel()
    areas = {
        name: separability(preprocess_volume(volume, preprocessing=p).ravel(), tumour, liver)
        for name, p in PREPROCESSINGS.items()
    }
    return {"case": case.case_id, "tumour_voxels": int(tumour.sum()), "auc": areas}


def figure(case: fd.LitsCase, path: Path) -> None:
    """The slice with the most tumour, under each preprocessing, tumour outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = fd.load_case(case)
    labels, volume = np.asarray(loaded.labels), np.asarray(loaded.volume, np.float32)
    k = int(np.argmax((labels == 2).sum(axis=(1, 2))))
    rows, cols = np.nonzero(labels[k] > 0)
    box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    fig, axes = plt.subplots(1, len(PREPROCESSINGS), figsize=(4 * len(PREPROCESSINGS), 4))
    for ax, (name, p) in zip(axes, PREPROCESSINGS.items(), strict=True):
        image = preprocess_volume(volume[k : k + 1], preprocessing=p)[0]
        ax.imshow(image[box], cmap="gray")
        ax.contour((labels[k] == 2)[box], levels=[0.5], colors="tab:red", linewidths=0.8)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(f"case {case.case_id}, slice {k}: the liver's box, tumour outlined")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="a finished example run's --out")
    p.add_argument("--json", type=Path)
    p.add_argument("--figure", type=Path, help="PNG of the largest validation tumour's slice")
    args = p.parse_args(argv)
    split = example_split(args.run)
    records = []
    print("| set | case | tumour voxels | " + " | ".join(PREPROCESSINGS) + " |")
    print("|---|---|---|" + "---|" * len(PREPROCESSINGS))
    for part in ("train", "val"):  # never the test cases
        for case in split[part]:
            record = case_contrast(case)
            if record is None:
                continue
            records.append({"set": part, **record})
            aucs = " | ".join(f"{a:.3f}" for a in record["auc"].values())
            print(f"| {part} | {case.case_id} | {record['tumour_voxels']} | {aucs} |", flush=True)
    medians = {n: float(np.median([r["auc"][n] for r in records])) for n in PREPROCESSINGS}
    print("| median | | | " + " | ".join(f"{m:.3f}" for m in medians.values()) + " |")
    if args.figure:
        val = [r for r in records if r["set"] == "val"]
        largest = max(val, key=lambda r: r["tumour_voxels"])["case"]
        figure(next(c for c in split["val"] if c.case_id == largest), args.figure)
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "cases": records,
                                         "median": medians}, indent=2))  # fmt: skip
    return records


if __name__ == "__main__":
    main()
