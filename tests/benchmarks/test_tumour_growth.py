"""benchmarks/tumour_growth.py: a tiny finished 'run' end to end, both sides scored by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from _cascades import finished_phantom_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
pytest.importorskip("nibabel")
pytest.importorskip("cv2")
tumour_growth = pytest.importorskip("tumour_growth")

SHAPE = [8, 48, 48]


def test_a_finished_run_scored_with_and_without_growth(tmp_path: Path) -> None:
    from featsup import data as fd
    from featsup.postprocess import grow_dark_tumours

    folder = tmp_path / "run"
    fd.write_phantom_dataset(folder / "phantom", 6, shape=SHAPE, seed=70_001)
    finished_phantom_run(folder, SHAPE, seed=70_001)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["settings"].update(tumour_criterion="global", seed=0, train_seed=None, cases=6)
    metrics["split"]["train"] = ["0", "3", "4", "5"]  # true and false components to learn
    (folder / "metrics.json").write_text(json.dumps(metrics))
    work, out = str(tmp_path / "work"), tmp_path / "growth.json"
    flags = ["--fresh", "3", "--extra", "1", "--work", work, "--cases", "4", "--steps", "5"]
    report = tumour_growth.main([str(folder), *flags, "--min-voxels", "1", "--json", str(out)])
    run = report["runs"][str(folder)]
    assert run["held_out"] == ["5001", "5002"]  # validation_size.py's held-out cases
    assert json.loads(out.read_text())["runs"][str(folder)]["held_out"] == run["held_out"]
    assert run["filter"]["filter"] == "added" and run["filter"]["cases"] == 4
    assert run["grown/grid"]["grow"]["min_voxels"] == 1
    # both sides again by hand, from the same default cascade (the filter's seed fixed)
    cascade, _ = tumour_growth.default_cascade(folder, 4, 5)
    window = cascade.tumour_preprocessing.hu_window
    base: list[list[int]] = []
    grown: list[list[int]] = []
    for case in fd.find_cases(tmp_path / "work" / "run" / "fresh")[1:]:
        loaded = fd.load_case(case)
        truth = np.asarray(loaded.labels) == 2
        stage = cascade.liver_stage(np.asarray(loaded.volume))
        labels = cascade.tumour_stage(stage).labels
        more = grow_dark_tumours(labels, stage.image, window=window, min_voxels=1)
        for rows, pred in ((base, labels == 2), (grown, more == 2)):
            rows.append([int((pred & truth).sum()), int(pred.sum()), int(truth.sum())])
    assert run["filter/grid"]["counts"] == base
    assert run["grown/grid"]["counts"] == grown
    assert all(g[1] >= b[1] for g, b in zip(grown, base, strict=True))  # growing only adds
    # components too small to grow: the arm is the baseline
    same = tumour_growth.main([str(folder), *flags, "--min-voxels", str(10**9)])
    assert same["runs"][str(folder)]["grown/grid"]["counts"] == base
    # a run with no component to learn from keeps no filter, as the example does
    metrics["split"]["train"] = ["0"]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    none = tumour_growth.main([str(folder), *flags, "--cases", "1"])["runs"][str(folder)]
    assert none["filter"]["filter"] == "none" and "targets" in none["filter"]["error"]
    with pytest.raises(SystemExit):
        tumour_growth.main([str(folder), *flags, "--iterations", "0"])
