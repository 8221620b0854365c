"""The build's memory settings: freed memory back to the OS promptly (glibc only; a no-op elsewhere), numpy's
large arrays on ordinary pages (keep_arrays_off_huge_pages), no triton without a GPU.

glibc serves allocations above a threshold with mmap and returns them on free, but it raises that
threshold to the size of every large block freed (up to 32 MB). After the backbone's first batches
free their 10-25 MB activations, later blocks of that size come from the heap and stay resident after
they are freed, which raised the build's peak RSS by 30-90 MB (bench/vs_anomalib.py measures the peak).
Pinning the threshold at 1 MB keeps large arrays mmap-backed. Python has no API for this; ctypes does.
"""

from __future__ import annotations

# one definition, in the runtime (the scoring daemon uses it too); re-exported for the build
from adtk.runtime.memory import release_large_blocks_promptly  # noqa: F401


def skip_gpu_kernel_compiler_without_gpu() -> bool:
    """On a machine without CUDA, keep torch from importing triton (the GPU kernel compiler) -> True if done.

    torch._dynamo imports triton when it is installed (CUDA builds of torch ship it), and timm and the ONNX
    exporter import torch._dynamo: that maps libtriton and its state, ~180 MB of RSS that a CPU build never
    uses. torch guards every triton import (`has_triton()` / try-import), and an entry of None in
    sys.modules makes `import triton` raise ImportError, so torch takes its no-triton path. Call this before
    timm or the exporter is imported; it changes nothing once triton is loaded, or where CUDA is present.
    """
    import logging
    import sys

    import torch

    if "triton" in sys.modules or torch.cuda.is_available():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    # torch says once that it cannot count FLOPs of triton kernels; there are none to count here
    logging.getLogger("torch.utils.flop_counter").setLevel(logging.ERROR)
    return True


def keep_arrays_off_huge_pages() -> bool:
    """Stop numpy from asking for transparent huge pages for its large arrays -> True if done.

    numpy madvise()s every array of >= 4 MB for huge pages. On a virtual machine that hands its free memory back
    to the host (virtio free page reporting, which reports free blocks of huge-page size), a new 2 MB page is then
    one the host no longer backs, and its first touch faults through to the host: filling the build's 426 MB
    feature array took 2.4-3.1 s with huge pages against 0.15 s with 4 KB pages, which come from memory the guest
    already holds (this 2-core VM; the default build 36.7 -> 34.4 s, median of 3 pairs, bench/results/
    build_speed.md). On bare metal the setting costs little: the build's large arrays are read in streams, not at
    random, so TLB misses are few. numpy reads NUMPY_MADVISE_HUGEPAGE only when it is imported; a value the user
    set is kept. Its setter is private, so it is used only where present.
    """
    import os

    import numpy as np

    if os.environ.get("NUMPY_MADVISE_HUGEPAGE") is not None:  # the user's choice
        return False
    setter = getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)
    if setter is None:
        return False
    setter(False)
    return True
