"""LiTS layout: discover, validate, load and save CT volumes and segmentations (NIfTI).

A LiTS folder holds pairs ``volume-N.nii[.gz]`` / ``segmentation-N.nii[.gz]`` (in any
sub-folder, as in the "Training Batch 1/2" downloads). Cases can also be given as a list
of ``(volume, segmentation)`` paths or as a CSV / JSON manifest. Discovery only lists
paths; each volume is read when it is loaded, so a data set never sits in memory whole.

Loaded arrays are in featsup's processing order ``(D, H, W)`` (axial slices from inferior
to superior, rows anterior to posterior, columns from the patient's right to left; see
``featsup.data._orient``), whatever the orientation on disk. ``save_prediction`` applies
the exact inverse and writes the source affine and header, so a prediction opens aligned
with its volume in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias, overload

import numpy as np

from featsup.data._nifti import check_finite, check_labels, check_pair, open_nifti, read_voxels
from featsup.data._orient import from_processing, nibabel, processing_spacing, to_processing

__all__ = [
    "CaseProblem",
    "LazyCases",
    "LitsCase",
    "LoadedCase",
    "check_dataset",
    "find_cases",
    "load_case",
    "load_segmentation",
    "load_volume",
    "save_prediction",
    "validate_case",
]

PathLike: TypeAlias = "str | os.PathLike[str]"
CaseSource: TypeAlias = "str | os.PathLike[str] | Sequence[Any]"
_VOLUME = re.compile(r"^volume-(.+?)\.nii(\.gz)?$")
_SEGMENTATION = re.compile(r"^segmentation-(.+?)\.nii(\.gz)?$")


@dataclass(frozen=True)
class LitsCase:
    """One case: a CT volume and, for training data, its segmentation."""

    case_id: str
    volume_path: Path
    segmentation_path: Path | None = None


class LoadedCase(NamedTuple):
    """A loaded case in processing order (see the module docstring)."""

    volume: np.ndarray
    """(D, H, W) float32 Hounsfield units."""
    labels: np.ndarray | None
    """(D, H, W) uint8 labels in {0, 1, 2}, or None without a segmentation."""
    spacing: tuple[float, float, float]
    """Voxel spacing in mm along (D, H, W)."""
    affine: np.ndarray
    """(4, 4) voxel-to-RAS affine of the file on disk (its own voxel order)."""
    case_id: str


class CaseProblem(NamedTuple):
    """One problem found by :func:`check_dataset`."""

    case_id: str
    path: Path
    message: str


def _sort_key(case_id: str) -> tuple[int, int | str]:
    return (0, int(case_id)) if case_id.isdigit() else (1, case_id)


def _scan_folder(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    volumes: dict[str, Path] = {}
    segmentations: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.nii*")):
        for pattern, found in ((_VOLUME, volumes), (_SEGMENTATION, segmentations)):
            match = pattern.match(path.name)
            if match is None:
                continue
            if match.group(1) in found:
                raise ValueError(
                    f"{path}: expected one file per case id, got a second one besides "
                    f"{found[match.group(1)]}; fix: remove the duplicate"
                )
            found[match.group(1)] = path
    return volumes, segmentations


def _from_folder(folder: Path, require_segmentation: bool) -> list[LitsCase]:
    problems, cases = _problems_in_folder(folder, require_segmentation)
    stray = [p for p in problems if "expected a matching volume" not in p.message]
    if stray:  # a missing volume is a stray file, reported by check_dataset only
        raise ValueError(stray[0].message)
    return cases


def _case_id(path: Path) -> str:
    match = _VOLUME.match(path.name)
    return match.group(1) if match else path.name.split(".nii")[0]


def _from_rows(rows: Sequence[Any], base: Path | None) -> list[LitsCase]:
    cases = []
    for i, row in enumerate(rows):
        if isinstance(row, LitsCase):
            cases.append(row)
            continue
        if isinstance(row, dict):
            vol, seg, case_id = row.get("volume"), row.get("segmentation"), row.get("id")
        elif isinstance(row, (str, os.PathLike)):
            vol, seg, case_id = row, None, None
        else:
            vol, seg = (*tuple(row), None)[:2]
            case_id = None
        if not vol:
            raise ValueError(f"cases[{i}]: expected a volume path, got {row!r}")
        vpath = Path(vol) if base is None else base / Path(vol)
        spath = None if not seg else (Path(seg) if base is None else base / Path(seg))
        cases.append(LitsCase(str(case_id or _case_id(vpath)), vpath, spath))
    return cases


def _from_manifest(path: Path) -> list[LitsCase]:
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        rows = data.get("cases", []) if isinstance(data, dict) else data
    else:
        rows = list(csv.DictReader(text.splitlines()))
        if rows and "volume" not in rows[0]:
            raise ValueError(
                f"{path}: expected a CSV header with columns volume,segmentation[,id], "
                f"got {list(rows[0])}"
            )
    return _from_rows(rows, path.parent)


def find_cases(source: CaseSource, *, require_segmentation: bool = True) -> list[LitsCase]:
    """List the cases of a LiTS folder, a manifest or a list of paths (nothing is loaded).

    Args:
        source: a folder searched recursively for ``volume-N.nii[.gz]`` and
            ``segmentation-N.nii[.gz]``; a ``.csv`` manifest (columns ``volume``,
            ``segmentation``, optional ``id``; paths relative to the manifest); a ``.json``
            manifest (a list of such objects, or ``{"cases": [...]}``); or a sequence of
            ``(volume, segmentation)`` pairs, volume paths or :class:`LitsCase`.
        require_segmentation: raise when a volume in a folder has no segmentation.

    Returns:
        The cases, sorted by number for a folder, in the given order otherwise.

    Raises:
        ValueError: if the folder has no volumes, a segmentation is missing, a case id is
            duplicated or a manifest is malformed.

    Example:
        >>> import tempfile
        >>> from featsup.data import write_phantom_dataset
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_phantom_dataset(folder, 2, shape=(16, 32, 32))
        >>> [case.case_id for case in find_cases(folder)]
        ['0', '1']
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _from_folder(path, require_segmentation)
        if path.suffix.lower() in (".csv", ".json") and path.is_file():
            return _from_manifest(path)
        if not path.exists():
            raise ValueError(f"{path}: expected a folder or a .csv/.json manifest, not found")
        return _from_rows([path], None)
    return _from_rows(list(source), None)


