"""Liver, gallbladder, liver vessels and ribs of the synthetic CT phantom.

The liver lesions live in ``_phantom_lesions``.
"""

from __future__ import annotations

import numpy as np

from featsup.data._phantom_anatomy import (
    BONE,
    BOWEL,
    GALL,
    LIVER,
    Anatomy,
    code_in,
    diaphragm_z,
    paint_organ,
)
from featsup.data._phantom_shapes import (
    Box,
    Grid,
    capsule_mask,
    ellipsoid_q,
    paint,
    smooth_field,
)
from featsup.data._roi import largest_connected_component


def paint_liver(
    rng: np.random.Generator,
    grid: Grid,
    an: Anatomy,
    hu: np.ndarray,
    code: np.ndarray,
    cavity: np.ndarray,
) -> Box | None:
    """Right, left and caudate lobes with an irregular boundary under the diaphragm dome."""
    s, d, h = an.s, an.dome_z, an.liver_h
    box = grid.box((d - h - 15, -135 * s, -170 * s), (d + 5, 110 * s, 120 * s))
    if box is None:
        return None
    j = rng.uniform(0.88, 1.12, size=5)
    lobes = (
        ((d - h / 2, 0.0, -66 * s), (h / 2, 86 * s * j[0], 72 * s * j[1]), 0.15),
        ((d - 0.3 * h, -58 * s, 22 * s), (0.28 * h, 38 * s * j[2], 88 * s * j[3]), -0.3),
        ((d - 0.45 * h, 22 * s, -8 * s), (0.2 * h, 20 * s, 22 * s * j[4]), 0.0),
    )
    gall_c = (d - 0.72 * h, -38 * s, -38 * s)
    r = 28 * s
    gbox = grid.box(np.subtract(gall_c, r), np.add(gall_c, r))
    if gbox is not None and rng.random() < 0.8:
        gq = ellipsoid_q(grid, gbox, gall_c, (28 * s, 15 * s, 13 * s), 0.4)
        gq = np.where(cavity[gbox], gq, 2.0)
        paint_organ(grid, hu, code, (gbox, gq), float(rng.uniform(0, 20)), GALL, (0, BOWEL))
    q = ellipsoid_q(grid, box, *lobes[0])
    for lobe in lobes[1:]:
        np.minimum(q, ellipsoid_q(grid, box, *lobe), out=q)
    q *= 1.0 + 0.16 * smooth_field(rng, grid, box, 30.0)
    zz = grid.coords(box)[0]
    below = zz < diaphragm_z(grid, an)[box[1], box[2]][None] - 3.0
    mask = (q < 1) & cavity[box] & below & code_in(code[box], (0, BOWEL))
    texture = an.liver_hu + 3.0 * smooth_field(rng, grid, box, 20.0)
    mask &= largest_connected_component(
        mask
    )  # one organ: drop slivers cut off by the wall or the diaphragm
    paint(hu, box, mask, texture)
    code[box][mask] = LIVER
    return box


def liver_points(
    rng: np.random.Generator, grid: Grid, box: Box, code: np.ndarray, n: int, *, top: float = 1e9
) -> np.ndarray:
    """``n`` random liver voxel positions below height ``top``, in mm, shape ``(n, 3)``."""
    lb = code[box] == LIVER
    if top < 1e9:
        lb &= grid.coords(box)[0] < top
    idx = np.flatnonzero(lb)
    if idx.size == 0:
        return np.zeros((0, 3), dtype=np.float32)
    pick = np.unravel_index(rng.choice(idx, size=n), lb.shape)
    axes = (grid.z[box[0]], grid.y[box[1]], grid.x[box[2]])
    return np.stack([axes[a][pick[a]] for a in range(3)], axis=1)


def paint_liver_vessels(
    rng: np.random.Generator, grid: Grid, an: Anatomy, hu: np.ndarray, code: np.ndarray, box: Box
) -> None:
    """Portal branches from the hilum and hepatic veins to the cava, at the vein HU."""
    s, d, h = an.s, an.dome_z, an.liver_h
    value = an.vein_hu
    hilum = np.array((d - 0.55 * h, 12 * s, -30 * s), np.float32)
    cava = np.array((d - 18 * s, an.yv - an.rv - 10 * s, -26 * s), np.float32)
    segments = []
    n = int(rng.integers(6, 10))
    points = liver_points(rng, grid, box, code, 2 * n)
    for p, q in zip(points[:n], points[n:], strict=True):
        segments.append((hilum, p, 5.5 * s, 1.5 * s))
        mid = 0.5 * (hilum + p)
        segments.append((mid, 0.5 * (mid + q), 2.5 * s, 1.0 * s))
    for p in liver_points(rng, grid, box, code, 3, top=d - 10.0):
        p = p.copy()
        p[0] = max(p[0], d - 0.4 * h)
        segments.append((cava, p, 4.5 * s, 1.5 * s))
    for p0, p1, r0, r1 in segments:
        tube = capsule_mask(grid, p0, p1, r0, r1)
        if tube is not None:
            tbox, mask = tube
            paint(hu, tbox, mask & (code[tbox] == LIVER), value)


def paint_ribs(
    rng: np.random.Generator,
    grid: Grid,
    an: Anatomy,
    hu: np.ndarray,
    code: np.ndarray,
    scale: np.ndarray,
) -> None:
    """Rib cross-sections inside the muscle wall of the lower chest and upper abdomen."""
    s = an.s
    angles = np.deg2rad(np.r_[np.linspace(-55, 60, 7), np.linspace(120, 235, 7)])
    phase = rng.uniform(0, 1, size=angles.size)
    shrink = an.fat_t + 0.5 * an.musc_t
    r = 5.0 * s
    period = 34.0 * s
    for k in np.flatnonzero(grid.z > an.dome_z - 150 * s):
        z = float(grid.z[k])
        a, b = an.a * scale[k] - shrink, an.b_post * scale[k] - shrink
        bant = an.b_ant * scale[k] - shrink
        for t, ph in zip(angles, phase, strict=True):
            if np.sin(2 * np.pi * (z / period + ph + 0.3 * t)) < 0.25:
                continue
            cy = an.y0 + (b if np.sin(t) > 0 else bant) * np.sin(t)
            cx = a * np.cos(t)
            box = grid.box((z, cy - r, cx - r), (z, cy + r, cx + r))
            if box is None:
                continue
            _, yy, xx = grid.coords(box)
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            free = code[box] < LIVER  # 0 only: never paint bone over an organ
            paint(hu, box, (d2 < r * r) & free, 900.0)
            paint(hu, box, (d2 < (r - 2) ** 2) & free, 320.0)
            code[box][(d2 < r * r) & free] = BONE
