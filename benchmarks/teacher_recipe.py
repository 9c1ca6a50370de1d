"""How well an encoding teacher reconstructs label maps, head by head, and what it costs.

Writes (or reuses) phantom cases in LiTS layout, trains ``train_encoding_teacher`` on the
label maps of the first ``--train-cases`` cases (liver slices, or tumour ROI crops) and
prints the reconstruction Dice of every head X0,1..X0,4 on training maps and on the
held-out maps of the next ``--held-cases`` cases, with the wall time.

With ``--example DIR`` (a finished cascade example's ``--out``) it trains instead on the
maps the example's teacher of that stage saw: the label maps of the example's training
set, built by the example's own functions with the settings its metrics.json records,
held out against its validation cases' maps, of which the teacher's own evaluation
uses 64. Test cases are not loaded. With ``--example-seed N`` as well, the maps are those
the example would build with ``--seed N`` and its defaults (it writes the phantom to
``--example`` if it is not there; nothing is trained but the teacher). With
``--eval-every K`` it prints the held-out Dice of X0,4 every K steps. The teacher judged
is the weight average (``--ema-decay``, the library's 0.99); ``--ema-decay 0`` judges the
trained weights, as every recipe before 2026-12-03 was. The average does not change the
training, so the two runs follow the same weights.

    python benchmarks/teacher_recipe.py --stage liver --steps 300 --json teacher.json
    python benchmarks/teacher_recipe.py --example outputs/run6 --stage tumour --steps 600 \\
        --lr 3e-3 --amp bf16
    python benchmarks/teacher_recipe.py --example outputs/tr/seed11 --example-seed 11 \\
        --stage tumour --steps 2000 --eval-every 100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from featsup import data as fd
from featsup.losses import one_hot
from featsup.supervision import reconstruction_dice, train_encoding_teacher
from featsup.training.checkpoint import load_checkpoint


def label_maps(stage: str, cases: list, cache: Path, size: int) -> torch.Tensor:
    make = fd.LiverSliceDataset if stage == "liver" else fd.TumourSliceDataset
    ds = make(
        cases, size=(size, size), empty_fraction=fd.STAGE_EMPTY_FRACTION[stage], cache_dir=cache
    )
    return torch.stack([ds[i]["target"] for i in range(len(ds))]).long()


def example_maps(
    folder: Path, stage: str, seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training maps, validation maps) of an example run's ``stage``, as its teacher saw them.

    Built by the example's own ``split_cases`` and ``datasets``, with the settings its
    metrics.json records, so that they cannot drift from what the example does; with
    ``seed``, the example's default settings for ``--seed seed`` (its phantom is written
    to ``folder`` if it is not there: no training runs).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import lits_cascade

    from featsup.supervision._label_crops import label_tensor

    if seed is None:
        settings = json.loads((folder / "metrics.json").read_text())["settings"]
        data = settings["data"] and Path(settings["data"])
        # runs before --tumour-scope masked the tumour stage's input, and runs before
        # --extra-train-cases trained on their split's cases alone
        args = argparse.Namespace(**{"tumour_scope": "liver", "extra_train_cases": 0,
                                     **settings, "out": folder, "data": data})  # fmt: skip
    else:
        args = lits_cascade.parse_args(["--seed", str(seed), "--out", str(folder)])
    train, val = lits_cascade.datasets(stage, lits_cascade.split_cases(args), args)
    return label_tensor(train, 2, 2), label_tensor(val, 2, 2)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("outputs/teacher_recipe/phantom"))
    p.add_argument("--example", type=Path, help="train on this example run's maps instead")
    p.add_argument("--example-seed", type=int, help="with --example: a folder for the maps the "
                   "example would build with --seed N (no finished run needed)")  # fmt: skip
    p.add_argument("--stage", choices=("liver", "tumour"), default="liver")
    p.add_argument("--train-cases", type=int, default=6)
    p.add_argument("--held-cases", type=int, default=3)
    p.add_argument("--shape", type=int, nargs=3, default=[48, 256, 256])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--crop", type=int, default=64, help="0: whole maps")
    p.add_argument("--foreground-fraction", type=float, nargs="+", default=[0.67, 0.0],
                   help="share of foreground-centred crops, or START END")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--amp", choices=("bf16", "none"), default="none")
    p.add_argument("--ema-decay", type=float, default=0.99,
                   help="weight average judged and kept (0: the trained weights)")  # fmt: skip
    p.add_argument("--eval-every", type=int, help="steps between held-out Dice (default: once)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.example_seed is not None and args.example is None:
        p.error("--example-seed: expected --example DIR too (where the phantom goes)")
    if args.example is not None:
        if args.example_seed is None and not (args.example / "metrics.json").exists():
            p.error(f"--example: expected a finished example run, no {args.example}/metrics.json")
        train, held = example_maps(args.example, args.stage, args.example_seed)
    else:
        n = args.train_cases + args.held_cases
        if len(list(args.data.glob("volume-*.nii.gz"))) < n:
            fd.write_phantom_dataset(args.data, n, shape=tuple(args.shape), seed=7000)
        cases = fd.find_cases(args.data)
        train = label_maps(args.stage, cases[: args.train_cases], args.data / "cache", args.size)
        held = label_maps(args.stage, cases[args.train_cases : n], args.data / "cache", args.size)
    shares = args.foreground_fraction
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:  # the checkpoint holds the Dice by step
        checkpoint = Path(scratch) / "teacher.pt"
        teacher = train_encoding_teacher(
            train, val_labels=held, num_classes=2, widths=args.widths, steps=args.steps,
            lr=args.lr, crop=args.crop or None, dice_threshold=1.0,
            eval_every=args.eval_every or args.steps,
            foreground_fraction=shares[0] if len(shares) == 1 else tuple(shares),
            batch_size=args.batch_size,
            amp=None if args.amp == "none" else args.amp, progress=True, path=checkpoint,
            ema_decay=args.ema_decay or None, reuse=False,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        history = load_checkpoint(checkpoint)["history"]
    curve = [[r["step"], r["val/dice"]] for r in history if "val/dice" in r]
    result: dict = {"settings": vars(args), "seconds": seconds, "curve": curve}
    if len(curve) > 1:
        print("held-out X0,4 Dice by step: " + ", ".join(f"{s} {d:.3f}" for s, d in curve))
    print(f"\n{args.stage}: {len(train)} training maps, {len(held)} held out, {seconds:.0f} s")
    print("| maps | X0,1 | X0,2 | X0,3 | X0,4 | X0,4 false pos. | X0,4 false neg. |")
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for name, maps in (("training", train[:128]), ("held-out", held)):
            outs = [teacher(one_hot(m, 2, dtype=torch.float32)) for m in maps.split(16)]
            heads = [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))]
            result[name] = [reconstruction_dice(h, maps, 2) for h in heads]
            pred, truth = heads[-1].argmax(1) > 0, maps > 0
            errors = {"false_positives": int((pred & ~truth).sum()),
                      "false_negatives": int((~pred & truth).sum())}  # fmt: skip
            result[f"{name}_x0_4_errors"] = errors
            print(f"| {name} | " + " | ".join(f"{d:.3f}" for d in result[name])
                  + f" | {errors['false_positives']} | {errors['false_negatives']} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
