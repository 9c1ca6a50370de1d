"""``featsup evaluate``: LiTS metrics of a folder of predictions against the truth."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from featsup.metrics import UNDEFINED_CONVENTION, LitsMetrics, json_safe, summary_table

_NIFTI = re.compile(r"\.nii(\.gz)?$")


def _case_key(path: Path) -> str:
    return _NIFTI.sub("", path.name)


def _index(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(f"--{what}: expected a folder, got {str(folder)!r}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _NIFTI.search(p.name))
    segmentations = [p for p in files if p.name.startswith("segmentation-")]
    chosen = segmentations or files
    index: dict[str, Path] = {}
    for path in chosen:
        key = _case_key(path)
        if key in index:
            raise ValueError(f"--{what}: expected one file per case, got {index[key]} and {path}")
        index[key] = path
    if not index:
        raise ValueError(f"--{what}: expected .nii or .nii.gz files in {folder}, found none")
    return index


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along processing order (D, H, W): its axes are world S, P, L in turn."""
    from nibabel.orientations import io_orientation  # featsup[data], as load_segmentation

    ornt = io_orientation(affine)
    zooms = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    spacing = [0.0, 0.0, 0.0]
    for disk_axis, (world_axis, _) in enumerate(ornt):
        spacing[2 - int(world_axis)] = float(zooms[disk_axis])
    return spacing[0], spacing[1], spacing[2]


def _pair(pred_path: Path, truth_path: Path) -> tuple[np.ndarray, np.ndarray, tuple]:
    from featsup.data import load_segmentation

    truth, truth_affine = load_segmentation(truth_path)
    pred, pred_affine = load_segmentation(pred_path)
    if pred.shape != truth.shape or not np.allclose(pred_affine, truth_affine, atol=1e-3):
        raise ValueError(
            f"{pred_path}: expected the voxel grid of {truth_path.name} (shape {truth.shape}), "
            f"got shape {pred.shape} and another affine; fix: predict on that very volume"
        )
    return pred, truth, _spacing(truth_affine)


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _print_tables(records: list[dict[str, Any]], summaries: dict[str, dict[str, Any]]) -> None:
    print("| case | liver Dice | liver ASSD mm | tumour Dice | tumour ASSD mm | note |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in records:
        liver, tumour = r["liver"], r["tumour"]
        note = "tumour-free" if tumour["target_voxels"] == 0 else ""
        print(
            f"| {r['case']} | {_fmt(liver['dice'])} | {_fmt(liver.get('assd', math.nan), 2)} | "
            f"{_fmt(tumour['dice'])} | {_fmt(tumour.get('assd', math.nan), 2)} | {note} |"
        )
    print("\n" + summary_table(summaries))


def run_evaluate(args: argparse.Namespace) -> int:
    """``featsup evaluate``: returns 0, or 1 when a case could not be scored."""
    truth = _index(args.truth, "truth")
    predictions = _index(args.prediction, "prediction")
    scores = LitsMetrics(surface=not args.no_surface)
    records: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    for key, truth_path in sorted(truth.items()):
        if key not in predictions:
            failed.append((key, f"no prediction for {truth_path.name} in {args.prediction}"))
            continue
        try:
            pred, gt, spacing = _pair(predictions[key], truth_path)
        except ValueError as err:
            failed.append((key, str(err).splitlines()[0]))
            continue
        record = scores.update(pred, gt, spacing=spacing, case_id=key)
        record["spacing_mm"] = list(spacing)
        record["tumour_free"] = record["tumour"]["target_voxels"] == 0
        records.append(record)
    for key, why in failed:
        print(f"featsup evaluate: skipped {key}: {why}", file=sys.stderr)
    if not records:
        raise ValueError("--prediction: expected at least one case paired with the truth, got none")
    summaries = scores.compute()
    _print_tables(records, summaries)
    free = sum(r["tumour_free"] for r in records)
    print(f"\n{free} of {len(records)} case(s) are tumour-free. {UNDEFINED_CONVENTION}")
    extra = sorted(set(predictions) - set(truth))
    if extra:
        print(f"ignored {len(extra)} prediction(s) without a truth: {', '.join(extra[:5])}")
    if args.json is not None:
        report = {
            "cases": records,
            **summaries,
            "failed": [{"case": k, "reason": w} for k, w in failed],
            "conventions": UNDEFINED_CONVENTION,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(json_safe(report), indent=2))
        print(f"wrote {args.json}")
    return 1 if failed else 0
