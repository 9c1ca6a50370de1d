"""The ``featsup`` command: segment new CT scans with a saved cascade, and score them.

    featsup predict --model cascade.pt --input scans/ --output predictions/
    featsup evaluate --prediction predictions/ --truth labels/ --json metrics.json

``featsup <command> --help`` explains every option; docs/cli.md has the details (the
spacing decision, the cascade file, the errors). ``python -m featsup`` is the same
command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featsup.inference import parse_head

__all__ = ["main"]

_NIFTI = re.compile(r"\.nii(\.gz)?$")
_VOLUME = re.compile(r"^volume-(.+?)\.nii(\.gz)?$")
_RAW = argparse.RawDescriptionHelpFormatter


class _Failure(Exception):
    """A problem with one input: reported in one line, the other inputs go on."""


@dataclass
class _Job:
    source: Path
    output: Path


def _nifti_files(folder: Path) -> list[Path]:
    found = [p for p in folder.rglob("*") if p.is_file() and _NIFTI.search(p.name)]
    return sorted(p for p in found if not p.name.startswith("segmentation-"))


def _output_name(source: Path) -> str:
    match = _VOLUME.match(source.name)
    return f"segmentation-{match.group(1)}.nii.gz" if match else source.name


def _plan(inputs: Sequence[Path], output: Path) -> tuple[list[_Job], list[tuple[Path, str]]]:
    """Expand folders, name the outputs, and list the inputs that cannot be used."""
    jobs: list[_Job] = []
    problems: list[tuple[Path, str]] = []
    taken: dict[Path, Path] = {}
    for path in inputs:
        if path.is_dir():
            files = _nifti_files(path)
            if not files:
                problems.append((path, "expected .nii or .nii.gz files in this folder, found none"))
        elif path.exists():
            files = [path]
        else:
            problems.append((path, "expected an existing file or folder, found nothing"))
            files = []
        for source in files:
            target = output / _output_name(source)
            if target.resolve() == source.resolve():
                problems.append((source, f"its output {target} would overwrite the input"))
            elif target in taken:
                problems.append((source, f"same output name as {taken[target]}; fix: rename one"))
            else:
                taken[target] = source
                jobs.append(_Job(source, target))
    return jobs, problems


def _cascade(args: argparse.Namespace) -> Any:
    """Load the cascade and apply the command-line overrides."""
    from featsup.inference import Cascade, load_cascade
    from featsup.inference.bundle import cascade_arguments
    from featsup.postprocess import CRF_PRESETS

    stored = load_cascade(args.model, device=args.device)
    options = cascade_arguments(stored)
    if args.head is not None:
        if len(args.head) > 2:
            raise ValueError(f"--head: expected one head or two (liver tumour), got {args.head}")
        options["liver_head"], options["tumour_head"] = args.head[0], args.head[-1]
    if args.crf is False:
        options["liver_crf"] = options["tumour_crf"] = None
    elif args.crf is True:
        for stage in ("liver", "tumour"):
            if options[f"{stage}_crf"] is None:
                options[f"{stage}_crf"] = dict(CRF_PRESETS[stage])
    if args.tta is not None:  # both stages, whatever the file stored for each
        options["tta"], options["tumour_tta"] = args.tta, None
    cascade = Cascade(stored.liver_model, stored.tumour_model, **options)
    cascade.training_summary = stored.training_summary
    return cascade


def _write(labels: Any, job: _Job) -> Path:
    """Save next to the final name, then rename: a killed run never leaves half a file."""
    from featsup.data import save_prediction

    tmp = job.output.with_name(f".{job.output.name}.{os.getpid()}.partial.nii.gz")
    try:
        save_prediction(labels, job.source, tmp)
        os.replace(tmp, job.output)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return job.output


def _read(job: _Job) -> Any:
    from featsup.data import load_volume

    return load_volume(job.source, dtype=None)[0]  # int16 as stored: the cascade converts


def _volumes(jobs: list[_Job], pool: ThreadPoolExecutor | None, ahead: int) -> Iterator[Any]:
    """Yield ``(job, volume or error)``, reading up to ``ahead`` volumes in the background."""
    if pool is None:
        for job in jobs:
            try:
                yield job, _read(job)
            except (ValueError, OSError, MemoryError) as err:
                yield job, err
        return
    queue: deque[tuple[_Job, Future]] = deque()
    for job in jobs:
        queue.append((job, pool.submit(_read, job)))
        if len(queue) > ahead:
            yield _settle(*queue.popleft())
    while queue:
        yield _settle(*queue.popleft())


def _settle(job: _Job, future: Future) -> tuple[_Job, Any]:
    try:
        return job, future.result()
    except (ValueError, OSError, MemoryError) as err:
        return job, err


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def run_predict(args: argparse.Namespace) -> int:
    """``featsup predict``: returns the exit status (0 all written, 1 some failed)."""
    from tqdm.auto import tqdm

    cascade = _cascade(args)
    args.output.mkdir(parents=True, exist_ok=True)
    jobs, failed = _plan(args.input, args.output)
    existing = [job for job in jobs if job.output.exists() and not args.overwrite]
    jobs = [job for job in jobs if job not in existing]
    for path, why in failed:
        print(f"featsup predict: skipped {path}: {why}", file=sys.stderr)
    written: list[Path] = []
    pool = ThreadPoolExecutor(max_workers=args.workers) if args.workers > 0 else None
    writes: list[tuple[_Job, Future | None]] = []
    bar = tqdm(total=len(jobs), unit="volume", disable=args.quiet or None, file=sys.stderr)
    try:
        for job, volume in _volumes(jobs, pool, args.workers):
            bar.set_postfix_str(job.source.name)
            try:
                if isinstance(volume, BaseException):
                    raise _Failure(_one_line(volume))
                labels = cascade(volume).labels
                del volume
                if pool is None:
                    written.append(_write(labels, job))
                else:
                    writes.append((job, pool.submit(_write, labels, job)))
            except (_Failure, ValueError, RuntimeError, MemoryError) as err:
                failed.append((job.source, _one_line(err)))
                tqdm.write(f"featsup predict: skipped {job.source}: {_one_line(err)}", sys.stderr)
            bar.update(1)
        for job, future in writes:
            try:
                written.append(future.result() if future is not None else job.output)
            except (ValueError, OSError, RuntimeError) as err:
                failed.append((job.source, _one_line(err)))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True)
    _summary(written, existing, failed)
    return 1 if failed else 0


def _summary(written: list[Path], existing: list[_Job], failed: list[tuple[Path, str]]) -> None:
    print(
        f"featsup predict: {len(written)} written, {len(existing)} kept (already there; "
        f"--overwrite replaces them), {len(failed)} failed"
    )
    for job in existing:
        print(f"  kept {job.output}")
    for path, why in failed:
        print(f"  FAILED {path}: {why}")


_PREDICT_HELP = """\
Segment CT volumes (NIfTI) with a cascade saved by Cascade.save: liver model, largest
connected component, liver ROI, tumour model, optional dense CRF. Each output has the
labels 0 background, 1 liver, 2 tumour on the input's voxel grid, with its affine and
header, so it overlays the scan in any viewer. volume-N.nii[.gz] gives
segmentation-N.nii.gz; any other file keeps its name. Folders are searched recursively
(segmentation-* files are skipped). A bad input is reported in one line and skipped;
the exit status is 1 when any input failed.

