"""pydensecrf backend of the dense CRF (private; needs the ``crf`` extra)."""

from __future__ import annotations

from types import ModuleType

import numpy as np

from featsup.postprocess._crf_inputs import PROB_CLIP, CRFParams

__all__ = ["import_pydensecrf", "mean_field_pydensecrf", "pydensecrf_available"]

_INSTALL_HINT = 'pip install "featsup[crf]" (PyPI package pydensecrf2, builds on Python <= 3.12)'


def pydensecrf_available() -> bool:
    """Whether ``pydensecrf`` can be imported."""
    try:
        import_pydensecrf()
    except ImportError:
        return False
    return True


def import_pydensecrf() -> ModuleType:
    """Import ``pydensecrf.densecrf`` or raise an ImportError naming the extra."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"backend='pydensecrf': the pydensecrf module is not installed; {_INSTALL_HINT}, "
            "or use backend='torch'"
        ) from err
    return dcrf


def _positions(shape: tuple[int, ...], rel_spacing: tuple[float, ...]) -> np.ndarray:
    """(len(shape), prod(shape)) voxel positions in the unit of the thetas."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return np.stack(
        [g.reshape(-1) * np.float32(r) for g, r in zip(grids, rel_spacing, strict=True)]
    )


def mean_field_pydensecrf(
    probs: np.ndarray,
    image: np.ndarray,
    mask: np.ndarray | None,
    rel_spacing: tuple[float, ...],
    params: CRFParams,
) -> np.ndarray:
    """Dense CRF of one 2D slice or 3D volume with pydensecrf.

    2D fields without a mask use ``DenseCRF2D``; 3D fields and masked fields use the
    general ``DenseCRF`` with explicit features (only the voxels inside ``mask``). The
    appearance kernel takes a single intensity channel through ``addPairwiseEnergy``
    (``addPairwiseBilateral`` would need an RGB image and count the intensity three times).

    Args:
        probs: (K, *S) float32 probabilities, S of length 2 or 3.
        image: (*S) intensities.
        mask: (*S) bool voxels that take part, or None for all.
        rel_spacing: voxel size per spatial axis in the unit of the thetas.
        params: kernel parameters and number of iterations.

    Returns:
        (K, *S) float32 refined probabilities; outside ``mask`` the input is returned.
    """
    dcrf = import_pydensecrf()
    k, *spatial = probs.shape
    flat = probs.reshape(k, -1)
    keep = None if mask is None else np.flatnonzero(mask.reshape(-1))
    if keep is not None:
        flat = flat[:, keep]
    unary = np.ascontiguousarray(-np.log(np.clip(flat, PROB_CLIP, None)), dtype=np.float32)
    n = unary.shape[1]
    pos = _positions(tuple(spatial), rel_spacing)
    intensity = image.reshape(1, -1).astype(np.float32)
    if keep is not None:
        pos, intensity = pos[:, keep], intensity[:, keep]
    if len(spatial) == 2 and keep is None:
        crf = dcrf.DenseCRF2D(spatial[1], spatial[0], k)
        sx = params.theta_gamma / rel_spacing[1]
        sy = params.theta_gamma / rel_spacing[0]
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=(sx, sy), compat=params.w2)
    else:
        crf = dcrf.DenseCRF(n, k)
        crf.setUnaryEnergy(unary)
        # x first, like DenseCRF2D.addPairwiseGaussian: the lattice then gives the same result
        smooth = np.ascontiguousarray(pos[::-1] / np.float32(params.theta_gamma))
        crf.addPairwiseEnergy(smooth, compat=params.w2)
    appearance = np.concatenate(
        [pos / np.float32(params.theta_alpha), intensity / np.float32(params.theta_beta)]
    )
    crf.addPairwiseEnergy(np.ascontiguousarray(appearance, dtype=np.float32), compat=params.w1)
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    if keep is None:
        return q.reshape(probs.shape)
    out = probs.astype(np.float32, copy=True).reshape(k, -1)
    out[:, keep] = q
    return out.reshape(probs.shape)
