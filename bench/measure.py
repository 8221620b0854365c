"""Measuring helpers shared by the benches that time and weigh child processes (wait4 peak RSS)."""

from __future__ import annotations

from pathlib import Path


def reset_own_peak_rss() -> float:
    """-> this process's RSS in MB after resetting its peak to it (Linux clear_refs 5).

    A child started by subprocess (vfork + exec on Linux) starts its ru_maxrss at the parent's peak RSS: a
    build spawned after this process scored an artefact reported ~1.5 GB that the build never used (measured:
    /bin/true spawned after the parent peaked at 300 MB reports 312 MB). With the peak reset, the floor a
    child inherits is this process's current RSS, returned so the report can show it is below the peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux: nothing to reset, nothing to report
        return float("nan")
    return next(int(line.split()[1]) / 1024.0 for line in status.splitlines() if line.startswith("VmHWM"))
