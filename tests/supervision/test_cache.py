from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from featsup.supervision import TeacherFeatureCache, build_feature_cache
from featsup.supervision.cache import unpack_item


def _patch_items(n: int) -> list[dict]:
    """Items as TumourPatchDataset serves them: image (1, D, H, W), target (D, H, W)."""
    return [
        {"image": torch.randn(1, 4, 8, 8), "target": torch.randint(0, 2, (4, 8, 8)), "origin": i}
        for i in range(n)
    ]


@pytest.mark.parametrize("on_disk", [False, True])
def test_3d_patch_features_are_cached_and_looked_up(tmp_path: Path, on_disk: bool) -> None:
    conv = nn.Conv3d(1, 3, 3, padding=1, stride=2)
    items = _patch_items(5)

    def encode(image: torch.Tensor | None, target: torch.Tensor) -> list[torch.Tensor]:
        assert image is not None and image.shape[1:] == (1, 4, 8, 8) and target.ndim == 4
        first = conv(image)
        return [first, first[:, :, ::2] + target[:, None, ::4, ::2, ::2]]

    path = tmp_path / "cache" if on_disk else None
    cache = build_feature_cache(
        encode, items, ["a", "b"], batch_size=2, path=path, dtype=torch.float32
    )
    assert isinstance(cache, TeacherFeatureCache) and len(cache) == 5
    got = cache.lookup([4, 0])
    assert got["a"].shape == (2, 3, 2, 4, 4) and got["b"].shape == (2, 3, 1, 4, 4)
    with torch.no_grad():
        images = torch.stack([items[4]["image"], items[0]["image"]])
        targets = torch.stack([items[4]["target"], items[0]["target"]])
        expected = encode(images, targets)
    torch.testing.assert_close(got["a"], expected[0])
    torch.testing.assert_close(got["b"], expected[1])
    torch.testing.assert_close(cache.to("cpu").lookup(3)["a"], cache.lookup([3])["a"])


def test_mapping_items_are_unpacked_by_key() -> None:
    image, target = unpack_item({"target": torch.ones(2, 3, 3)})
    assert image is None and target.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="'target' key"):
        unpack_item({"image": torch.zeros(1, 3, 3)})
