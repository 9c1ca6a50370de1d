"""Geometry helpers for the synthetic CT phantom: a millimetre grid and cheap primitives.

Everything here works on the library's processing order ``(D, H, W)``: ``D`` runs from
inferior to superior, ``H`` from anterior to posterior and ``W`` from the patient's right
to the patient's left (the DICOM / ITK "LPS" voxel order read back to front). Physical
coordinates are in millimetres: ``z`` from the centre of the first slice, ``y`` and ``x``
from the centre of the slice. Shapes are evaluated only inside their bounding box so that
a full 512 x 512 x 100 volume stays cheap to build.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Box = tuple[slice, slice, slice]
Vec = Sequence[float] | np.ndarray  # a (z, y, x) triple in mm


@dataclass(frozen=True)
class Grid:
    """Voxel grid with millimetre coordinates along each axis (``z``, ``y``, ``x``)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def z(self) -> np.ndarray:
        """Slice positions in mm, 0 at the first (most inferior) slice."""
        return (np.arange(self.shape[0], dtype=np.float32) * self.spacing[0]).astype(np.float32)

    @property
    def y(self) -> np.ndarray:
        """Row positions in mm, 0 at the centre, positive towards posterior."""
        return self._centred(1)

    @property
    def x(self) -> np.ndarray:
        """Column positions in mm, 0 at the centre, positive towards the patient's left."""
        return self._centred(2)

    @property
    def extent_z(self) -> float:
        """Craniocaudal extent covered by the slices, in mm."""
        return float(self.shape[0] * self.spacing[0])

    def _centred(self, axis: int) -> np.ndarray:
        n, s = self.shape[axis], self.spacing[axis]
        return ((np.arange(n, dtype=np.float32) + 0.5 - n / 2.0) * s).astype(np.float32)

    def box(self, lo: Vec, hi: Vec) -> Box | None:
        """Index box covering the millimetre box ``[lo, hi]`` (z, y, x); None when empty."""
        out = []
        for axis, coords in enumerate((self.z, self.y, self.x)):
            start = int(np.searchsorted(coords, lo[axis], side="left"))
            stop = int(np.searchsorted(coords, hi[axis], side="right"))
            if stop <= start:
                return None
            out.append(slice(start, stop))
        return out[0], out[1], out[2]

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinates ``(d, 1, 1)``, ``(1, h, 1)``, ``(1, 1, w)`` of a box."""
        return (
            self.z[box[0]][:, None, None],
            self.y[box[1]][None, :, None],
            self.x[box[2]][None, None, :],
        )


def ellipsoid_q(
    grid: Grid,
    box: Box,
    center: Vec,
    radii: Vec,
    angle: float = 0.0,
) -> np.ndarray:
    """Normalised squared radius of an ellipsoid (``< 1`` inside), rotated in-plane.

    Args:
        grid: the voxel grid.
        box: where to evaluate it.
        center: ``(z, y, x)`` centre in mm.
        radii: ``(rz, ry, rx)`` semi-axes in mm.
        angle: in-plane rotation in radians.

    Returns:
        float32 array of the box's shape.
    """
    zz, yy, xx = grid.coords(box)
    dx, dy = xx - center[2], yy - center[1]
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    plane = ((c * dx + s * dy) / radii[2]) ** 2 + ((c * dy - s * dx) / radii[1]) ** 2
    return (plane + ((zz - center[0]) / radii[0]) ** 2).astype(np.float32, copy=False)


def smooth_curve(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """A smooth random 1D curve with unit standard deviation (Gaussian-filtered noise)."""
    pad = int(3 * sigma) + 1
    raw = ndimage.gaussian_filter1d(rng.standard_normal(n + 2 * pad), max(sigma, 0.5))
    curve = raw[pad : pad + n]
    return ((curve - curve.mean()) / (curve.std() + 1e-6)).astype(np.float32)


def smooth_field(
    rng: np.random.Generator, grid: Grid, box: Box, corr_mm: float, rank: int = 3
) -> np.ndarray:
    """A cheap smooth random 3D field of about unit std: a sum of separable products.

    Each term is ``gz(z) * gy(y) * gx(x)`` with smooth random 1D curves of correlation
    length ``corr_mm``; a few terms look like low-frequency noise at a fraction of the cost
    of filtering a full 3D noise volume.
    """
    shape = tuple(s.stop - s.start for s in box)
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(rank):
        gz, gy, gx = (
            smooth_curve(rng, shape[a], corr_mm / grid.spacing[a])[tuple(_axis_index(a))]
            for a in range(3)
        )
        field += gz * gy * gx
    return field / np.float32(np.sqrt(rank))


def _axis_index(axis: int) -> list[slice | None]:
    index: list[slice | None] = [None, None, None]
    index[axis] = slice(None)
    return index


def capsule_mask(
    grid: Grid,
    p0: Vec,
    p1: Vec,
    r0: float,
    r1: float,
) -> tuple[Box, np.ndarray] | None:
    """Mask of a tapered tube from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``), in mm."""
    a, b = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    r = max(r0, r1)
    box = grid.box(np.minimum(a, b) - r, np.maximum(a, b) + r)
    if box is None:
        return None
    zz, yy, xx = grid.coords(box)
    d = b - a
    length2 = float(d @ d) + 1e-6
    pz, py, px = zz - a[0], yy - a[1], xx - a[2]
    t = np.clip((pz * d[0] + py * d[1] + px * d[2]) / length2, 0.0, 1.0)
    dist2 = (pz - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (px - t * d[2]) ** 2
    radius = r0 + (r1 - r0) * t
    return box, dist2 < radius * radius


def face_neighbours(mask: np.ndarray, *, every: bool) -> np.ndarray:
    """Voxels whose six face neighbours are all (``every``) or any of them in ``mask``.

    Outside the array counts as not in ``mask``. ``every=True`` with ``& mask`` is a binary
    erosion by the 6-connected cross and ``every=False`` with ``| mask`` a dilation, with
    shifted boolean comparisons instead of ``scipy.ndimage``.
    """
    out = np.full(mask.shape, every, dtype=bool)
    for axis in range(3):
        head = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        tail = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        for dst, src in ((head, tail), (tail, head)):
            if every:
                out[dst] &= mask[src]
            else:
                out[dst] |= mask[src]
        if every:
            edge = [slice(None)] * 3
            for end in (0, -1):
                edge[axis] = slice(end, None if end == -1 else 1)
                out[tuple(edge)] = False
    return out


def paint(volume: np.ndarray, box: Box, mask: np.ndarray, value: float | np.ndarray) -> None:
    """Set ``volume[box][mask]`` to ``value`` (a scalar or an array of the box's shape)."""
    view = volume[box]
    if isinstance(value, np.ndarray):
        view[mask] = value[mask]
    else:
        view[mask] = value


def gaussian_noise_gain(sigma: Sequence[float], truncate: float) -> float:
    """How much a separable Gaussian blur scales the std of white noise (exact, discrete)."""
    gain = 1.0
    for s in sigma:
        if s <= 0:
            continue
        radius = int(truncate * s + 0.5)
        k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
        k /= k.sum()
        gain *= float(np.sqrt((k * k).sum()))
    return gain
