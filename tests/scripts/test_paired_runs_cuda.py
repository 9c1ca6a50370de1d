"""scripts/paired_runs_cuda.sh: each seed runs the example once per setting (A, B, C)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "paired_runs_cuda.sh"


def _run(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # a stand-in for python that records its arguments, one call per line
    # and, given --out DIR and FAKE_BYTES, writes a cascade.pt of that size there
    fake = tmp_path / "fake_python"
    fake.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> "{tmp_path}/calls"\n'
        'out=${@: -1}; if [ -n "${FAKE_BYTES:-}" ] && [ "${@: -2:1}" = --out ]; then\n'
        '  mkdir -p "$out" && head -c "$FAKE_BYTES" /dev/zero > "$out/cascade.pt"\n'
        '  echo "{}" > "$out/metrics.json"; fi\n'
    )
    fake.chmod(0o755)
    base = {"PATH": os.environ["PATH"], "PYTHON": str(fake), "SCORE": "0", "PACK": "0"}
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], cwd=ROOT, env={**base, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_each_seed_runs_both_settings_with_their_flags(tmp_path: Path) -> None:
    flags = {"A": "--variant ES-DS", "B": "--variant UN-DS --tumour-steps 1500"}
    done = _run(tmp_path, {**flags, "SEEDS": "34 35"})
    assert done.returncode == 0, done.stderr
    runs = sorted(c for c in (tmp_path / "calls").read_text().splitlines() if "lits_cascade" in c)
    assert len(runs) == 4
    for seed in (34, 35):
        for side in ("a", "b"):
            (call,) = [c for c in runs if c.endswith(f"/runs/{side}_s{seed}")]
            assert f"--seed {seed} {flags[side.upper()]} --out" in call
            assert "--device cuda --preset cpu --validation-only" in call


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_missing_settings_are_named(tmp_path: Path) -> None:
    done = _run(tmp_path, {"A": "--variant ES-DS"})
    assert done.returncode != 0 and "set B to the flags of the second setting" in done.stderr
    assert not (tmp_path / "calls").exists()  # nothing ran


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_third_setting_and_empty_defaults(tmp_path: Path) -> None:
    done = _run(tmp_path, {"A": "", "B": "--tumour-lesion-balance 0.5", "C": "--tumour-size 160",
                           "SEEDS": "37"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    runs = [c for c in (tmp_path / "calls").read_text().splitlines() if "lits_cascade" in c]
    assert len(runs) == 3
    (a,) = [c for c in runs if c.endswith("/runs/a_s37")]
    assert "--seed 37 --out" in a  # the defaults: no flags
    (c,) = [c for c in runs if c.endswith("/runs/c_s37")]
    assert "--seed 37 --tumour-size 160 --out" in c


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_packs_stay_under_what_a_lent_machine_hands_back(tmp_path: Path) -> None:
    six_mb = str(6 * 2**20)
    env = {"A": "", "B": "-b", "C": "-c", "SEEDS": "1 2", "PACK": "1", "FAKE_BYTES": six_mb}
    done = _run(tmp_path, env)
    assert done.returncode == 0, done.stderr
    packs = sorted((tmp_path / "out").glob("pack*.tar"))
    assert len(packs) == 3  # six runs of 6 MiB, two to a pack
    members = []
    for pack in packs:
        assert pack.stat().st_size <= 15 * 2**20
        with tarfile.open(pack) as tar:
            members += tar.getnames()
    for run in (f"{side}_s{seed}" for seed in (1, 2) for side in "abc"):
        assert {f"{run}.log", f"{run}/cascade.pt", f"{run}/metrics.json"} <= set(members)
