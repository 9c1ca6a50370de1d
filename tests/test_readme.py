"""The README's tour is code a user will paste: it must run."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python block"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_quick_start_is_two_commands() -> None:
    quick = README.read_text().split("## Quick start", 1)[1].split("```bash\n", 1)[1]
    commands = quick.split("```", 1)[0].strip().splitlines()
    assert len(commands) == 2
    assert "examples/lits_cascade.py" in commands[0] and "pytest" in commands[1]
