"""featsup: supervision-augmented UNet++ components for medical image segmentation."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
