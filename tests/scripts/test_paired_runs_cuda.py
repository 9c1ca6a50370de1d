"""scripts/paired_runs_cuda.sh: each seed runs the example once with A's flags, once with B's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "paired_runs_cuda.sh"


def _run(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # a stand-in for python that records its arguments, one call per line
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{tmp_path}/calls"\n')
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
