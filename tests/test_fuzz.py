"""A bounded run of the mutation fuzzer (tools/fuzz.py): only CaffeCompatError or success.

Each family's cases are seeded mutations of valid files / calls, run in child
processes under an address-space limit and a per-case watchdog (many cases per
child; a crash is attributed to the case that was running).  CI runs a few
hundred cases; ``python tools/fuzz.py --cases N`` runs long ones (docs/fuzz.md).
"""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location("caffe_compat_fuzz", Path(__file__).resolve().parents[1] / "tools" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fuzz)

CASES_PER_FAMILY = 25


def _failures(results):
    return [r for r in results if r[2] in fuzz.FAILURES]


def test_harness_attributes_each_outcome_to_its_case():
    cases = [("selftest", k) for k in (0, 1, 2, 0, 3, 0)]
    results = fuzz.run_cases(cases, batch=10, case_timeout=2, hang_timeout=10, mem_gib=2)
    assert [r[2] for r in results] == ["ok", "raw", "crash", "ok", "timeout", "ok"]
    assert results[1][3].startswith("KeyError") and "exit status" in results[2][3]


def test_fuzz_families():
    families = list(fuzz.FAMILIES)
    cases = fuzz.make_cases(CASES_PER_FAMILY * len(families), families, seed=1)
    results = fuzz.run_cases(cases, batch=len(cases), case_timeout=20, mem_gib=3)
    counts = Counter((r[0], r[2]) for r in results)
    assert all(r is not None for r in results)
    bad = _failures(results)
    assert not bad, "\n" + "\n".join(f"{f} seed {s}: {o}: {d}" for f, s, o, d in bad) + "\n" + fuzz.table(results)
    for family in families:   # every family reaches the library, not only the fuzzer's own setup
        assert counts[(family, "skip")] < CASES_PER_FAMILY // 2, fuzz.table(results)
