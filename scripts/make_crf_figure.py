"""Before / after picture of the dense CRF on a phantom slice, and the quality numbers.

Writes ``docs/images/crf_before_after.png`` and prints (``--json``: writes) the figures
quoted in ``docs/crf.md``: Dice of a degraded liver / tumour prediction before and after
the CRF (the stage's featsup preset, "liver" or "tumour", and the Christ et al. 2016
preset) and the agreement of the ``torch`` and ``pydensecrf`` backends, on held-out
phantom cases: seeds 6000-6005 at the cascade example's shape (48, 256, 256). The presets
were chosen by ``scripts/tune_crf_presets.py`` on seeds 5000-5003; neither range meets
the example's cases (seeds 0-19) or the variants benchmark (1000-1011). The prediction
model and the slice sampling below are shared with that script.

Usage:
    python scripts/make_crf_figure.py [--seeds 6000 ... 6005] [--json crf_quality.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from featsup.data import hu_window, make_phantom
from featsup.postprocess import CRF_PRESETS, dense_crf

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "crf_before_after.png"
#: phantom shape of the cascade example on the CPU (about 5.2 x 1.4 x 1.4 mm voxels).
SHAPE = (48, 256, 256)
HELD_OUT_SEEDS = list(range(6000, 6006))
#: prediction models: (boundary shift px, softness px, noise) for the liver, and tumours.
MODELS = {"liver A": (4.0, 3.0, 0.5), "liver B": (2.0, 6.0, 1.0), "tumour": (1.5, 1.5, 0.5)}
#: slices sampled per case, and the smallest tumour cross-section sampled (pixels).
LIVER_SLICES, TUMOUR_SLICES, MIN_TUMOUR_PX = 6, 5, 20


def liver_slices(liver: np.ndarray) -> list[int]:
    """Up to ``LIVER_SLICES`` slices spread evenly over the liver's extent (small ends too)."""
    z = np.flatnonzero(liver.any((1, 2)))
    return [int(i) for i in z[1 :: max(1, len(z) // LIVER_SLICES)][:LIVER_SLICES]]


def tumour_slices(labels: np.ndarray) -> list[int]:
    """Up to ``TUMOUR_SLICES`` slices spread over those with >= ``MIN_TUMOUR_PX`` tumour."""
    z = np.flatnonzero((labels == 2).sum((1, 2)) >= MIN_TUMOUR_PX)
    return [int(i) for i in z[:: max(1, len(z) // TUMOUR_SLICES)][:TUMOUR_SLICES]]


def one_thread() -> None:
    """One torch thread: ``dense_crf``'s input checks run outside its one-thread section.

    On the shared 2-core machine they took 2/3 of a 256 x 256 slice's time with two
    threads (190 ms per slice against 50 ms with one, 10 iterations).
    """
    torch.set_num_threads(1)


def degrade(truth: np.ndarray, seed: int, shift: float, soft: float, noise: float) -> np.ndarray:
    """Network-like prediction: displaced, blurred and noisy boundary, in-plane."""
    rng = np.random.default_rng(seed)
    signed = ndimage.distance_transform_edt(truth) - ndimage.distance_transform_edt(~truth)
    sigma = (0.0,) * (truth.ndim - 2) + (12.0, 12.0)
    offset = ndimage.gaussian_filter(rng.normal(size=truth.shape), sigma)
    grain = ndimage.gaussian_filter(rng.normal(size=truth.shape), [s / 6 for s in sigma])
    logit = (signed + offset * shift / offset.std()) / soft + grain * noise / grain.std()
    fg = 1.0 / (1.0 + np.exp(-logit))
    return np.stack([1.0 - fg, fg]).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def backends() -> list[str]:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        print('pydensecrf is not installed (pip install "featsup[crf]"): torch backend only')
        return ["torch"]
    return ["torch", "pydensecrf"]


def evaluate_slices(seeds: list[int], names: list[str]) -> list[dict]:
    """Per slice, model and backend: Dice before / after both presets, label maps."""
    rows = []
    for seed in seeds:
        volume, labels, _ = make_phantom(seed, SHAPE)
        image = hu_window(volume).astype(np.float32)
        liver = labels >= 1
        for z in liver_slices(liver):
            for model in ("liver A", "liver B"):
                probs = degrade(liver[z], 1000 * seed + z, *MODELS[model])
                rows.append(_one(seed, z, model, probs, image[z], liver[z], None, names))
        # tumour stage: tumour vs liver inside the liver
        for z in tumour_slices(labels):
            tumour = labels[z] == 2
            probs = degrade(tumour, 1000 * seed + z, *MODELS["tumour"])
            rows.append(_one(seed, z, "tumour", probs, image[z], tumour, liver[z], names))
    return rows


def _one(seed, z, model, probs, image, truth, mask, names) -> dict:
    inside = np.ones_like(truth) if mask is None else mask
    row = {
        "seed": seed,
        "slice": int(z),
        "model": model,
        "before": dice((probs.argmax(0) == 1) & inside, truth),
    }
    labels = {}
    presets = {"featsup": "tumour" if model == "tumour" else "liver", "christ2016": "christ2016"}
    for backend in names:
        for column, preset in presets.items():
            out = dense_crf(probs, image, mask=mask, backend=backend, **CRF_PRESETS[preset])
            labels[backend, column] = out.argmax(0) == 1
            row[f"{column} {backend}"] = dice(labels[backend, column] & inside, truth)
    if len(names) == 2:
        for column in presets:
            differ = labels["torch", column] != labels["pydensecrf", column]
            row[f"disagree % {column}"] = 100.0 * float(differ[inside].mean())
    return row


def evaluate_volumes(seeds: list[int], names: list[str]) -> list[dict]:
    """3D CRF on the liver's bounding box (10 slices) at the phantom's spacing."""
    rows = []
    for seed in seeds:
        volume, labels, spacing = make_phantom(seed, SHAPE)
        liver = labels >= 1
        zs, ys, xs = (np.flatnonzero(liver.any(axes)) for axes in ((1, 2), (0, 2), (0, 1)))
        mid = (zs[0] + zs[-1]) // 2
        box = (slice(mid - 5, mid + 5), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        image = hu_window(volume[box]).astype(np.float32)
        probs = degrade(liver[box], seed, *MODELS["liver A"])
        row = {
            "seed": seed,
            "shape": list(image.shape),
            "before": dice(probs.argmax(0) == 1, liver[box]),
        }
        maps = {}
        for backend in names:
            out = dense_crf(
                probs, image, mode="3d", spacing=spacing, backend=backend, **CRF_PRESETS["liver"]
            )
            maps[backend] = out.argmax(0) == 1
            row[f"featsup {backend}"] = dice(maps[backend], liver[box])
        if len(names) == 2:
            row["disagree %"] = 100.0 * float((maps["torch"] != maps["pydensecrf"]).mean())
        rows.append(row)
    return rows


def summary(slices: list[dict], volumes: list[dict]) -> None:
    keys = [k for k in slices[0] if k not in ("seed", "slice", "model")]
    print("\nslices (mean over slices; Dice, disagreement in % of voxels)")
    print("| model | n | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 2))
    for model in MODELS:
        sel = [r for r in slices if r["model"] == model]
        if sel:
            vals = " | ".join(f"{statistics.mean(r[k] for r in sel):.4f}" for k in keys)
            print(f"| {model} | {len(sel)} | {vals} |")
    worst = [k for k in keys if k.startswith("disagree")]
    for k in worst:
        print(f"largest {k} on one slice: {max(r[k] for r in slices):.4f}")
    print("\n3D liver boxes")
    for r in volumes:
        print(r)


def figure(seed: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volume, labels, _ = make_phantom(seed, SHAPE)
    liver = labels >= 1
    z = int(np.argmax(liver.sum((1, 2)) * (np.arange(len(liver)) < 0.6 * len(liver))))
    image = hu_window(volume[z]).astype(np.float32)
    probs = degrade(liver[z], seed, *MODELS["liver A"])
    panels = [
        ("CT slice and truth", None, liver[z]),
        ("prediction (p liver)", probs[1], probs.argmax(0) == 1),
    ]
    for preset in ("liver", "christ2016"):
        out = dense_crf(probs, image, backend="torch", **CRF_PRESETS[preset])
        panels.append((f"CRF, {preset!r} preset", out[1], out.argmax(0) == 1))
    rows, cols = np.flatnonzero(liver[z].any(1)), np.flatnonzero(liver[z].any(0))
    view = (slice(max(rows[0] - 30, 0), rows[-1] + 31), slice(max(cols[0] - 30, 0), cols[-1] + 31))
    image, truth = image[view], liver[z][view]
    panels = [(t, None if o is None else o[view], m[view]) for t, o, m in panels]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.8))
    for ax, (title, overlay, mask) in zip(axes, panels, strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        if overlay is not None:
            ax.imshow(np.ma.masked_less(overlay, 0.02), cmap="autumn", alpha=0.35, vmin=0, vmax=1)
        ax.contour(truth, levels=[0.5], colors="lime", linewidths=0.8)
        if overlay is not None:
            ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        d = "" if overlay is None else f"\nDice {dice(mask, truth):.3f}"
        ax.set_title(title + d, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"phantom seed {seed}, slice {z}: truth in green, labels in red", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=HELD_OUT_SEEDS)
    parser.add_argument("--json", default=None, help="write the numbers to this file")
    parser.add_argument("--figure-only", action="store_true")
    args = parser.parse_args()
    one_thread()
    figure(args.seeds[0], OUT)
    if args.figure_only:
        return
    names = backends()
    slices = evaluate_slices(args.seeds, names)
    volumes = evaluate_volumes(args.seeds, names)
    summary(slices, volumes)
    if args.json:
        Path(args.json).write_text(json.dumps({"slices": slices, "volumes": volumes}, indent=2))


if __name__ == "__main__":
    main()
