"""Abdominal anatomy of the synthetic CT phantom, painted organ by organ.

The painters write Hounsfield units into a float32 volume and organ codes into a uint8
``code`` volume (processing order ``(D, H, W)``, see ``_phantom_shapes``). Code 1 is the
liver and 2 a liver tumour, as in LiTS; the other codes only keep organs from overlapping
and become background in the label volume.

Every case is one portal-venous contrast phase (about 70 s after injection): liver
parenchyma 100-120 HU, portal and hepatic veins, aorta and heart blood 150-200 HU, spleen
100-130 HU, renal cortex 150-200 HU over a darker medulla, enhancing bowel and gastric
walls, muscle 42-58 HU and fat -118 to -82 HU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featsup.data._phantom_shapes import (
    Grid,
    ellipsoid_q,
    paint,
    smooth_curve,
    smooth_field,
)

LIVER, TUMOUR, KIDNEY, SPLEEN, STOMACH, HEART, VESSEL, BONE, BOWEL, LUNG, GALL = range(1, 12)


@dataclass(frozen=True)
class Anatomy:
    """Per-case anatomical parameters (millimetres and Hounsfield units)."""

    s: float  # patient size factor
    a: float  # body half-width
    b_ant: float  # body half-depth, anterior
    b_post: float  # body half-depth, posterior
    y0: float  # body centre row
    fat_t: float  # subcutaneous fat thickness
    musc_t: float  # abdominal wall muscle thickness
    dome_z: float  # height of the right diaphragm dome (top of the liver)
    liver_h: float  # craniocaudal liver extent
    liver_hu: float  # parenchyma, portal-venous phase
    spleen_hu: float
    kidney_hu: float  # renal cortex
    muscle_hu: float
    fat_hu: float  # subcutaneous fat; visceral fat is 8 HU denser
    aorta_hu: float
    vein_hu: float  # portal and hepatic veins; the vena cava mixes to 15 HU less
    wall_hu: float  # enhancing bowel and gastric wall

    @property
    def visceral_fat_hu(self) -> float:
        """Visceral (intra-abdominal) fat, a little denser than subcutaneous fat."""
        return self.fat_hu + 8.0

    @property
    def yv(self) -> float:
        """Row of the vertebral body centre."""
        return self.y0 + self.b_post - 62.0 * self.s

    @property
    def rv(self) -> float:
        """Radius of the vertebral body."""
        return 17.0 * self.s


def draw_anatomy(rng: np.random.Generator, extent_z: float) -> Anatomy:
    """Draw one patient's anatomy; ``extent_z`` is the scanned craniocaudal length in mm."""
    s = float(rng.uniform(0.88, 1.06))
    return Anatomy(
        s=s,
        a=160.0 * s * rng.uniform(0.95, 1.04),
        b_ant=118.0 * s * rng.uniform(0.92, 1.05),
        b_post=98.0 * s,
        y0=float(rng.uniform(-12.0, 0.0)),
        fat_t=float(rng.uniform(10.0, 28.0)),
        musc_t=float(rng.uniform(8.0, 13.0)),
        dome_z=extent_z * float(rng.uniform(0.8, 0.92)),
        liver_h=float(rng.uniform(140.0, 180.0)) * s,
        liver_hu=float(rng.uniform(100.0, 120.0)),
        spleen_hu=float(rng.uniform(102.0, 128.0)),
        kidney_hu=float(rng.uniform(155.0, 195.0)),
        muscle_hu=float(rng.uniform(42.0, 55.0)),
        fat_hu=float(rng.uniform(-118.0, -92.0)),
        aorta_hu=float(rng.uniform(155.0, 195.0)),
        vein_hu=float(rng.uniform(155.0, 195.0)),
        wall_hu=float(rng.uniform(70.0, 100.0)),
    )


def body_q(grid: Grid, an: Anatomy, scale: np.ndarray, shrink: float) -> np.ndarray:
    """Normalised radius of the body ellipse, semi-axes reduced by ``shrink`` mm, (D, H, W)."""
    ax = (an.a * scale - shrink).astype(np.float32)
    dy = (grid.y - np.float32(an.y0))[None, :]
    ya = dy / (an.b_ant * scale - shrink).astype(np.float32)[:, None]
    yp = dy / (an.b_post * scale - shrink).astype(np.float32)[:, None]
    yt = np.where(dy < 0, ya, yp) ** 2
    xt = (grid.x[None, :] / ax[:, None]) ** 2
    return np.add(xt[:, None, :], yt[:, :, None], dtype=np.float32)


