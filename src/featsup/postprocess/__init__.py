"""Post-processing of network probabilities: the dense CRF of paper section 4.1.4."""

from __future__ import annotations

from featsup.postprocess.crf import CRF_PRESETS, DenseCRF, crf_labels, dense_crf

__all__ = ["CRF_PRESETS", "DenseCRF", "crf_labels", "dense_crf"]
