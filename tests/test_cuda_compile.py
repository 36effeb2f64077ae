"""Every CUDA kernel source compiles as real CUDA for sm_80 and sm_90 (no GPU needed).

One nvcc run (one test) compiles the whole translation unit (every file of
caffe_compat/kernels, float32 and float64) into a fatbin for both architectures; ``#line``
directives make a failure name the kernel file and line.  The entry points are then read back
from the PTX so a kernel that silently vanished (e.g. a misspelt KNAME) is caught too.
"""
from __future__ import annotations

import re
import subprocess

import pytest
import torch

from cuda_support import NVCC

from caffe_compat import cuda

ARCHS = ("80", "90")


@pytest.fixture(scope="module")
def nvcc_build(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not found on PATH: the CUDA compile check needs the CUDA toolkit")
    d = tmp_path_factory.mktemp("nvcc")
    src = d / "caffe_compat_kernels.cu"
    src.write_text(cuda.kernel_source((torch.float32, torch.float64)))
    gencode = [f"-gencode=arch=compute_{a},code=[sm_{a},compute_{a}]" for a in ARCHS]
    # --keep leaves the per-architecture PTX next to the fatbin (read by the entry-point test)
    proc = subprocess.run([NVCC, "-fatbin", "--threads", "2", "--keep", "--keep-dir", str(d), *gencode,
                           "-o", str(d / "k.fatbin"), str(src)], capture_output=True, text=True, cwd=d)
    return proc, d


def test_kernels_compile_for_sm80_and_sm90(nvcc_build):
    proc, d = nvcc_build
    assert proc.returncode == 0, f"nvcc failed:\n{proc.stderr[-6000:]}"
    assert (d / "k.fatbin").stat().st_size > 0
    # no warnings either (e.g. a narrowing or an unused variable hiding a bug)
    assert "warning" not in proc.stderr.lower(), proc.stderr
    # every kernel, both dtypes, is an entry point of the PTX of each architecture (one test, so
    # that pytest-xdist never runs the compile twice)
    expected = {n + s for n in cuda.kernel_names() for _, s in cuda.DTYPE_SUFFIX.values()}
    ptx = sorted(d.glob("*.ptx"))
    assert len(ptx) == len(ARCHS), [p.name for p in d.iterdir()]
    for p in ptx:
        assert set(re.findall(r"\.entry\s+(\w+)", p.read_text())) == expected, p.name
    # every kernel file defines at least one kernel
    for name in cuda.KERNEL_FILES:
        assert cuda.kernel_names((name,)), name


def test_gpu_check_smoke_runs(tmp_path):
    """tools/gpu_check.py (the one command for a lent GPU) runs end to end in --smoke mode."""
    import sys

    from conftest import REPO_ROOT

    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "gpu_check.py"), "--smoke"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [l for l in proc.stdout.splitlines() if l.startswith("| ") and "operation" not in l]
    assert len(rows) == 4 and all("x |" in r for r in rows), proc.stdout
