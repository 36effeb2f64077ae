"""Shared pytest helpers.

The reference material (PROTO.md, LAYERS.md, configs/, golden/) lives outside the
repository, in ``<repo>/../shared/reference``. Tests that need it use the
``reference_dir`` fixture, which skips with a clear message when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = (REPO_ROOT / ".." / "shared" / "reference").resolve()


def reference_path(*parts: str) -> Path:
    """Path inside the reference folder; skips the calling test if it does not exist."""
    path = REFERENCE_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference material not available: {path} does not exist")
    return path


@pytest.fixture
def reference_dir() -> Path:
    """The shared reference folder (skips the test when it is absent)."""
    return reference_path()


# The suite runs under pytest-xdist with one worker per core: torch's intra-op threads
# on top of that oversubscribe the cores, and small ops then spend milliseconds
# spin-waiting for each other (measured: a 1x16x9x9 conv 10 ms with 2 threads on a
# loaded 2-core machine, 0.016 ms with 1).  One thread per worker.
import torch as _torch

_torch.set_num_threads(1)
