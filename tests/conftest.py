"""Shared pytest helpers.

The reference material (PROTO.md, LAYERS.md, configs/, golden/) lives outside the
repository, in ``<repo>/../shared/reference``. Tests that need it use
:func:`reference_path` / the ``reference_dir`` fixture, which skip with a clear
message when the folder is absent, and fail when only a part of it is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = (REPO_ROOT / ".." / "shared" / "reference").resolve()


def require_reference(path: Path) -> Path:
    """``path`` (inside the reference folder), which must exist.

    Without the reference folder at all the calling test skips with a clear
    message (a clone outside the project's workspace); with it, a missing file
    or folder is a FAILURE: goldens that vanish must not turn tests into skips.
    """
    if not REFERENCE_DIR.exists():
        pytest.skip(f"reference material not available: {REFERENCE_DIR} does not exist")
    if not Path(path).exists():
        pytest.fail(f"reference material incomplete: {path} is missing (the reference folder "
                    f"{REFERENCE_DIR} exists)", pytrace=False)
    return Path(path)


def reference_path(*parts: str) -> Path:
    """Path inside the reference folder; see :func:`require_reference` (skip if the folder is absent,
    fail if only this part is)."""
    return require_reference(REFERENCE_DIR.joinpath(*parts))


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