def paint_body(
    rng: np.random.Generator, grid: Grid, an: Anatomy, hu: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Air outside, subcutaneous fat, muscle wall, visceral fat; returns (cavity, scale)."""
    scale = 1.0 + 0.03 * smooth_curve(rng, grid.shape[0], 40.0 / grid.spacing[0])
    hu[body_q(grid, an, scale, 0.0) < 1] = an.fat_hu
    hu[body_q(grid, an, scale, an.fat_t) < 1] = an.muscle_hu
    cavity = body_q(grid, an, scale, an.fat_t + an.musc_t) < 1
    hu[cavity] = an.visceral_fat_hu
    return cavity, scale


def _disk(grid: Grid, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = grid.y[:, None], grid.x[None, :]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1


def paint_spine_and_vessels(grid: Grid, an: Anatomy, hu: np.ndarray, code: np.ndarray) -> None:
    """Paraspinal muscles, vertebra with discs, spinal canal, aorta and vena cava."""
    s, yv, rv = an.s, an.yv, an.rv
    yc = yv + rv + 10.0 * s
    for side in (-1.0, 1.0):
        hu[:, _disk(grid, yc + 14 * s, side * 36 * s, 22 * s, 28 * s)] = an.muscle_hu + 3
    lamina = _disk(grid, yc, 0.0, 14 * s, 14 * s) | _disk(grid, yc + 26 * s, 0, 14 * s, 5 * s)
    hu[:, lamina], code[:, lamina] = 700.0, BONE
    hu[:, _disk(grid, yc, 0.0, 8 * s, 8 * s)] = 15.0
    body = _disk(grid, yv, 0.0, rv, rv)
    hu[:, body], code[:, body] = 850.0, BONE
    hu[:, _disk(grid, yv, 0.0, rv - 2.5, rv - 2.5)] = 280.0
    discs = (grid.z + 11.0 * s) % (32.0 * s) < 7.0 * s
    for k in np.flatnonzero(discs):
        hu[k][body] = 85.0
    aorta = _disk(grid, yv - rv - 14 * s, 14 * s, 11 * s, 11 * s)
    ivc = _disk(grid, yv - rv - 10 * s, -26 * s, 10 * s, 14 * s)
    hu[:, aorta], code[:, aorta] = an.aorta_hu, VESSEL
    hu[:, ivc], code[:, ivc] = an.vein_hu - 15.0, VESSEL


def code_in(code: np.ndarray, allowed: tuple[int, ...]) -> np.ndarray:
    """``np.isin(code, allowed)`` for a few codes, by one comparison per code."""
    out = code == allowed[0]
    for c in allowed[1:]:
        out |= code == c
    return out


def paint_organ(
    grid: Grid,
    hu: np.ndarray,
    code: np.ndarray,
    q: tuple[tuple[slice, slice, slice], np.ndarray],
    value: float | np.ndarray,
    label: int,
    allowed: tuple[int, ...] = (0,),
) -> np.ndarray:
    """Paint ``q < 1`` where the code is in ``allowed``; returns the painted mask."""
    box, qv = q
    mask = (qv < 1) & code_in(code[box], allowed)
    paint(hu, box, mask, value)
    code[box][mask] = label
    return mask


def _ellipsoid(grid: Grid, center, radii, angle=0.0):  # type: ignore[no-untyped-def]
    r = max(radii)
    box = grid.box(np.subtract(center, r), np.add(center, r))
    if box is None:
        return None
    return box, ellipsoid_q(grid, box, center, radii, angle)


def paint_organs(
    rng: np.random.Generator,
    grid: Grid,
    an: Anatomy,
    hu: np.ndarray,
    code: np.ndarray,
    cavity: np.ndarray,
) -> None:
    """Kidneys (cortex, medulla, sinus fat), spleen, stomach with an air-fluid level, heart."""
    s, d = an.s, an.dome_z

    def _ell(center, radii, angle=0.0):  # type: ignore[no-untyped-def]
        q = _ellipsoid(grid, center, radii, angle)
        return None if q is None else (q[0], np.where(cavity[q[0]], q[1], np.float32(2.0)))

    for side, dz in ((-1.0, 0.0), (1.0, 15.0)):
        c = (d - 0.8 * an.liver_h + dz, an.yv + 4 * s, side * 74 * s)
        radii = (52 * s, 24 * s, 29 * s)
        q = _ell(c, radii, side * 0.5)
        if q is not None:
            box, qv = q
            layers = np.where(qv < 0.25, an.visceral_fat_hu, an.kidney_hu - 40.0)
            paint_organ(grid, hu, code, q, np.where(qv > 0.5, an.kidney_hu, layers), KIDNEY)
    spleen = _ell((d - 55 * s, 28 * s, 96 * s), (55 * s, 55 * s, 24 * s), -0.7)
    if spleen is not None:
        paint_organ(grid, hu, code, spleen, an.spleen_hu, SPLEEN)
    stomach = _ell((d - 50 * s, -24 * s, 58 * s), (45 * s, 34 * s, 40 * s))
    if stomach is not None:
        box, qv = stomach
        level = float(rng.uniform(-50.0, -25.0)) * s
        content = np.where(grid.coords(box)[1] < level, -950.0, 15.0)
        content = np.where(qv > 0.75, an.wall_hu, content).astype(np.float32)
        paint_organ(grid, hu, code, stomach, content, STOMACH)
    heart = _ell((d + 48 * s, -30 * s, 25 * s), (55 * s, 55 * s, 65 * s))
    if heart is not None:
        box, qv = heart
        blood = np.where(qv < 0.45, an.aorta_hu, an.muscle_hu + 45.0)  # blood pool, myocardium
        paint_organ(grid, hu, code, heart, blood, HEART)


def diaphragm_z(grid: Grid, an: Anatomy) -> np.ndarray:
    """Height of the diaphragm under each in-plane position, (H, W), in mm."""
    y, x = grid.y[:, None], grid.x[None, :]
    right = an.dome_z - ((x + 70 * an.s) ** 2 + (y - 10) ** 2) / (2 * 170 * an.s)
    left = an.dome_z - 12.0 - ((x - 70 * an.s) ** 2 + (y - 10) ** 2) / (2 * 170 * an.s)
    return np.maximum(right, left).astype(np.float32)


def paint_lungs(
    rng: np.random.Generator,
    grid: Grid,
    an: Anatomy,
    hu: np.ndarray,
    code: np.ndarray,
    cavity: np.ndarray,
) -> None:
    """Lung bases above the diaphragm, excluding the mediastinum."""
    zd = diaphragm_z(grid, an)
    box = grid.box((float(zd.min()), -1e4, -1e4), (1e4, 1e4, 1e4))
    if box is None:
        return
    zz = grid.coords(box)[0]
    outside_mediastinum = (np.abs(grid.x) > 32 * an.s)[None, None, :]
    mask = (zz > zd[None]) & (code[box] == 0) & outside_mediastinum & cavity[box]
    texture = -860.0 + 25.0 * smooth_field(rng, grid, box, 15.0)
    paint(hu, box, mask, texture)
    code[box][mask] = LUNG


def paint_bowel(
    rng: np.random.Generator,
    grid: Grid,
    an: Anatomy,
    hu: np.ndarray,
    code: np.ndarray,
    cavity: np.ndarray,
) -> None:
    """Bowel loops (fluid or gas inside an enhancing wall), one near the liver tip."""
    s, top = an.s, an.dome_z - 0.35 * an.liver_h
    centres = [(an.dome_z - an.liver_h + 12 * s, -45 * s, -72 * s)]
    for _ in range(int(rng.integers(22, 34))):
        z = float(rng.uniform(top - 170.0 * s, top))
        centres.append((z, float(rng.uniform(-90, 25)) * s, float(rng.uniform(-110, 110)) * s))
    for c in centres:
        r = float(rng.uniform(14.0, 28.0)) * s
        q = _ellipsoid(grid, c, (r * 1.6, r, r * rng.uniform(0.8, 1.3)), float(rng.uniform(0, 3)))
        if q is None:
            continue
        fill = -950.0 if rng.random() < 0.3 else float(rng.uniform(0.0, 35.0))
        value = np.where(q[1] > 0.65, an.wall_hu, fill).astype(np.float32)
        box = q[0]
        paint_organ(grid, hu, code, (box, np.where(cavity[box], q[1], 2.0)), value, BOWEL)
