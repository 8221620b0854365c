"""Return freed memory to the OS promptly during a build (glibc only; a no-op elsewhere).

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
