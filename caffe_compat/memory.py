"""The memory budget: refuse allocations that cannot fit, before making them.

The budget in bytes is, in order of precedence, an explicit ``max_bytes``
(``Net(..., max_bytes=...)``), the ``CAFFE_COMPAT_MAX_BYTES`` environment
variable (an integer, optionally with a ``K``/``M``/``G``/``T`` suffix, powers
of 1024), or the memory available now: ``MemAvailable`` of ``/proc/meminfo``
(``os.sysconf`` elsewhere), lowered to what an address-space or data-segment
limit (``resource.setrlimit``) still leaves to this process.

Checks compare shapes known before anything is allocated (a layer's blob
shapes, ``Net.infer_shapes`` for a forward, a file's declared dataset shapes)
with the budget and raise :class:`~caffe_compat.errors.MemoryBudgetError`
naming what would be allocated and how many bytes.
"""
from __future__ import annotations

import math
import os
import re
from typing import Optional, Sequence, Union

from .errors import MemoryBudgetError

ENV_VAR = "CAFFE_COMPAT_MAX_BYTES"
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_bytes(value: Union[int, float, str], what: str = ENV_VAR) -> int:
    """``"4G"`` -> 4294967296; plain integers pass through.  Raises MemoryBudgetError when invalid."""
    if isinstance(value, bool):
        raise MemoryBudgetError(f"{what}: expected a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise MemoryBudgetError(f"{what}: the memory budget must be a positive number of bytes, got {value!r}")
        return int(value)
    m = _SIZE.match(str(value))
    if not m:
        raise MemoryBudgetError(f"{what}: cannot read {value!r} as a size (e.g. 8000000000, 512M, 8G)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise MemoryBudgetError(f"{what}: the memory budget must be positive, got {value!r}")
    return n


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _rlimit_room() -> Optional[int]:
    """Bytes an address-space/data limit still leaves to this process (None: no limit)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    room = None
    for name in ("RLIMIT_AS", "RLIMIT_DATA"):
        lim = getattr(resource, name, None)
        if lim is None:
            continue
        soft, _ = resource.getrlimit(lim)
        if soft == resource.RLIM_INFINITY:
            continue
        used = _vm_bytes("VmSize" if name == "RLIMIT_AS" else "VmData")
        left = max(0, soft - (used or 0))
        room = left if room is None else min(room, left)
    return room


def _vm_bytes(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes() -> int:
    """Memory this process can still get now (physical memory available, within rlimits)."""
    sizes = [s for s in (_meminfo_available(), _rlimit_room()) if s is not None]
    return min(sizes) if sizes else 2 ** 62


def resolve_budget(max_bytes: Optional[Union[int, str]] = None) -> int:
    """The budget in bytes: ``max_bytes``, else the environment variable, else :func:`available_bytes`."""
    if max_bytes is not None:
        return parse_bytes(max_bytes, "max_bytes")
    env = os.environ.get(ENV_VAR)
    if env:
        return parse_bytes(env)
    return available_bytes()


def human(n: int) -> str:
    """``123456789`` -> ``'123,456,789 bytes (117.7 MiB)'``."""
    for unit, scale in (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"


def nbytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of a dense array of ``shape`` (Python ints: no overflow)."""
    return math.prod(int(d) for d in shape) * int(itemsize)


def check_fits(n: int, what: str, budget: int, already: int = 0) -> None:
    """Raise MemoryBudgetError if ``already + n`` bytes exceed ``budget``; ``what`` names the allocation."""
    if already + n > budget:
        held = f" on top of {human(already)} already needed" if already else ""
        raise MemoryBudgetError(
            f"{what}: needs {human(n)}{held}, more than the memory budget of {human(budget)} "
            f"(refused before allocating; raise it with max_bytes=... or {ENV_VAR})")


class Reservation:
    """A running total of bytes checked against one budget (e.g. a net's learnable blobs)."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.total = 0

    def reserve(self, n: int, what) -> None:
        """Count ``n`` more bytes, or raise MemoryBudgetError naming ``what`` (a str, or a callable
        returning one: built only on failure) if they do not fit."""
        if self.total + n > self.budget:
            check_fits(n, what() if callable(what) else what, self.budget, self.total)
        self.total += n
