"""Fixtures of tests/shared (``synth_root`` and ``synth_nusc``, the generated ``tiny`` dataroot and devkit over it,
are in tests/conftest.py)."""
from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
