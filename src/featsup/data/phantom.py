"""Synthetic abdominal CT phantoms with a liver and liver tumours, in LiTS layout.

Real LiTS data cannot be shipped, so featsup carries a phantom that exercises the same
code path: Hounsfield units, anatomy, labels and NIfTI files that look like the real
thing. Every case is one portal-venous contrast phase. Air (-1000 HU) surrounds a body of
subcutaneous fat (-118 to -92 HU), an abdominal muscle wall and paraspinal muscles
(42-58 HU), visceral fat, spine and ribs (cortical bone about 900 HU, cancellous about
300 HU), lungs above the diaphragm, heart (blood pool as the aorta), aorta (155-195 HU)
and vena cava, kidneys (cortex 155-195 HU over a darker medulla), a spleen (102-128 HU,
close to the liver, so shape and position matter), a stomach with an air-fluid level and
enhancing wall, bowel loops, a gallbladder and a liver with three lobes (the left one
over the stomach), an irregular boundary, parenchyma at 100-120 HU and portal and
hepatic veins at 155-195 HU.

Zero to ten lesions per case (none in about a tenth of the cases), as in LiTS: mostly
hypodense metastasis-like (20-70 HU below the liver) with a heterogeneous fill, some
with an enhancing rim or a necrotic centre at fluid density (5-20 HU); a minority
hyperdense or near-isodense inside a hypodense halo. Equivalent diameters are
log-normal over 5-120 mm; lesions lie anywhere in the liver (dome and left lobe
included) and some are exophytic: their bulge into the fat is labelled tumour, so it
extends the labelled organ (``label > 0``). No labelled tumour component is under 10
voxels or 5 mm equivalent diameter at the generated resolution (6-connected, which
implies it for 26-connectivity too): smaller ones stay in the image unlabelled, as an
annotator would leave them. Partial-volume blur, Gaussian noise (8-14 HU) and streaks
finish the image.

Arrays are in featsup's processing order ``(D, H, W)``: axial slices from inferior to
superior, rows from anterior to posterior, columns from the patient's right to left
(``volume[d]`` shows as a radiological axial slice). Spacing is given in the same order.
Labels follow LiTS: 0 background, 1 liver, 2 tumour.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from featsup._checks import check_positive, check_type
from featsup.data import _phantom_anatomy as anatomy
from featsup.data import _phantom_lesions as lesions
from featsup.data import _phantom_liver as liver
from featsup.data._phantom_shapes import Grid, gaussian_noise_gain

__all__ = ["FIELD_OF_VIEW_MM", "Phantom", "make_phantom", "write_phantom_dataset"]

#: Craniocaudal extent and in-plane field of view (mm) covered when ``spacing`` is None.
FIELD_OF_VIEW_MM = (250.0, 360.0, 360.0)
_BLUR_SIGMA = (0.45, 0.7, 0.7)  # partial-volume blur, in voxels (D, H, W)
_TRUNCATE = 3.0
# Recorded in a dataset's phantom.json: bump it whenever make_phantom's output changes, so
# that write_phantom_dataset(reuse=True) does not keep cases of an older phantom.
PHANTOM_VERSION = 2


class Phantom(NamedTuple):
    """One synthetic CT case (unpacks as ``volume, labels, spacing``)."""

    volume: np.ndarray
    """(D, H, W) int16 Hounsfield units."""
    labels: np.ndarray
    """(D, H, W) uint8 labels: 0 background, 1 liver, 2 tumour."""
    spacing: tuple[float, float, float]
    """Voxel spacing in mm along (D, H, W)."""


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(v) != v or v < 8 for v in shape):
        raise ValueError(
            f"shape: expected three integers >= 8 as (D, H, W), got {tuple(shape)!r}; "
            "fix: pass for example (64, 128, 128)"
        )
    return int(shape[0]), int(shape[1]), int(shape[2])


def _resolve_spacing(
    spacing: Sequence[float] | None, shape: tuple[int, int, int]
) -> tuple[float, float, float]:
    if spacing is None:
        return tuple(float(f / n) for f, n in zip(FIELD_OF_VIEW_MM, shape, strict=True))  # type: ignore[return-value]
    if len(spacing) != 3:
        raise ValueError(f"spacing: expected three numbers (D, H, W) in mm, got {spacing!r}")
    for v in spacing:
        check_positive("spacing", float(v))
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


def make_phantom(
    seed: int,
    shape: Sequence[int] = (100, 512, 512),
    *,
    spacing: Sequence[float] | None = None,
    noise_std: float | None = None,
) -> Phantom:
    """Make one synthetic abdominal CT volume with liver and tumour labels.

    The same ``seed`` and ``shape`` always give the same volume. A 512 x 512 x 100 volume
    takes a couple of seconds on one CPU core, a 48 x 256 x 256 one about a quarter of a
    second. Which lesions are labelled depends on the resolution: one under 10 voxels or
    5 mm equivalent diameter is painted but left unlabelled.

    Args:
        seed: random seed of the case (its anatomy, tumours and noise).
        shape: ``(D, H, W)`` number of slices, rows and columns.
        spacing: ``(D, H, W)`` voxel spacing in mm. None fits the standard field of view
            ``FIELD_OF_VIEW_MM`` (250 mm craniocaudal, 360 mm in-plane): for the default
            shape that is about 2.5 x 0.7 x 0.7 mm, as in LiTS. An explicit spacing keeps
            the anatomy at its physical size, so a small field of view shows only the
            centre of the body.
        noise_std: Gaussian noise level in HU; None draws 8-14 HU from the seed.

    Returns:
        A :class:`Phantom` ``(volume, labels, spacing)``: ``volume`` (D, H, W) int16 HU,
        ``labels`` (D, H, W) uint8 in {0, 1, 2}, ``spacing`` in mm along (D, H, W).

    Raises:
        ValueError: if ``shape``, ``spacing`` or ``noise_std`` is invalid.
        TypeError: if ``seed`` is not an integer.

    Example:
        >>> volume, labels, spacing = make_phantom(0, (32, 64, 64))
        >>> volume.shape, volume.dtype, labels.dtype
        ((32, 64, 64), dtype('int16'), dtype('uint8'))
        >>> sorted(set(labels.ravel().tolist())) <= [0, 1, 2]
        True
    """
    check_type("seed", seed, (int, np.integer))
    grid = Grid(_check_shape(shape), _resolve_spacing(spacing, _check_shape(shape)))
    if noise_std is not None:
        check_positive("noise_std", float(noise_std), strict=False)
    rng = np.random.default_rng(int(seed))
    an = anatomy.draw_anatomy(rng, grid.extent_z)
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    code = np.zeros(grid.shape, dtype=np.uint8)
    cavity, scale = anatomy.paint_body(rng, grid, an, hu)
    anatomy.paint_spine_and_vessels(grid, an, hu, code)
    anatomy.paint_organs(rng, grid, an, hu, code, cavity)
    anatomy.paint_lungs(rng, grid, an, hu, code, cavity)
    anatomy.paint_bowel(rng, grid, an, hu, code, cavity)
    box = liver.paint_liver(rng, grid, an, hu, code, cavity)
    if box is not None:
        liver.paint_liver_vessels(rng, grid, an, hu, code, box)
        lesions.paint_tumours(rng, grid, an, hu, code, box, cavity)
    liver.paint_ribs(rng, grid, an, hu, code, scale)
    lut = np.zeros(256, dtype=np.uint8)
    lut[anatomy.LIVER], lut[anatomy.TUMOUR] = 1, 2
    sd = float(rng.uniform(8.0, 14.0)) if noise_std is None else float(noise_std)
    volume = _finish(rng, grid, an, hu, sd)
    return Phantom(volume, lut[code], grid.spacing)


def _finish(
    rng: np.random.Generator, grid: Grid, an: anatomy.Anatomy, hu: np.ndarray, noise_std: float
) -> np.ndarray:
    """Noise, partial-volume blur (which also correlates the noise), streaks, int16."""
    gain = gaussian_noise_gain(_BLUR_SIGMA, _TRUNCATE)
    if noise_std > 0:
        noise = rng.standard_normal(grid.shape, dtype=np.float32)
        noise *= np.float32(noise_std / gain)
        hu += noise
        del noise
    hu = ndimage.gaussian_filter(hu, _BLUR_SIGMA, truncate=_TRUNCATE, output=np.float32)
    _add_streaks(rng, grid, an, hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    np.rint(hu, out=hu)
    return hu.astype(np.int16)


def _add_streaks(rng: np.random.Generator, grid: Grid, an: anatomy.Anatomy, hu: np.ndarray) -> None:
    """Bright and dark streaks radiating from the spine on some slices (beam hardening)."""
    y, x = grid.y[:, None], grid.x[None, :]
    dy, dx = y - an.yv, x
    falloff = np.exp(-np.sqrt(dy * dy + dx * dx) / 150.0).astype(np.float32)
    width = max(1.0, 1.2 * grid.spacing[2])
    for k in np.flatnonzero(rng.random(grid.shape[0]) < 0.2):
        for _ in range(int(rng.integers(2, 4))):
            t = float(rng.uniform(0.0, np.pi))
            dist = np.abs(dx * np.float32(np.sin(t)) - dy * np.float32(np.cos(t)))
            amp = float(rng.choice([-1.0, 1.0]) * rng.uniform(15.0, 45.0))
            hu[k] += amp * falloff * np.exp(-((dist / width) ** 2))


def _write_case(
    folder: Path, index: int, seed: int, shape: tuple[int, int, int], spacing, axcodes, ext
) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    from featsup.data._orient import nibabel, processing_affine

    nib = nibabel()
    case = make_phantom(seed, shape, spacing=spacing)
    affine, ornt = processing_affine(case.spacing, shape, axcodes)
    paths = (folder / f"volume-{index}{ext}", folder / f"segmentation-{index}{ext}")
    for array, path in zip((case.volume, case.labels), paths, strict=True):
        disk = nib.orientations.apply_orientation(np.transpose(array, (2, 1, 0)), ornt)
        image = nib.Nifti1Image(np.ascontiguousarray(disk), affine)
        image.header.set_xyzt_units("mm", "sec")
        image.header.set_qform(affine, code=1)
        image.header.set_sform(affine, code=1)
        nib.save(image, str(path))
    return paths


def write_phantom_dataset(
    folder: str | os.PathLike[str],
    n_cases: int,
    *,
    seed: int = 0,
    shape: Sequence[int] = (100, 512, 512),
    spacing: Sequence[float] | None = None,
    axcodes: str | Sequence[str] = "LPS",
    compress: bool = True,
    start_index: int = 0,
    num_workers: int = 0,
    reuse: bool = False,
) -> list[tuple[Path, Path]]:
    """Write ``n_cases`` phantoms in LiTS layout: ``volume-N.nii.gz``, ``segmentation-N.nii.gz``.

    Case ``N`` (counting from ``start_index``) is ``make_phantom(seed + N - start_index,
    shape, spacing=spacing)``. Volumes are stored as int16 HU, segmentations as uint8,
    with an affine that carries the spacing and maps the voxels to RAS+ millimetres.

    Args:
        folder: output folder, created if needed.
        n_cases: number of cases.
        seed: seed of the first case.
        shape: ``(D, H, W)`` of each case in processing order.
        spacing: ``(D, H, W)`` spacing in mm, or None for the standard field of view.
        axcodes: voxel axis codes on disk, for example ``"LPS"`` (DICOM-like, the default),
            ``"RAS"`` or ``"LAI"``. Loading with ``featsup.data.load_case`` gives the same
            processing arrays whatever is chosen.
        compress: write ``.nii.gz`` (True) or ``.nii``.
        start_index: number ``N`` of the first case.
        num_workers: processes to use (0 = this process).
        reuse: keep the cases already in ``folder`` that its ``phantom.json`` (written
            with every dataset) records with these very settings, whatever their number
            (case N is the same phantom in a dataset of any size), and write only the
            others: asking for fewer cases writes nothing, asking for more writes the
            new ones. Without a matching record every case is written.

    Returns:
        The ``(volume_path, segmentation_path)`` pairs, in case order.

    Raises:
        ValueError: if ``n_cases`` or another option is invalid.

    Example:
        >>> import tempfile
        >>> pairs = write_phantom_dataset(tempfile.mkdtemp(), 2, shape=(16, 32, 32))
        >>> [p.name for p in pairs[1]]
        ['volume-1.nii.gz', 'segmentation-1.nii.gz']
    """
    check_positive("n_cases", n_cases)
    codes = tuple(axcodes)
    if len(codes) != 3 or {c.upper() for c in codes} - set("LRAPSI"):
        raise ValueError(f"axcodes: expected three of L/R, A/P, S/I such as 'LPS', got {axcodes!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    shp = _check_shape(shape)
    ext = ".nii.gz" if compress else ".nii"
    jobs = [(out, start_index + i, seed + i, shp, spacing, codes, ext) for i in range(n_cases)]
    fields = [seed, shp, spacing, codes, ext, start_index, PHANTOM_VERSION]
    settings = json.dumps([n_cases, *fields], default=list)
    record = out / "phantom.json"
    pairs = [(out / f"volume-{j[1]}{ext}", out / f"segmentation-{j[1]}{ext}") for j in jobs]
    covered = _recorded_cases(record, settings) if reuse else 0
    todo = [j for i, (j, (a, b)) in enumerate(zip(jobs, pairs, strict=True))
            if i >= covered or not (a.is_file() and b.is_file())]  # fmt: skip
    if not todo:
        return pairs
    record.unlink(missing_ok=True)  # no record of a half-written dataset
    if num_workers > 0 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            list(pool.map(_write_case, *zip(*todo, strict=True)))
    else:
        for job in todo:
            _write_case(*job)
    record.write_text(json.dumps([max(covered, n_cases), *fields], default=list))
    return pairs


def _recorded_cases(record: Path, settings: str) -> int:
    """The cases ``record`` (a ``phantom.json``) holds with ``settings``, their count aside.

    0 when it is missing, unreadable or records other settings.
    """
    try:
        old, new = json.loads(record.read_text()), json.loads(settings)
    except (OSError, ValueError):
        return 0
    if not isinstance(old, list) or len(old) != len(new) or old[1:] != new[1:]:
        return 0
    return int(old[0]) if isinstance(old[0], int) and old[0] > 0 else 0