example:
  featsup predict --model cascade.pt --input scans/ extra/volume-7.nii --output pred/
  featsup predict --model cascade.pt --input scans/ --output pred/ --device cuda --tta
"""

_EVALUATE_HELP = """\
Score predicted label maps against the truth with the LiTS metrics, for the liver
(labels >= 1) and the tumour (label 2): Dice per case and global, VOE, RVD, ASSD and MSD
(mm, from the truth's voxel spacing). Files are paired by case: segmentation-N in both
folders (.nii or .nii.gz), else the same file name. Prints a table per case and the
aggregates; --json writes them. Tumour-free cases (no label 2 in the truth) are kept in
Dice per case (1 when no tumour is predicted, else 0) and Dice global; RVD, ASSD and MSD
are undefined when the truth or the prediction is empty, and their means leave such
cases out and say how many.

example:
  featsup evaluate --prediction pred/ --truth /data/LiTS --json metrics.json
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featsup",
        description="Liver and tumour segmentation of CT scans with a trained featsup cascade.",
        epilog="example:\n  featsup predict --model cascade.pt --input scans/ --output pred/\n"
        "  featsup evaluate --prediction pred/ --truth labels/\n\n"
        "featsup COMMAND --help explains each command.",
        formatter_class=_RAW,
    )
    from featsup import __version__

    parser.add_argument("--version", action="version", version=f"featsup {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = commands.add_parser(
        "predict", help="segment NIfTI volumes", description=_PREDICT_HELP, formatter_class=_RAW
    )
    p.add_argument("--model", required=True, type=Path, help="cascade file (Cascade.save)")
    p.add_argument("--input", required=True, nargs="+", type=Path, metavar="PATH",
                   help="NIfTI files or folders")  # fmt: skip
    p.add_argument("--output", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:1...")
    p.add_argument("--head", type=parse_head, nargs="+", metavar="K",
                   help="head of both stages, or two: liver tumour; 1-4, or mean (every "
                   "head's probabilities averaged) (default: stored)")  # fmt: skip
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                   help="dense CRF on (stored settings, else the presets) or off "
                   "(default: as stored)")  # fmt: skip
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with left-right mirrored slices, in both stages "
                   "(default: as stored)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="threads that read the next volumes and write finished ones while "
                   "the model runs (default 1; 0 = one thing at a time, least memory)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    e = commands.add_parser(
        "evaluate", help="LiTS metrics of predictions", description=_EVALUATE_HELP,
        formatter_class=_RAW,
    )  # fmt: skip
    e.add_argument("--prediction", required=True, type=Path, metavar="DIR")
    e.add_argument("--truth", required=True, type=Path, metavar="DIR")
    e.add_argument("--json", type=Path, metavar="FILE", help="write per-case and aggregate JSON")
    e.add_argument("--no-surface", action="store_true", help="skip ASSD and MSD (faster)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``featsup`` command; returns the exit status.

    Args:
        argv: arguments without the program name; None reads ``sys.argv``.

    Returns:
        0 on success, 1 when some input failed, 2 for a usage error (bad model file,
        bad option, missing extra).

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        featsup 0.1.0
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "predict":
            if args.workers < 0:
                raise ValueError(f"--workers: expected an int >= 0, got {args.workers}")
            return run_predict(args)
        from featsup._cli_evaluate import run_evaluate

        return run_evaluate(args)
    except (ValueError, TypeError, ImportError) as err:
        print(f"featsup {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
