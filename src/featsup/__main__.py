"""``python -m featsup``: the same as the ``featsup`` command (see :mod:`featsup.cli`)."""

from __future__ import annotations

import sys

from featsup.cli import main

if __name__ == "__main__":
    sys.exit(main())
