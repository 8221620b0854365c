"""This machine's physical memory, and returning freed memory to the OS promptly (glibc only; a no-op
elsewhere). Used by the build (toolkit/build.py) and by the scoring daemon (`adtk serve`).

glibc serves allocations above a threshold with mmap and returns them on free, but it raises that
threshold to the size of every large block freed (up to 32 MB). After the first large blocks are freed,
later blocks of that size come from the heap and stay resident after they are freed, which raised the
build's peak RSS by 30-90 MB (bench/vs_anomalib.py measures the peak). Pinning the threshold at 1 MB keeps
large arrays mmap-backed. A daemon also decodes frames on several threads (HTTP handlers, capture); glibc
gives each thread its own arena, and memory freed into one arena is not reused by another, so the
resident size drifts up with the number of threads that ever decoded a large frame: `arena_max` caps the
arenas. Python has no API for either; ctypes does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20
UNKNOWN_MEMORY_BYTES = 4 * 1024**3  # not POSIX: assume a small device


def physical_memory_bytes() -> int:
    """This machine's physical memory, which the runtime's defaults are sized from (the frame pixel budget, the
    daemon's warm-up memory limit): the device it runs on is the target."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return UNKNOWN_MEMORY_BYTES


def release_large_blocks_promptly(arena_max: int | None = None) -> bool:
    """-> True when glibc accepted the setting (setting it also stops the threshold from growing).
    arena_max: at most this many malloc arenas (the daemon: 2), None leaves glibc's default."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    accepted = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES))
    if arena_max is not None:
        accepted = bool(mallopt(M_ARENA_MAX, int(arena_max))) and accepted
    return accepted
