"""End-to-end: the cascade example on a tiny phantom, and its error messages."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from featsup import data as fd

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lits_cascade.py"
TINY = [
    "--cases", "5", "--phantom-shape", "12", "64", "64", "--size", "32", "--tumour-size", "32",
    "--steps", "3", "--teacher-steps", "2", "--widths", "4", "8", "8", "16", "16",
    "--batch-size", "2", "--val-cases", "3", "--extra-train-cases", "1", "--device", "cpu",
    "--tumour-filter-cases", "0",  # its own test below: 800 steps would cost 30 s a run
]  # fmt: skip


@pytest.fixture(scope="module")
def example() -> ModuleType:
    pytest.importorskip("nibabel")
    pytest.importorskip("cv2")
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("lits_cascade", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lits_cascade"] = module
    spec.loader.exec_module(module)
    return module


def _check_recorded_metrics(out: Path, saved: dict) -> None:
    """The recorded numbers are the ones the saved predictions score against the truth."""
    import nibabel as nib

    # recomputed here by hand from the files (per case, case mean and pooled voxels)
    pooled = {"liver": [0, 0], "tumour": [0, 0]}
    for record in saved["cases"]:
        case_id = record["case"]
        pred = np.asarray(nib.load(out / "predictions" / f"segmentation-{case_id}.nii.gz").dataobj)
        truth = np.asarray(nib.load(out / "phantom" / f"segmentation-{case_id}.nii.gz").dataobj)
        for stage, p, t in (("liver", pred > 0, truth > 0), ("tumour", pred == 2, truth == 2)):
            inter, total = int((p & t).sum()), int(p.sum() + t.sum())
            union = total - inter
            pooled[stage][0] += inter
            pooled[stage][1] += total
            assert record[stage]["dice"] == pytest.approx(2 * inter / total if total else 1.0)
            assert record[stage]["voe"] == pytest.approx(1 - inter / union if union else 0.0)
        assert int((truth > 0).sum()) > 0  # every test case has a liver to score
    for stage in ("liver", "tumour"):
        per_case = [record[stage]["dice"] for record in saved["cases"]]
        assert saved[stage]["dice_per_case"] == pytest.approx(np.mean(per_case))
        inter, total = pooled[stage]
        assert saved[stage]["dice_global"] == pytest.approx(2 * inter / total if total else 1.0)


@pytest.mark.slow
def test_tiny_cascade_runs_end_to_end(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import nibabel as nib

    out = tmp_path / "run"
    metrics = example.main([*TINY, "--extra-val-cases", "1", "--out", str(out)])
    saved = json.loads((out / "metrics.json").read_text())
    # the extra validation case (id 6, after the training-only one) joins the choices only
    assert saved["split"]["val_extra"] == ["6"]
    chosen_on = capsys.readouterr().out.split("heads on validation cases ")[1].split("]")[0]
    assert sorted(ast.literal_eval(chosen_on + "]")) == sorted([*saved["split"]["val"], "6"])
    # both stages train as UN-DS (chosen on validation), so no teacher is trained
    assert (saved["variant"], saved["tumour_variant"]) == ("UN-DS", "UN-DS")
    assert not (out / "teachers").exists()
    assert saved["phantom_seed"] == 0  # the default --seed 0: phantom seeds 0..cases-1
    assert set(saved["dice_per_head"]["liver"]) == {"x0_1", "x0_2", "x0_3", "x0_4"}
    for key in ("dice_per_case", "dice_global", "voe", "rvd", "assd", "msd"):
        assert key in saved["liver"] and key in saved["tumour"]
        assert saved["liver"][key] is None or np.isfinite(saved["liver"][key])
    assert 0.0 <= saved["liver"]["dice_per_case"] <= 1.0
    split = saved["split"]
    assert len(split["val"]) == 3 and split["test"] and split["train"]
    everything = split["train"] + split["val"] + split["test"]
    assert len(set(everything)) == len(everything) == 6  # three disjoint parts, all cases
    # the extra phantom case (id 5, the phantom seed after the split's) trains only
    assert "5" in split["train"] and (out / "phantom_train" / "volume-5.nii.gz").exists()
    assert not (out / "phantom" / "volume-5.nii.gz").exists()
    choice = saved["chosen_on_validation"]
    assert choice["liver_head"] in {1, 2, 3, 4} and choice["tumour_head"] in {1, 2, 3, 4}
    assert set(choice["val_dice_by_crf"]) == {"none", "liver", "both"}
    assert choice["crf"] in {"none", "liver", "both"}
    best = max(choice["val_dice_per_head"]["liver"])
    assert choice["val_dice_per_head"]["liver"][choice["liver_head"] - 1] >= best - 0.005
    assert metrics["seconds"]["total"] > 0
    assert isinstance(saved["settings"]["kept_freed_memory"], bool)
    for case_id in split["test"]:
        pred = nib.load(out / "predictions" / f"segmentation-{case_id}.nii.gz")
        source = nib.load(out / "phantom" / f"volume-{case_id}.nii.gz")
        np.testing.assert_allclose(pred.affine, source.affine)
        assert pred.shape == source.shape
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
        assert (out / "figures" / f"case-{case_id}.png").stat().st_size > 0
    assert [c["case"] for c in saved["cases"]] == split["test"]  # scored: test cases only
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    _check_recorded_metrics(out, saved)
    assert (out / "figures" / "curves_dice.png").exists()
    assert (out / "liver" / "best.pt").exists() and (out / "tumour" / "best.pt").exists()
    # the saved cascade, loaded with no training code, writes the same labels again
    from featsup.data import find_cases, load_case, save_prediction
    from featsup.inference import Cascade

    cascade = Cascade.load(out / "cascade.pt", device="cpu")
    assert (cascade.tumour_scope, cascade.tumour_min_inside) == ("roi", 0.5)
    first = {c.case_id: c for c in find_cases(out / "phantom")}[split["test"][0]]
    save_prediction(cascade(load_case(first).volume).labels, first, tmp_path / "again.nii.gz")
    written = out / "predictions" / f"segmentation-{first.case_id}.nii.gz"
    np.testing.assert_array_equal(
        np.asarray(nib.load(tmp_path / "again.nii.gz").dataobj),
        np.asarray(nib.load(written).dataobj),
    )
    assert len(saved["chosen_on_validation"]["head_table"]) == 8  # 4 heads x 2 stages
    assert cascade.tumour_threshold == choice["tumour_threshold"]  # as chosen, so stored
    # each stage keeps its own preprocessing: CLAHE for the liver, not for the tumours
    assert (cascade.preprocessing, cascade.tumour_preprocessing) == tuple(
        example.PREPROCESSING[s] for s in ("liver", "tumour")
    )
    assert cascade.preprocessing.clahe and not cascade.tumour_preprocessing.clahe
    grid = choice["val_tumour_dice_by_threshold"]
    row = grid[str(choice["tumour_threshold"])]
    assert row[str(choice["tumour_min_voxels"])] == max(row.values())
    assert max(row.values()) >= max(d for r in grid.values() for d in r.values()) - 0.005
    # --variant ES-DS (the paper's liver stage) trains the liver teacher; the next run with
    # the same data and recipe reuses it, and an ES-DS tumour stage (here 2.5D) trains its own
    capsys.readouterr()
    example.main([*TINY, "--out", str(out), "--crf", "none", "--head", "2", "--variant", "es-ds",
                  "--no-keep-freed-memory"])  # fmt: skip
    printed = capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["settings"]["kept_freed_memory"] is False
    assert "liver stage: ES-DS" in printed and (out / "teachers" / "liver.pt").exists()
    assert "reusing the liver teacher" not in printed
    example.main([*TINY, "--out", str(out), "--crf", "none", "--head", "2", "--tumour-context",
                  "1", "--variant", "es-ds", "--tumour-variant", "es-ds",
                  "--tumour-lesion-balance", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "reusing the liver teacher" in printed and "reusing the tumour teacher" not in printed
    assert "tumour stage: ES-DS" in printed and (out / "teachers" / "tumour.pt").exists()
    resaved = json.loads((out / "metrics.json").read_text())
    assert (resaved["variant"], resaved["tumour_variant"]) == ("ES-DS", "ES-DS")
    assert resaved["settings"]["tumour_lesion_balance"] == 1.0
    flanked = Cascade.load(out / "cascade.pt", device="cpu")
    assert (flanked.context, flanked.tumour_context) == (0, 1)
    assert (flanked.liver_model.in_channels, flanked.tumour_model.in_channels) == (1, 3)
    again = json.loads((out / "metrics.json").read_text())["chosen_on_validation"]
    assert (again["liver_head"], again["tumour_head"], again["crf"]) == (2, 2, "none")


@pytest.mark.slow
def test_tiny_cascade_with_a_3d_tumour_stage(example: ModuleType, tmp_path: Path) -> None:
    import nibabel as nib

    from featsup.data import find_cases, load_case, save_prediction
    from featsup.inference import Cascade
    from featsup.training import load_model

    out = tmp_path / "run3d"
    example.main([*TINY, "--dims", "3", "--patch", "8", "32", "32", "--tumour-variant", "ES-DS",
                  "--out", str(out)])  # fmt: skip
    saved = json.loads((out / "metrics.json").read_text())
    assert (saved["settings"]["dims"], saved["settings"]["patch"]) == (3, [8, 32, 32])
    for stage in ("liver", "tumour"):
        assert set(saved["dice_per_head"][stage]) == {"x0_1", "x0_2", "x0_3", "x0_4"}
        assert len(saved["chosen_on_validation"]["val_dice_per_head"][stage]) == 4
        for key in ("dice_per_case", "dice_global", "voe", "rvd"):
            assert saved[stage][key] is None or np.isfinite(saved[stage][key])
    assert saved["chosen_on_validation"]["crf"] in {"none", "liver", "both"}
    _check_recorded_metrics(out, saved)
    tumour = load_model(out / "tumour" / "best.pt", part="student")
    teacher = load_model(out / "teachers" / "tumour.pt")
    assert tumour.spatial_dims == teacher.spatial_dims == 3  # trained in 3D, with a 3D teacher
    assert load_model(out / "liver" / "best.pt").spatial_dims == 2  # UN-DS: no student part
    # phantom spacing 5.2 x 1.4 x 1.4 mm: slices are kept whole at the first pooling
    assert tumour.pooling[0] == (1, 2, 2) and tumour.pooling == teacher.pooling
    cascade = Cascade.load(out / "cascade.pt", device="cpu")
    assert cascade.tumour_patch == (8, 32, 32) and cascade.tumour_model.spatial_dims == 3
    assert cascade.tumour_preprocessing.hu_window == (-100, 400)  # 3D: the paper's window
    case_id = saved["split"]["test"][0]
    case = {c.case_id: c for c in find_cases(out / "phantom")}[case_id]
    save_prediction(cascade(load_case(case).volume).labels, case, tmp_path / "again.nii.gz")
    written = nib.load(out / "predictions" / f"segmentation-{case_id}.nii.gz")
    again = nib.load(tmp_path / "again.nii.gz")
    np.testing.assert_array_equal(np.asarray(again.dataobj), np.asarray(written.dataobj))


def test_bad_flags_give_clear_messages(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        example.parse_args(["--cases", "2"])
    assert "--cases: expected at least 7" in capsys.readouterr().err  # 5 validation + 2
    with pytest.raises(SystemExit):
        example.parse_args(["--val-cases", "0"])
    assert "--val-cases: expected at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(["--data", str(tmp_path / "missing")])
    assert "expected a LiTS folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(["--variant", "XX-DS"])
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-variant", "ES"])
    with pytest.raises(SystemExit):
        example.parse_args(["--mask-dilation", "-1"])
    assert "--mask-dilation: expected pixels >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(["--seed", "-1"])
    assert "--seed: expected >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-context", "-1"])
    assert "--tumour-context: expected >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-hu-window", "250", "-50"])
    assert "--tumour-hu-window: expected LOW < HIGH" in capsys.readouterr().err
    args = example.parse_args(["--steps", "7"])
    assert (args.steps, args.tumour_steps) == (7, 7)  # --steps sets both stages
    assert example.parse_args(["--tumour-steps", "9"]).tumour_steps == 9
    four = example.parse_args(["--tumour-batch-size", "4"])
    assert (example.stage_batch("liver", four), example.stage_batch("tumour", four)) == (8, 4)
    assert example.stage_batch("tumour", example.parse_args([])) == 8  # --batch-size's
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-batch-size", "0"])
    assert "--tumour-batch-size: expected >= 1, got 0" in capsys.readouterr().err
    assert example.fixed_heads(example.parse_args([])) is None  # both chosen on validation
    mean = example.parse_args(["--tumour-head", "mean"])
    assert example.fixed_heads(mean) == (None, "mean")
    assert example.fixed_heads(example.parse_args(["--head", "2"])) == (2, 2)
    assert example.fixed_heads(example.parse_args(["--head", "2", "--tumour-head", "3"])) == (2, 3)
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-head", "all"])
    assert "--tumour-head: expected a head 1..d or 'mean', got 'all'" in capsys.readouterr().err
    two, three = (example.parse_args(["--dims", d, "--device", "cpu"]) for d in ("2", "3"))
    preset = example.PRESETS_3D["cpu"]
    assert (three.patch, three.patch_batch_size) == (preset["patch"], preset["patch_batch_size"])
    assert (three.tumour_steps, three.steps) == (preset["tumour_steps"], two.steps)
    assert (two.patch, two.tumour_steps) == (None, example.PRESETS["cpu"]["tumour_steps"])
    assert example.parse_args(["--dims", "3", "--steps", "7"]).tumour_steps == 7
    with pytest.raises(SystemExit):
        example.parse_args(["--liver-lesion-weight", "0"])
    assert "--liver-lesion-weight: expected > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-lesion-balance", "1.5"])
    assert "--tumour-lesion-balance: expected in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-contrast-balance", "2"])
    assert "--tumour-contrast-balance: expected in [0, 1]" in capsys.readouterr().err
    assert example.parse_args([]).tumour_crop is None  # whole slices by default
    for wrong in (["--tumour-crop", "0"], ["--tumour-crop", "200"],
                  ["--dims", "3", "--tumour-crop", "64"]):  # fmt: skip
        with pytest.raises(SystemExit):
            example.parse_args(wrong)
        assert "--tumour-crop: expected 1..--tumour-size" in capsys.readouterr().err
    plain, cropped = (example.parse_args(a) for a in ([], ["--tumour-crop", "64"]))
    assert example.stage_batch("tumour", cropped) == 4 * example.stage_batch("tumour", plain)
    assert example.stage_batch("liver", cropped) == plain.batch_size
    assert example.parse_args([]).tumour_augment == "full"
    with pytest.raises(SystemExit):
        example.parse_args(["--dims", "3", "--tumour-augment", "none"])
    assert "--tumour-augment: expected full with --dims 3" in capsys.readouterr().err
    assert example.parse_args([]).tumour_min_inside == 0.5  # chosen on validation
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-min-inside", "-0.5"])
    assert "--tumour-min-inside: expected a share in [0, 1]" in capsys.readouterr().err
    assert example.parse_args([]).tumour_init == "liver"  # transfer learning, paper 4.2.5
    assert example.parse_args(["--tumour-init", "none"]).tumour_init == "none"
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-init", "imagenet"])
    for preset in ("cpu", "cuda"):  # another device's recipe, whatever the device
        chosen = example.parse_args(["--device", "cpu", "--preset", preset])
        assert (chosen.size, chosen.steps) == tuple(example.PRESETS[preset][k]
                                                    for k in ("size", "steps"))  # fmt: skip


def test_each_seed_writes_its_own_phantom(example: ModuleType, tmp_path: Path) -> None:
    # --seed 1 once wrote phantom cases 1..N: all but one of them --seed 0's cases 0..N-1
    volumes = {}
    for seed in (0, 1):
        args = example.parse_args(
            [*TINY, "--phantom-shape", "8", "32", "32", "--seed", str(seed),
             "--out", str(tmp_path / f"seed{seed}")]
        )  # fmt: skip
        example.split_cases(args)
        folder = tmp_path / f"seed{seed}" / "phantom"
        volumes[seed] = [(folder / f"volume-{i}.nii.gz").read_bytes() for i in range(args.cases)]
    assert not set(volumes[0]) & set(volumes[1])
    assert json.loads((tmp_path / "seed1" / "phantom" / "phantom.json").read_text())[1] == 10_000


def test_extra_training_cases_are_the_phantoms_next_seeds(
    example: ModuleType, tmp_path: Path
) -> None:
    from featsup.data import load_case, make_phantom

    args = example.parse_args(
        [*TINY, "--phantom-shape", "8", "32", "32", "--extra-train-cases", "2", "--seed", "3",
         "--out", str(tmp_path)]
    )  # fmt: skip
    cases = example.split_cases(args)
    extra = [c for c in cases["train"] if int(c.case_id) >= args.cases]
    assert [c.case_id for c in extra] == ["5", "6"]
    held = {c.case_id for c in cases["val"] + cases["test"]}
    assert len(held) == 4 and max(map(int, held)) < args.cases  # val and test: the split's
    expected, _, _ = make_phantom(30_006, shape=(8, 32, 32))  # seed 3's phantom, case 6
    np.testing.assert_array_equal(load_case(extra[1]).volume, expected)
    assert example.parse_args([]).extra_train_cases == example.PRESETS["cpu"]["extra_train_cases"]
    assert example.parse_args(["--data", str(tmp_path)]).extra_train_cases == 0
    for wrong in (
        ["--data", str(tmp_path), "--extra-train-cases", "3"],
        ["--extra-train-cases", "-1"],
        ["--cases", "9990", "--extra-train-cases", "20"],
    ):
        with pytest.raises(SystemExit):
            example.parse_args(wrong)


def test_extra_validation_cases_follow_the_training_ones_and_only_join_the_choices(
    example: ModuleType, tmp_path: Path, monkeypatch
) -> None:
    from featsup.data import load_case, make_phantom

    args = example.parse_args(
        [*TINY, "--phantom-shape", "8", "32", "32", "--extra-train-cases", "2",
         "--extra-val-cases", "2", "--seed", "3", "--out", str(tmp_path)]
    )  # fmt: skip
    cases = example.split_cases(args)
    assert [c.case_id for c in cases["val_extra"]] == ["7", "8"]  # after 5 split + 2 training
    assert {c.case_id for c in cases["train"]}.isdisjoint(c.case_id for c in cases["val_extra"])
    assert len(cases["val"]) == 3 and max(int(c.case_id) for c in cases["val"]) < args.cases
    expected, _, _ = make_phantom(30_008, shape=(8, 32, 32))  # seed 3's phantom, case 8
    np.testing.assert_array_equal(load_case(cases["val_extra"][1]).volume, expected)
    # training validates on --val-cases' cases only; the choices after it see the extra too
    seen = {}
    monkeypatch.setattr(example.fd, "stage_datasets",
                        lambda stage, train, val, **kw: seen.setdefault(stage, val))  # fmt: skip
    example.datasets("liver", cases, args)
    assert [c.case_id for c in seen["liver"]] == [c.case_id for c in cases["val"]]
    assert example.parse_args([]).extra_val_cases == example.PRESETS["cpu"]["extra_val_cases"]
    assert example.parse_args(["--data", str(tmp_path)]).extra_val_cases == 0
    for wrong in (
        ["--data", str(tmp_path), "--extra-val-cases", "3"],
        ["--extra-val-cases", "-1"],
        ["--cases", "9990", "--extra-train-cases", "5", "--extra-val-cases", "6"],
    ):
        with pytest.raises(SystemExit):
            example.parse_args(wrong)


class _Stop(Exception):
    """Raised by the stub trainer of :func:`_trainer_options`: the stage stops there."""


def _trainer_options(example: ModuleType, monkeypatch) -> list[dict]:
    """Stub everything ``train_stage`` builds; the returned list collects the options each
    call hands the trainer, which then raises :class:`_Stop`."""
    from types import SimpleNamespace

    seen: list[dict] = []

    def trainer(model, train, val, **options):
        seen.append(options)
        raise _Stop

    monkeypatch.setattr(example, "datasets", lambda stage, cases, args: ([0], [0]))
    student = SimpleNamespace(spatial_dims=2, in_channels=1, num_classes=2)
    monkeypatch.setattr(example, "make_student", lambda *a: student)
    monkeypatch.setattr(example, "build_variant", lambda *a, **k: None)
    monkeypatch.setattr(example, "variant_trainer", trainer)
    return seen


def test_tumour_lr_reaches_the_tumour_stage_alone(
    example: ModuleType, tmp_path: Path, monkeypatch
) -> None:
    seen = _trainer_options(example, monkeypatch)
    for extra, expected in ((["--tumour-lr", "0.002"], 0.002), ([], 0.01)):
        args = example.parse_args([*TINY, "--lr", "0.01", *extra, "--out", str(tmp_path)])
        for stage in ("liver", "tumour"):
            with pytest.raises(_Stop):
                example.train_stage(stage, {}, args)
        lrs = {o["name"].split()[0]: o["lr"] for o in seen[-2:]}
        assert lrs == {"liver": 0.01, "tumour": expected}
    for wrong in (["--tumour-lr", "0"], ["--lr", "-1"]):
        with pytest.raises(SystemExit):
            example.parse_args(wrong)


def test_tumour_ema_decay_reaches_the_tumour_stage_alone(
    example: ModuleType, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = _trainer_options(example, monkeypatch)
    for extra, expected in ((["--tumour-ema-decay", "0.99"], 0.99), ([], None)):
        args = example.parse_args([*TINY, *extra, "--out", str(tmp_path)])
        for stage in ("liver", "tumour"):
            with pytest.raises(_Stop):
                example.train_stage(stage, {}, args)
        decays = {o["name"].split()[0]: o["ema_decay"] for o in seen[-2:]}
        assert decays == {"liver": None, "tumour": expected}
    for wrong in ("0", "1", "-0.5"):
        with pytest.raises(SystemExit):
            example.parse_args(["--tumour-ema-decay", wrong])
        assert (
            f"--tumour-ema-decay: expected in (0, 1), got {float(wrong)}" in capsys.readouterr().err
        )


def test_train_seed_reseeds_training_but_not_the_phantom_or_split(
    example: ModuleType, tmp_path: Path, monkeypatch
) -> None:
    out = str(tmp_path / "run")
    again = example.parse_args([*TINY, "--out", out, "--train-seed", "7"])
    first = example.parse_args([*TINY, "--out", out])
    assert (first.train_seed, example.train_seed(first), example.train_seed(again)) == (None, 0, 7)
    cases = example.split_cases(again)
    ids = {k: [c.case_id for c in v] for k, v in cases.items()}
    assert ids == {k: [c.case_id for c in v] for k, v in example.split_cases(first).items()}
    assert example.datasets("tumour", cases, again)[0].seed == 7
    assert example.datasets("tumour", cases, first)[0].seed == 0
    seen = _trainer_options(example, monkeypatch)
    for args in (again, first):
        with pytest.raises(_Stop):
            example.train_stage("tumour", {}, args)
    assert [o["seed"] for o in seen] == [7, 0]
    with pytest.raises(SystemExit):
        example.parse_args(["--train-seed", "-1"])


def test_folder_without_pairs_is_reported(example: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no volumes here")
    args = example.parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as info:
        example.split_cases(args)
    assert "--data" in str(info.value)


def test_amp_auto_keeps_3d_in_float32_without_amx(example: ModuleType, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    for amx, three_d in ((False, False), (True, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        assert example.cpu_bf16_is_safe(2) is True
        assert example.cpu_bf16_is_safe(3) is three_d


def test_liver_lesion_terms_reach_the_liver_stages_ce_only(example: ModuleType) -> None:
    default = example.parse_args(TINY)
    both = example.parse_args([*TINY, "--liver-lesion-weight", "4", "--liver-lesion-terms", "both"])
    assert default.liver_lesion_terms == "dice"
    assert example.stage_loss("liver", default).options["weight_ce"] is False
    assert example.stage_loss("liver", both).options["weight_ce"] is True
    tumour = example.stage_loss("tumour", both).options
    assert tumour["weight_ce"] is False and tumour["include_background"] is False
    assert tumour["focal_gamma"] == 0.0  # plain CE unless asked
    focal = example.parse_args([*TINY, "--tumour-focal-gamma", "2"])
    assert example.stage_loss("tumour", focal).options["focal_gamma"] == 2.0
    assert example.stage_loss("liver", focal).options["focal_gamma"] == 0.0
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-focal-gamma", "-1"])
    assert tumour["tversky_beta"] is None  # Dice unless asked
    tversky = example.parse_args([*TINY, "--tumour-tversky-beta", "0.7"])
    assert example.stage_loss("tumour", tversky).options["tversky_beta"] == 0.7
    assert example.stage_loss("liver", tversky).options["tversky_beta"] is None
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-tversky-beta", "1.5"])
    assert tumour["batch_dice"] is False  # per slice unless asked
    pooled = example.parse_args([*TINY, "--tumour-batch-dice"])
    assert example.stage_loss("tumour", pooled).options["batch_dice"] is True
    assert example.stage_loss("liver", pooled).options["batch_dice"] is False
    assert tumour["blob_weight"] == 0.0  # no per-lesion term unless asked
    blob = example.parse_args([*TINY, "--tumour-blob-weight", "1"])
    assert example.stage_loss("tumour", blob).options["blob_weight"] == 1.0
    assert example.stage_loss("liver", blob).options["blob_weight"] == 0.0
    with pytest.raises(SystemExit):
        example.parse_args(["--tumour-blob-weight", "-0.5"])


def _liver_datasets(example: ModuleType, tmp_path: Path, *flags: str) -> tuple:
    """(out, args, cases, (train, val)) of the liver stage of a tiny run with ``flags``."""
    out = tmp_path / "run"
    args = example.parse_args([*TINY, "--out", str(out), *flags])
    cases = example.split_cases(args)
    return out, args, cases, example.datasets("liver", cases, args)


@pytest.mark.slow
def test_validation_only_scores_no_test_case_and_weighs_the_liver_lesions(
    example: ModuleType, tmp_path: Path
) -> None:
    from featsup.inference import Cascade

    weighed = ("--liver-lesion-weight", "3")
    out, args, cases, (train, val) = _liver_datasets(example, tmp_path, *weighed)
    assert train.lesion_weight == 3.0 and val.lesion_weight is None
    assert "weight" not in example.datasets("tumour", cases, args)[0][0]  # the liver's only
    assert example.datasets("liver", cases, example.parse_args(TINY))[0].lesion_weight == 20.0
    paper = example.parse_args([*TINY, "--liver-lesion-weight", "1"])  # the paper's loss
    assert example.datasets("liver", cases, paper)[0].lesion_weight is None
    balanced = example.parse_args([*TINY, "--tumour-contrast-balance", "0.5"])
    tumour_train, tumour_val = example.datasets("tumour", cases, balanced)
    assert (tumour_train.contrast_balance, tumour_val.contrast_balance) == (0.5, 0.0)
    assert example.datasets("tumour", cases, args)[0].contrast_balance == 0.0  # off by default
    windows = example.parse_args([*TINY, "--tumour-crop", str(args.tumour_size // 2)])
    crop_train, crop_val = example.datasets("tumour", cases, windows)
    assert crop_train[0]["image"].shape[-1] == args.tumour_size // 2  # training windows,
    assert crop_val[0]["image"].shape[-1] == args.tumour_size  # whole validation slices
    assert example.datasets("tumour", cases, args)[0].crop is None
    full = example.datasets("tumour", cases, args)[0].augment  # flips, rotations, jitter
    assert (full.flip_p, full.rotation_p, full.intensity_scale) == (0.5, 0.5, 0.1)
    flips = example.parse_args([*TINY, "--tumour-augment", "flips"])
    kept = example.datasets("tumour", cases, flips)[0].augment
    assert (kept.flip_p, kept.rotation_p, kept.intensity_scale, kept.intensity_shift) == (
        0.5, 0.0, 0.0, 0.0)  # fmt: skip
    plain = example.parse_args([*TINY, "--tumour-augment", "none"])
    tumour_plain = example.datasets("tumour", cases, plain)[0]
    assert example.datasets("liver", cases, plain)[0].augment.rotation_p == 0.5  # the liver's own
    bare = fd.TumourSliceDataset(cases["train"], size=(args.tumour_size,) * 2, seed=args.seed,
                                 empty_fraction=fd.STAGE_EMPTY_FRACTION["tumour"],
                                 mask_outside=False, cache_dir=out / "cache",
                                 preprocessing=tumour_plain.preprocessing)  # fmt: skip
    for i in range(0, len(bare), max(1, len(bare) // 4)):  # served as stored
        assert torch.equal(tumour_plain[i]["image"], bare[i]["image"])
        assert torch.equal(tumour_plain[i]["target"], bare[i]["target"])
    # the 2D tumour stage reads a liver window by default, the 3D one the paper's
    assert example.datasets("tumour", cases, args)[0].preprocessing.hu_window == (-50, 250)
    assert example.parse_args([*TINY, "--dims", "3"]).tumour_hu_window == [-100, 400]
    metrics = example.main([*TINY, "--out", str(out), "--liver-lesion-weight", "3",
                            "--validation-only", "--crf", "none",
                            "--tumour-hu-window", "-80", "300"])  # fmt: skip
    saved = json.loads((out / "metrics.json").read_text())
    assert "test evaluation" not in saved["seconds"] and "cases" not in saved
    assert not (out / "predictions").exists()  # nothing predicted on a test case
    assert saved["settings"]["liver_lesion_weight"] == 3.0 and metrics["split"]["test"]
    cascade = Cascade.load(out / "cascade.pt", device="cpu")  # chosen on validation, kept
    # the tumour model reads the volume through its own window; the liver's is the paper's
    assert cascade.tumour_preprocessing.hu_window == (-80.0, 300.0)
    assert cascade.preprocessing.hu_window == (-100.0, 400.0)
    assert cascade.tumour_threshold == saved["chosen_on_validation"]["tumour_threshold"]


@pytest.mark.slow
def test_a_three_class_liver_stage_starts_the_tumour_stage(
    example: ModuleType, tmp_path: Path
) -> None:
    import torch

    from featsup.inference import Cascade
    from featsup.training import load_model

    out, args, _, (train, val) = _liver_datasets(example, tmp_path, "--liver-classes", "3")
    assert train.classes == val.classes == "all" and train.lesion_weight is None
    assert example.stage_loss("liver", args).options["batch_dice"]
    assert not example.stage_loss("liver", example.parse_args(TINY)).options["batch_dice"]
    liver = example.make_student("liver", train, args, None)
    assert liver.num_classes == 3
    tumour = example.make_student("tumour", None, args, liver)
    assert tumour.num_classes == 2  # its tumour head is the liver model's tumour head
    torch.testing.assert_close(tumour.heads.x0_4.bias[1], liver.heads.x0_4.bias[2])
    example.main([*TINY, "--out", str(out), "--liver-classes", "3", "--validation-only",
                  "--crf", "none"])  # fmt: skip
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["settings"]["liver_classes"] == 3
    assert load_model(out / "liver" / "best.pt").num_classes == 3
    cascade = Cascade.load(out / "cascade.pt", device="cpu")
    assert cascade.liver_classes == (1, 2) and cascade.liver_model.num_classes == 3


@pytest.mark.slow
def test_tumour_members_train_apart_and_predict_as_one_ensemble(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from featsup.inference import Cascade
    from featsup.models import Ensemble
    from featsup.training import load_model

    with pytest.raises(SystemExit):
        example.parse_args([*TINY, "--tumour-members", "0"])
    assert example.parse_args(TINY).tumour_members == 1  # one model unless asked
    args = example.parse_args([*TINY, "--seed", "3"])
    assert example.member_args(args, 0) is args
    assert example.member_args(args, 2).train_seed == 2003 and args.train_seed is None
    out = tmp_path / "run"
    example.main([*TINY, "--out", str(out), "--validation-only", "--crf", "none",
                  "--tumour-members", "2", "--tumour-variant", "ES-DS"])  # fmt: skip
    printed = capsys.readouterr().out  # one teacher, trained by member 1, for both
    assert printed.count("the tumour teacher of the first member") == 1
    folders = ("tumour", "tumour_2")
    first, second = (load_model(out / f / "best.pt", part="student") for f in folders)
    weights = [m.state_dict().values() for m in (first, second)]
    assert any(
        not torch.equal(a, b) for a, b in zip(*weights, strict=True)
    )  # two trainings (their own seeds), not one saved twice
    cascade = Cascade.load(out / "cascade.pt", device="cpu")
    assert isinstance(cascade.tumour_model, Ensemble)
    kept = [m.state_dict() for m in cascade.tumour_model.members]
    for saved, trained in zip(kept, (first, second), strict=True):
        assert all(torch.equal(saved[k], v) for k, v in trained.state_dict().items())


def test_tumour_darkness_reaches_training_and_the_saved_cascade(
    example: ModuleType, tmp_path: Path
) -> None:
    from featsup.data import DARKNESS_SIGMAS
    from featsup.inference import Cascade

    with pytest.raises(SystemExit):
        example.parse_args([*TINY, "--tumour-darkness", "--dims", "3"])
    assert not example.parse_args(TINY).tumour_darkness  # off unless asked
    out = tmp_path / "run"
    args = example.parse_args([*TINY, "--out", str(out), "--tumour-darkness"])
    train, val = example.datasets("tumour", example.split_cases(args), args)
    assert train.darkness == val.darkness == DARKNESS_SIGMAS
    assert train[0]["image"].shape[0] == val[0]["image"].shape[0] == 2
    liver = example.make_student("liver", None, args, None)
    tumour = example.make_student("tumour", train, args, liver)
    kernel = tumour.encoder.x0_0.conv1.conv.weight
    assert kernel.shape[1] == 2 and not kernel[:, 1].any()  # the darkness starts unused
    torch.testing.assert_close(kernel[:, :1], liver.encoder.x0_0.conv1.conv.weight)
    example.main([*TINY, "--out", str(out), "--tumour-darkness", "--validation-only",
                  "--crf", "none"])  # fmt: skip
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["settings"]["tumour_darkness"] is True
    cascade = Cascade.load(out / "cascade.pt", device="cpu")
    assert cascade.tumour_darkness == DARKNESS_SIGMAS


def test_tumour_filter_is_trained_on_training_cases_and_saved(
    example: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from featsup.inference import Cascade

    defaults = example.parse_args([])  # rule AN's filter
    assert (defaults.tumour_filter_cases, defaults.tumour_filter_steps) == (80, 800)
    assert defaults.tumour_filter_liver == "model-no-crf"
    assert defaults.tumour_filter_tumour_crf == "off"
    assert example.parse_args(TINY).tumour_filter_cases == 0
    with pytest.raises(SystemExit):
        example.parse_args([*TINY, "--tumour-filter-cases", "-1"])
    assert "--tumour-filter-cases: expected >= 0" in capsys.readouterr().err
    assert example.parse_args([*TINY, "--tumour-filter-keep", "auto"]).tumour_filter_keep == "auto"
    assert example.parse_args(TINY).tumour_filter_keep == 0.9  # rule AO
    with pytest.raises(SystemExit):
        example.parse_args([*TINY, "--tumour-filter-keep", "1.5"])
    assert "expected a number in [0, 1] or auto" in capsys.readouterr().err
    assert defaults.tumour_filter_threshold == 0.2  # rule AO
    assert (
        example.parse_args(["--tumour-filter-threshold", "tuned"]).tumour_filter_threshold
        == "tuned"
    )
    for bad in (["--tumour-filter-threshold", "1"], [*TINY, "--tumour-filter-threshold", "0.3"]):
        with pytest.raises(SystemExit):
            example.parse_args(bad)
    assert "needs a tumour filter" in capsys.readouterr().err
    assert defaults.tumour_filter_spots == "none"
    assert example.parse_args(["--tumour-filter-spots", "25"]).tumour_filter_spots == 25.0
    for bad in (["--tumour-filter-spots", "0"], [*TINY, "--tumour-filter-spots", "25"]):
        with pytest.raises(SystemExit):
            example.parse_args(bad)
    assert "needs a tumour filter" in capsys.readouterr().err
    out = tmp_path / "run"
    flags = ["--extra-train-cases", "4", "--tumour-filter-cases", "5", "--tumour-filter-steps", "5",
             "--tumour-filter-liver", "model", "--tumour-filter-tumour-crf", "on"]  # fmt: skip
    metrics = example.main([*TINY, "--out", str(out), "--validation-only", "--crf", "none", *flags])
    printed = capsys.readouterr().out
    record, chosen = metrics["tumour_filter"], metrics["chosen_on_validation"]
    assert (
        record["cases"] == 5 and record["steps"] == 5 and 0 < record["true"] < record["candidates"]
    )
    assert record["liver"] == "model" and record["tumour_crf"] is True  # not the defaults
    assert record["validation_reused"] is True  # scored on the tuning's run, not a second one
    assert "tumour filter: " in printed and "tumour filter" in metrics["seconds"]
    cascade = Cascade.load(out / "cascade.pt", device="cpu")  # saved with its filter and keep
    assert cascade.tumour_filter is not None and cascade.tumour_min_voxels == 0
    assert cascade.tumour_filter_keep == chosen["tumour_filter_keep"] == 0.9  # fixed, not chosen
    assert cascade.tumour_threshold == chosen["tumour_threshold"] == 0.2  # rule AO
    assert chosen["val_tumour_dice_by_filter_keep"] and not chosen["val_tumour_dice_by_min_voxels"]
    # validation outputs over the size cap: the cascade runs on them again, to the same scores
    monkeypatch.setattr(example, "KEEP_OUTPUTS_BYTES", 0)
    again = example.main([*TINY, "--out", str(tmp_path / "again"), "--validation-only",
                          "--crf", "none", *flags])  # fmt: skip
    assert again["tumour_filter"]["validation_reused"] is False
    by_keep = again["chosen_on_validation"]["val_tumour_dice_by_filter_keep"]
    assert by_keep == chosen["val_tumour_dice_by_filter_keep"]
    # a threshold of its own: the filter's components and the saved cascade label at it;
    # dark spots join them as candidates
    low = example.main([*TINY, "--out", str(tmp_path / "low"), "--validation-only", "--crf",
                        "none", *flags, "--tumour-filter-threshold", "0.35",
                        "--tumour-filter-spots", "20"])  # fmt: skip
    assert low["chosen_on_validation"]["tumour_threshold"] == 0.35
    saved = Cascade.load(tmp_path / "low" / "cascade.pt", device="cpu")
    assert saved.tumour_threshold == 0.35 and saved.tumour_spots == 20.0
    printed = capsys.readouterr().out
    assert "tumour probability > 0.35 and dark spots of >= 20 HU, keeps scores >= 0.9" in printed
