"""Liver lesions of the synthetic CT phantom, drawn and labelled as in LiTS.

Zero to ten lesions per case (none drawn in 12 % of cases). Equivalent diameters (of the
sphere of the same volume) are log-normal, median 17 mm and log-sd 0.8, redrawn outside
5-120 mm. Centres lie anywhere in the liver: 48 % uniformly over its voxels, 12 % in its
upper quarter (the dome), 10 % in the left lobe, 15 % on its surface facing any
direction and 15 % on the part of the surface next to visceral fat. Surface lesions may
grow into that fat (exophytic); the bulge is tumour, so it extends the labelled organ
(``label > 0``) as in LiTS. Kinds, in the portal-venous phase:

- hypodense, metastasis-like (72 %, and every lesion under 12 mm): 20-70 HU below the
  liver, 35-70 HU under 12 mm;
- hyperdense (14 %, 12 mm and over; near-isodense draws under 20 mm too): 20-45 HU above;
- near-isodense (14 %, 20 mm and over): 4-12 HU off the liver inside a hypodense halo
  2.5-6 mm thick (a target sign), so that it still shows.

Every fill is heterogeneous (a smooth texture of 4-10 HU, the same field that lobulates
the outline). A third of the other lesions of 15 mm and over have an enhancing rim
1.5-3 mm thick, 5-30 HU above the liver; half of those of 25 mm and over a necrotic
centre at fluid density (5-20 HU, never fat).

Labels: any 6-connected tumour component under 10 voxels or under 5 mm equivalent
diameter after clipping loses its label (it stays in the image, as an annotator would
leave it), so every labelled component also passes both limits under 26-connectivity.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from featsup.data._phantom_anatomy import LIVER, TUMOUR, Anatomy, diaphragm_z
from featsup.data._phantom_shapes import (
    Box,
    Grid,
    Vec,
    ellipsoid_q,
    face_neighbours,
    paint,
    smooth_field,
)

MIN_VOXELS = 10  #: smallest labelled tumour component, voxels (6-connectivity)
MIN_DIAMETER_MM = 5.0  #: smallest labelled equivalent diameter
MAX_DIAMETER_MM = 120.0
_COUNT_P = (0.12, 0.2, 0.16, 0.13, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03, 0.03)  # 0..10 lesions
_KIND_P = (0.72, 0.14, 0.14)  # hypodense, hyperdense, near-isodense
# lesion centres: next to fat (exophytic), on the surface, dome, left lobe, anywhere
_SITES, _SITE_P = ("fat", "surface", "dome", "left", "liver"), (0.15, 0.15, 0.12, 0.1, 0.48)


def equivalent_diameter(voxels: np.ndarray | int, spacing: Vec) -> np.ndarray:
    """Diameter (mm) of the sphere with the volume of ``voxels`` voxels of ``spacing``."""
    volume = np.asarray(voxels, dtype=np.float64) * float(np.prod(spacing))
    return np.cbrt(6.0 * volume / np.pi)


def draw_diameter(rng: np.random.Generator) -> float:
    """Log-normal equivalent diameter in mm, truncated to 5-120 mm."""
    while True:
        d = float(rng.lognormal(np.log(17.0), 0.8))
        if MIN_DIAMETER_MM <= d <= MAX_DIAMETER_MM:
            return d


def paint_tumours(
    rng: np.random.Generator,
    grid: Grid,
    an: Anatomy,
    hu: np.ndarray,
    code: np.ndarray,
    box: Box,
    cavity: np.ndarray,
) -> int:
    """Paint this case's lesions into ``hu`` and ``code``; returns the labelled components.

    Args:
        rng: the case's generator.
        grid: the voxel grid.
        an: the case's anatomy.
        hu: (D, H, W) float32 Hounsfield units, painted in place.
        code: (D, H, W) uint8 organ codes, painted in place.
        box: the liver's bounding box.
        cavity: (D, H, W) bool abdominal cavity (where an exophytic bulge may grow).
    """
    n = int(rng.choice(len(_COUNT_P), p=_COUNT_P))
    liver = code[box] == LIVER
    if n == 0 or not liver.any():
        return 0
    was_liver = code == LIVER
    room = (code == 0) & cavity  # visceral fat inside the cavity
    below = diaphragm_z(grid, an) - 3.0  # (H, W): no bulge through the diaphragm
    sites = _Sites(liver, room[box], grid.x[box[2]])
    for _ in range(n):
        site, diameter = _SITES[int(rng.choice(len(_SITES), p=_SITE_P))], draw_diameter(rng)
        centre = _pick(rng, grid, box, sites[site])
        bulge = room if site in ("fat", "surface") else None
        _paint_lesion(rng, grid, an, hu, code, centre, diameter, was_liver, bulge, below)
    return drop_unlabellable(grid, code, was_liver)


class _Sites(dict[str, np.ndarray]):
    """Candidate lesion centres on the liver box, each mask computed when first asked for.

    ``liver`` anywhere; ``dome`` in the upper quarter of the liver's slices; ``left``
    15 mm and more left of the midline (the left lobe); ``surface`` on its 6-connected
    boundary, facing any direction; ``fat`` on the part of that boundary next to
    visceral fat, where an exophytic lesion has room to bulge. An empty choice falls
    back to ``surface`` or ``liver``.
    """

    def __init__(self, liver: np.ndarray, room: np.ndarray, x: np.ndarray) -> None:
        super().__init__(liver=liver)
        self.room, self.x = room, x

    def __missing__(self, key: str) -> np.ndarray:
        liver = self["liver"]
        if key == "dome":
            rows = np.flatnonzero(liver.any(axis=(1, 2)))
            mask = liver.copy()
            mask[: rows[0] + int(0.75 * (rows[-1] - rows[0] + 1))] = False
        elif key == "left":
            mask = liver & (self.x > 15.0)[None, None, :]
        elif key == "surface":
            mask = liver & ~face_neighbours(liver, every=True)
        else:
            mask = self["surface"] & face_neighbours(self.room, every=False)
        if not mask.any():
            mask = self["surface" if key == "fat" else "liver"]
        self[key] = mask
        return mask


def _pick(rng: np.random.Generator, grid: Grid, box: Box, mask: np.ndarray) -> np.ndarray:
    """Millimetre position of a random voxel of the non-empty ``mask`` (given on ``box``)."""
    k = np.unravel_index(int(rng.choice(np.flatnonzero(mask))), mask.shape)
    axes = (grid.z[box[0]], grid.y[box[1]], grid.x[box[2]])
    return np.array([axes[a][k[a]] for a in range(3)], dtype=np.float32)


def _paint_lesion(
    rng: np.random.Generator,
    grid: Grid,
    an: Anatomy,
    hu: np.ndarray,
    code: np.ndarray,
    centre: np.ndarray,
    diameter: float,
    was_liver: np.ndarray,
    bulge: np.ndarray | None,
    below: np.ndarray,
) -> None:
    """One lobulated lesion of ``diameter`` mm; ``bulge`` is where it may leave the liver."""
    aspect = rng.uniform(0.8, 1.25, size=3)
    radii = 0.5 * diameter * aspect / np.cbrt(aspect.prod())
    reach = 1.3 * float(radii.max()) + max(grid.spacing)
    box = grid.box(centre - reach, centre + reach)
    if box is None:
        return
    q = ellipsoid_q(grid, box, centre, radii, float(rng.uniform(0, np.pi)))
    if diameter > 8.0:  # one smooth field lobulates the outline and textures the fill
        field = smooth_field(rng, grid, box, 0.3 * diameter)
        q *= 1.0 + 0.15 * field
    else:
        field = np.zeros(q.shape, dtype=np.float32)
    fill = _fill(rng, an, q, field, diameter)
    inside = q < 1
    view = code[box]
    mask = inside & ((view == LIVER) | (view == TUMOUR))
    if bulge is not None:
        zz = grid.coords(box)[0]
        outside = inside & bulge[box] & (zz < below[box[1], box[2]][None])
        mask = _attached(mask | outside, was_liver[box])
    paint(hu, box, mask, fill)
    code[box][mask] = TUMOUR


def _attached(mask: np.ndarray, liver: np.ndarray) -> np.ndarray:
    """The components of ``mask`` that overlap ``liver`` (no bulge floats free)."""
    components, n = ndimage.label(mask)
    keep = np.zeros(n + 1, dtype=bool)
    keep[components[mask & liver]] = True
    keep[0] = False
    return keep[components]


def _fill(
    rng: np.random.Generator, an: Anatomy, q: np.ndarray, texture: np.ndarray, diameter: float
) -> np.ndarray:
    """Heterogeneous lesion HU (``q``'s box): kind, texture, rim or halo, necrotic centre."""
    kind = int(rng.choice(3, p=_KIND_P)) if diameter >= 12.0 else 0  # small: hypodense
    if kind == 2 and diameter < 20.0:
        kind = 1  # a small near-isodense lesion would hardly show
    if kind == 0:
        contrast = -float(rng.uniform(35.0 if diameter < 12.0 else 20.0, 70.0))
    elif kind == 1:
        contrast = float(rng.uniform(20.0, 45.0))
    else:
        contrast = float(rng.choice([-1.0, 1.0]) * rng.uniform(4.0, 12.0))
    fill = an.liver_hu + contrast + float(rng.uniform(4.0, 10.0)) * texture

    def inner(thickness: float) -> float:  # q at ``thickness`` mm inside the edge
        return float((1.0 - thickness / (0.5 * diameter)) ** 2)

    if kind == 2:  # hypodense halo (target sign)
        halo = q > inner(float(np.clip(0.12 * diameter, 2.5, 6.0)))
        fill[halo] = an.liver_hu - float(rng.uniform(35.0, 50.0))
    elif diameter >= 15.0 and rng.random() < 0.35:  # enhancing rim
        rim = q > inner(float(np.clip(0.06 * diameter, 1.5, 3.0)))
        fill[rim] = an.liver_hu + float(rng.uniform(5.0, 30.0))
    if kind != 2 and diameter >= 25.0 and rng.random() < 0.5:
        core = q * (1.0 + 0.3 * texture) < float(rng.uniform(0.12, 0.35))
        fill[core] = float(rng.uniform(5.0, 20.0)) + 3.0 * texture[core]  # fluid, never fat
    return fill.astype(np.float32, copy=False)


def drop_unlabellable(grid: Grid, code: np.ndarray, was_liver: np.ndarray) -> int:
    """Unlabel tumour components under 10 voxels or 5 mm; returns how many stay labelled.

    Components are 6-connected (``scipy.ndimage.label``'s default), the strictest choice:
    a 26-connected component is a union of 6-connected ones, so it passes too. Unlabelled
    voxels go back to liver where they were liver and to background elsewhere.
    """
    tumour = code == TUMOUR
    if not tumour.any():
        return 0
    bb = tuple(
        slice(int(i[0]), int(i[-1]) + 1)
        for i in (np.flatnonzero(tumour.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    )
    components, n = ndimage.label(tumour[bb])
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    small = (sizes < MIN_VOXELS) | (equivalent_diameter(sizes, grid.spacing) < MIN_DIAMETER_MM)
    small[0] = False
    drop = small[components]
    if drop.any():
        view = code[bb]
        view[drop] = np.where(was_liver[bb][drop], LIVER, 0).astype(np.uint8)
    return int(n - small[1:].sum())
