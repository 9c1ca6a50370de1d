"""The layout rule and the allocator setting of featsup.training.device."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from featsup.training import channels_last_pays, keep_freed_memory
from featsup.training import device as device_module


@pytest.mark.parametrize("avx512", [True, False])
def test_channels_last_pays_in_2d_only_with_avx512_on_cpu(monkeypatch, avx512):
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: avx512)
    assert channels_last_pays("cpu") is avx512
    assert channels_last_pays(torch.device("cpu"), spatial_dims=2) is avx512
    assert channels_last_pays("cpu", spatial_dims=3) is True  # channels-last-3d: 1.32x on AVX2
    assert channels_last_pays("cuda") is True and channels_last_pays("cuda:1", 3) is True


def test_channels_last_pays_refuses_other_dims():
    with pytest.raises(ValueError, match="spatial_dims"):
        channels_last_pays("cpu", spatial_dims=1)


@pytest.mark.parametrize("kwargs", [{"trim_threshold": -1}, {"mmap_threshold": 2**31}])
def test_keep_freed_memory_refuses_thresholds_mallopt_cannot_take(kwargs):
    with pytest.raises(ValueError, match="expected 0 <= bytes < 2\\*\\*31"):
        keep_freed_memory(**kwargs)


def test_keep_freed_memory_changes_nothing_off_linux(monkeypatch):
    monkeypatch.setattr(device_module.sys, "platform", "darwin")
    assert keep_freed_memory() is False


_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from featsup.models import UNetPlusPlus
    from featsup.training import keep_freed_memory
    took = keep_freed_memory() if sys.argv[1] == "kept" else False
    torch.manual_seed(0)
    net, image = UNetPlusPlus(1, 2, widths=(8, 16, 32)), torch.randn(8, 1, 64, 64)
    def step():
        sum(head.mean() for head in net(image)).backward()
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_most_page_faults_of_a_training_step():
    faults = {}
    for setting in ("default", "kept"):
        out = subprocess.run([sys.executable, "-c", _FAULTS, setting], check=True,
                             capture_output=True, text=True).stdout.split()  # fmt: skip
        faults[setting] = (out[0], float(out[1]))
    if faults["kept"][0] != "True":
        pytest.skip("not glibc: mallopt did not take the settings")
    # measured: about 4700 minor faults a step by default, 500 kept
    assert faults["kept"][1] * 3 < faults["default"][1], faults
