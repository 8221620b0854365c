"""The build's memory settings (toolkit/memory.py), each checked in a fresh interpreter."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0].startswith("glibc"),
                    reason="the mmap threshold is a glibc setting")
def test_glibc_accepts_the_mmap_threshold():
    assert run("from adtk.toolkit.memory import release_large_blocks_promptly as f; print(f())").strip() == "True"


def test_without_cuda_timm_and_the_exporter_run_without_loading_triton():
    out = run(
        "import sys, torch\n"
        "from adtk.toolkit.memory import skip_gpu_kernel_compiler_without_gpu as f\n"
        "done = f()\n"
        "import timm, torch._dynamo\n"
        "m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())\n"
        "p = torch.onnx.export(m, (torch.zeros(1, 3, 16, 16),), dynamo=True, verbose=False)\n"
        "print(done, torch.cuda.is_available(), sys.modules.get('triton') is None, p is not None)\n")
    done, cuda, triton_blocked, exported = out.split()[-4:]
    assert exported == "True"
    if cuda == "False":  # CPU machines (CI): triton stays out, and timm plus the exporter still work
        assert done == "True" and triton_blocked == "True"


def test_numpy_arrays_stay_off_huge_pages_unless_the_user_chose():
    check = ("import numpy as np\n"
             "from adtk.toolkit.memory import keep_arrays_off_huge_pages as f\n"
             "done = f()\n"
             "print(done, np._core.multiarray._set_madvise_hugepage(True))\n")  # the setter returns the old value
    assert run(check).split() == ["True", "False"]
    user_chose = run("import os; os.environ['NUMPY_MADVISE_HUGEPAGE'] = '1'\n" + check)
    assert user_chose.split() == ["False", "True"]
