"""Measuring helpers shared by the benches that time and weigh child processes (wait4 peak RSS)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def run_measured(cmd: list[str], log_path: Path, env: dict | None = None) -> dict:
    """Run a command to the end (output to log_path, cwd = the repo); -> wall seconds, peak RSS (MB) of the
    process (wait4), the floor that peak inherits from this process (reset_own_peak_rss) and the load average
    at the end. A failing command stops the bench with its log's last lines."""
    floor_mb = reset_own_peak_rss()
    tic = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - tic
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"{' '.join(map(str, cmd[:5]))} failed (exit {code}); log {log_path}:\n" + "\n".join(tail))
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024.0, "inherited_floor_mb": floor_mb,
            "load_average_at_end": " ".join(f"{x:.1f}" for x in os.getloadavg())}


def append_record(path: Path, title: str, lines: list[str]) -> None:
    """Append one run's lines to a bench/results file, with the file's `# title` first when it is new."""
    header = "" if path.exists() else f"# {title}\n\n"
    with path.open("a") as f:
        f.write(header + "\n".join(lines) + "\n\n")


def interleaved_times_ms(calls: dict, runs: int, warmup: int) -> dict[str, list[float]]:
    """Each call timed in turn, round by round (so load that comes and goes hits every contender alike), after
    `warmup` untimed rounds -> {name: [ms per run]}."""
    times = {name: [] for name in calls}
    for i in range(warmup + runs):
        for name, call in calls.items():
            tic = time.perf_counter()
            call()
            if i >= warmup:
                times[name].append((time.perf_counter() - tic) * 1000.0)
    return times