def load_volume(
    path: PathLike, *, dtype: Any = np.float32
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Read a CT volume in processing order, checking it.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        dtype: of the returned volume; None keeps the stored one (int16 for most CT:
            half the memory of float32) unless wider than 32 bits, which gives float32.

    Returns:
        ``(volume, spacing, affine)``: (D, H, W) HU (float32 by default), spacing in mm
        along (D, H, W) and the file's (4, 4) affine.

    Raises:
        ValueError: if the file is missing, unreadable, not 3D or has NaN/Inf voxels.
    """
    path = Path(path)
    image = open_nifti(path)
    data = read_voxels(image, path)
    check_finite(data, path)
    if dtype is None:
        dtype = data.dtype if data.dtype.itemsize <= 4 else np.float32
    volume = to_processing(data.astype(dtype, copy=False), image.affine)
    return volume, processing_spacing(image.header.get_zooms()[:3], image.affine), image.affine


def load_segmentation(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a segmentation in processing order, checking its labels.

    Returns:
        ``(labels, affine)``: (D, H, W) uint8 labels in {0, 1, 2} and the file's affine.

    Raises:
        ValueError: if the file is missing, unreadable, not 3D or has other labels.
    """
    path = Path(path)
    image = open_nifti(path)
    labels = check_labels(read_voxels(image, path), path)
    return to_processing(labels, image.affine), image.affine


def load_case(case: LitsCase | Sequence[Any]) -> LoadedCase:
    """Load and check one case (volume and, if present, segmentation) in processing order.

    Args:
        case: a :class:`LitsCase` or a ``(volume, segmentation)`` pair of paths.

    Returns:
        A :class:`LoadedCase` ``(volume, labels, spacing, affine, case_id)``.

    Raises:
        ValueError: for a missing or unreadable file, a non-3D array, NaN/Inf voxels,
            labels outside {0, 1, 2}, or a volume and segmentation whose shapes or
            affines disagree; the message names the file.
    """
    if not isinstance(case, LitsCase):
        case = _from_rows([case], None)[0]
    volume, spacing, affine = load_volume(case.volume_path)
    labels = None
    if case.segmentation_path is not None:
        vol_image = nibabel().load(str(case.volume_path))
        check_pair(case, vol_image, open_nifti(case.segmentation_path))
        labels, _ = load_segmentation(case.segmentation_path)
    return LoadedCase(volume, labels, spacing, affine, case.case_id)


class LazyCases(Sequence[LoadedCase]):
    """Cases that are loaded when read (:func:`load_case` on each access), not before.

    For a pass that reads each case once (``featsup.inference.lesion_candidates`` over a
    filter's training cases, say): only the case being read sits in memory, not the whole
    list (about 16 MB a case at the example phantom's 48 x 256 x 256). Each access loads
    the case again, so keep what you read twice.

    Args:
        cases: :class:`LitsCase` objects or ``(volume, segmentation)`` pairs of paths.

    Example:
        >>> import tempfile
        >>> from featsup.data import write_phantom_dataset
        >>> pairs = write_phantom_dataset(tempfile.mkdtemp(), 3, shape=(8, 32, 32))
        >>> lazy = LazyCases(pairs)
        >>> len(lazy), lazy[1].volume.shape, len(lazy[1:])
        (3, (8, 32, 32), 2)
    """

    def __init__(self, cases: Sequence[LitsCase | Sequence[Any]]) -> None:
        self._cases = list(cases)

    def __len__(self) -> int:
        return len(self._cases)

    @overload
    def __getitem__(self, index: int) -> LoadedCase: ...

    @overload
    def __getitem__(self, index: slice) -> LazyCases: ...

    def __getitem__(self, index: int | slice) -> LoadedCase | LazyCases:
        if isinstance(index, slice):
            return LazyCases(self._cases[index])
        return load_case(self._cases[index])

    def __repr__(self) -> str:
        return f"LazyCases({len(self._cases)} cases)"


def validate_case(case: LitsCase, *, read_data: bool = True) -> None:
    """Raise the first problem of a case as a ``ValueError`` naming the file.

    Args:
        case: the case to check.
        read_data: also read the voxels (NaN/Inf, label set); False checks headers only.

    Raises:
        ValueError: for the first problem found, as described in :func:`load_case`.
    """
    vol_image = open_nifti(case.volume_path)
    seg_image = None
    if case.segmentation_path is not None:
        seg_image = open_nifti(case.segmentation_path)
        check_pair(case, vol_image, seg_image)
    if read_data:
        check_finite(read_voxels(vol_image, case.volume_path), case.volume_path)
        if seg_image is not None and case.segmentation_path is not None:
            check_labels(read_voxels(seg_image, case.segmentation_path), case.segmentation_path)


def _problems_in_folder(
    folder: Path, require_segmentation: bool
) -> tuple[list[CaseProblem], list[LitsCase]]:
    try:
        volumes, segmentations = _scan_folder(folder)
    except ValueError as err:
        return [CaseProblem("", folder, str(err))], []
    problems = []
    if not volumes:
        msg = f"{folder}: expected files named volume-N.nii or volume-N.nii.gz, found none"
        problems.append(CaseProblem("", folder, msg))
    for case_id in sorted(set(segmentations) - set(volumes), key=_sort_key):
        path = segmentations[case_id]
        msg = f"{path}: expected a matching volume-{case_id}.nii[.gz], found none"
        problems.append(CaseProblem(case_id, path, msg))
    cases = []
    for case_id in sorted(volumes, key=_sort_key):
        seg = segmentations.get(case_id)
        if seg is None and require_segmentation:
            path = volumes[case_id]
            msg = (
                f"{path}: expected a matching segmentation-{case_id}.nii[.gz], found none; "
                "fix: add it or pass require_segmentation=False"
            )
            problems.append(CaseProblem(case_id, path, msg))
            continue
        cases.append(LitsCase(case_id, volumes[case_id], seg))
    return problems, cases


def check_dataset(
    source: CaseSource, *, read_data: bool = True, require_segmentation: bool = True
) -> list[CaseProblem]:
    """Check every case and report all problems at once (nothing is raised for bad cases).

    Args:
        source: anything :func:`find_cases` accepts.
        read_data: also read the voxels (NaN/Inf, label set); False checks headers only
            (files present and readable, 3D, matching shapes and affines).
        require_segmentation: report volumes without a segmentation.

    Returns:
        One :class:`CaseProblem` ``(case_id, path, message)`` per bad case or stray file;
        an empty list when everything is fine.

    Raises:
        ValueError: only if ``source`` itself cannot be read (a malformed manifest).

    Example:
        >>> import tempfile
        >>> from featsup.data import write_phantom_dataset
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_phantom_dataset(folder, 2, shape=(16, 32, 32))
        >>> check_dataset(folder)
        []
    """
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        problems, cases = _problems_in_folder(Path(source), require_segmentation)
    else:
        problems, cases = [], find_cases(source)
    for case in cases:
        try:
            validate_case(case, read_data=read_data)
        except ValueError as err:
            message = str(err)
            bad = (
                case.segmentation_path
                if case.segmentation_path and message.startswith(str(case.segmentation_path))
                else case.volume_path
            )
            problems.append(CaseProblem(case.case_id, bad, message))
    return problems


def _processing_shape(image: Any) -> tuple[int, int, int]:
    from featsup.data._orient import to_processing_ornt

    lps = [0, 0, 0]
    for disk_axis, (lps_axis, _) in enumerate(to_processing_ornt(image.affine)):
        lps[int(lps_axis)] = int(image.shape[disk_axis])
    return lps[2], lps[1], lps[0]


def save_prediction(
    labels: Any, reference: LitsCase | PathLike, out_path: PathLike, *, dtype: Any = np.uint8
) -> Path:
    """Save a label volume as NIfTI aligned with its source volume.

    The array is put back into the reference file's voxel order (the exact inverse of the
    reorientation done when loading) and written with the reference affine and header, so
    it overlays the source volume in 3D Slicer or ITK-SNAP.

    Args:
        labels: (D, H, W) labels in processing order (numpy array or torch tensor).
        reference: the source volume path or its :class:`LitsCase`.
        out_path: where to write (``.nii`` or ``.nii.gz``); parent folders are created.
        dtype: stored dtype, uint8 by default.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: if the reference is missing or unreadable or ``labels`` does not have
            the reference's processing shape.
    """
    ref_path = reference.volume_path if isinstance(reference, LitsCase) else Path(reference)
    image = open_nifti(ref_path)
    array = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    expected = _processing_shape(image)
    if tuple(array.shape) != expected:
        raise ValueError(
            f"labels: expected shape {expected} (D, H, W) of {ref_path.name}, "
            f"got {tuple(array.shape)}; fix: predict on the volume from load_case"
        )
    data = from_processing(array.astype(dtype, copy=False), image.affine)
    header = image.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    nibabel().save(type(image)(data, image.affine, header), str(out))
    return out
