"""Load a new model and score its warm-up frames in a short-lived child process before the daemon runs it.

A graph can allocate at run time far more than the device has (ConstantOfShape of a shape computed from the
input, an Expand or Tile bomb: nothing in the file is large, and the size is not known before a frame arrives),
or make onnxruntime crash (a segfault or an abort ends the whole process). Neither the integrity record nor the
graph checks tell such a graph from a good one, and a signature is required only where the daemon has a key.
So before a model is put into service (the model given at start-up, and every model the ModelWatcher offers
for a hot swap) `check_in_child` loads it and scores its warm-up frames in a child process whose address space
is limited (RLIMIT_AS): there a bomb's allocation fails before a page of it is touched, a crash ends only the
child, and a graph that does not finish is killed at the timeout. The model is then refused with one line that
says which; the daemon keeps serving the model it has (at start-up it exits with that line).

Frames: the mid-grey frame at the model size that `warm_up` scores (a typical frame; the output contract is
checked on it) and the largest frame the daemon accepts (the pixel budget, --max-pixels) at the model's aspect
ratio, since a graph's allocations may grow with the frame. A graph whose allocations follow the pixel VALUES is
not caught by grey frames.

The child always runs onnxruntime's CPU provider with one thread, whatever backend the daemon serves with: what
a graph allocates is the graph's own, the CPU provider runs every graph, CUDA reserves far more address space
than it uses (an address-space limit breaks it), and one thread keeps a check during a hot swap from taking the
cores from the scoring loop. Without onnxruntime (a TensorRT-only install) there is nothing to run the check
with, and it is skipped.

Why a subprocess running `python -c` (the daemon's own interpreter and sys.path) rather than:
* preexec_fn (setrlimit between fork and exec): not safe in a process with threads (the daemon's capture,
  watcher and HTTP threads): the child may deadlock on a lock another thread held at the fork. The child sets
  its own limits instead, as its first step, before onnxruntime sees the model.
* multiprocessing's "spawn": it re-imports the daemon's __main__ (the CLI) in the child and starts a
  resource-tracker process; a subprocess imports this module only and answers in JSON lines on stdout.
The child inherits none of the daemon's open files or listening sockets (close_fds, subprocess's default), nor
its HTTP token ($ADTK_SERVE_TOKEN), nor its terminal's Ctrl-C (a session of its own: the signal would fail the
check and refuse a good model). Stopping the daemon (SIGTERM, Ctrl-C) kills a check in progress instead, within
STOP_POLL_S: the model is "not checked", never refused, and no check outlives the daemon (one of a graph that
never finishes would run on, an orphan, until the CPU-time backstop, or forever if it sleeps).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from adtk.runtime.artefact import VerifiedArtefact
from adtk.runtime.detector import Detector, create_backend
from adtk.runtime.errors import AdtkError, ArtefactError, BackendError, ConfigError, DataError, one_line

MB = 1024**2
# a 46 MB artefact with a 70k-row bank takes ~1 s on 2 x86 cores: room for slow devices and big banks
DEFAULT_TIMEOUT_S = 120.0
MEMORY_FLOOR_BYTES = 2 * 1024**3  # onnxruntime sessions of 70k-row memory banks use 1-2 GB
# No adtk artefact needs more; and a limit is only as good as its size: allowed half a 128 GB server, a graph
# could take 60 GB at every frame and pass.
MEMORY_CAP_BYTES = 8 * 1024**3
TOKEN_ENV = "ADTK_SERVE_TOKEN"
# How onnxruntime words a failed allocation: its CPU allocator throws std::bad_alloc, its arena says so in words.
ALLOCATION_FAILED = ("bad_alloc", "Failed to allocate memory", "MemoryError")
# The errors the child may re-raise in the daemon as they are (the message a user already knows, e.g.
# "onnxruntime could not load the artefact: ..." for a graph onnxruntime refuses).
KNOWN_ERRORS = {cls.__name__: cls for cls in (ArtefactError, BackendError, ConfigError, DataError)}
# how soon a check in progress is killed once the daemon is told to stop (SIGTERM, Ctrl-C)
STOP_POLL_S = 0.1
CHILD_CODE = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
              "from adtk.runtime.daemon.isolated_warm_up import child_main; child_main()")


@dataclass(frozen=True)
class WarmUpLimits:
    memory_mb: int | None = None  # what loading and scoring may add to the child; None: default_memory_bytes
    timeout_s: float = DEFAULT_TIMEOUT_S  # the whole check: start, load, every warm-up frame


def default_memory_bytes(artefact_bytes: int) -> int:
    """Half this machine's memory, within 2..8 GB, and at least 4x the artefact (the session holds its own copy
    of the weights, and optimising the graph makes more). Measured beyond the child's interpreter, onnxruntime's
    libraries and the model's bytes, which it holds before the limit is set."""
    from adtk.runtime.memory import physical_memory_bytes

    return max(MEMORY_FLOOR_BYTES, min(physical_memory_bytes() // 2, MEMORY_CAP_BYTES), 4 * artefact_bytes)


def largest_frame(model_size_px: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """(height, width) of the largest frame within the pixel budget at the model's aspect ratio (16 px at least)."""
    model_height, model_width = model_size_px
    height = max(16, int(math.sqrt(max_pixels * model_height / model_width)))
    return height, max(16, max_pixels // height)


def check_in_child(artefact: VerifiedArtefact, max_pixels: int | None, source: str,
                   limits: WarmUpLimits = WarmUpLimits(), stop: threading.Event | None = None) -> None:
    """Load the verified model and score its warm-up frames in a child process within `limits`. Raises
    ArtefactError naming the problem (memory, crash, timeout), or the child's own AdtkError as it is (a graph
    onnxruntime refuses, outputs that break the contract). Once `stop` is set (the daemon is shutting down) the
    child is killed within STOP_POLL_S and ArtefactError says the model was not checked."""
    import importlib.util

    from adtk.runtime.pixels import pixel_budget

    if importlib.util.find_spec("onnxruntime") is None:
        return  # nothing to run the check with (see the module docstring); create_backend says what is missing
    memory_bytes = limits.memory_mb * MB if limits.memory_mb is not None else \
        default_memory_bytes(len(artefact.model_bytes))
    header = {"manifest": artefact.manifest, "sha256": artefact.sha256, "file_sha256": artefact.file_sha256,
              "model_bytes": len(artefact.model_bytes), "memory_bytes": memory_bytes, "timeout_s": limits.timeout_s,
              "max_pixels": pixel_budget(max_pixels)}
    stdout, stderr, status, ended = _run_child(header, artefact.model_bytes, limits.timeout_s, stop)
    problem = _problem(source, _reports(stdout), stderr.decode("utf-8", errors="replace"), status, ended,
                       limits, memory_bytes)
    if problem is not None:
        raise problem


def _run_child(header: dict, model_bytes: bytes, timeout_s: float,
               stop: threading.Event | None = None) -> tuple[bytes, bytes, int, str | None]:
    """-> (stdout, stderr, exit status, why it was killed: "timeout", "stopped" or None)."""
    environment = {name: value for name, value in os.environ.items() if name != TOKEN_ENV}
    # stdin is a pipe of our own, fed by a thread: communicate(input=...) would need the header and the model's
    # hundreds of MB as one bytes object (a copy); stdout and stderr are read by communicate meanwhile.
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen([sys.executable, "-c", CHILD_CODE, json.dumps([str(entry) for entry in sys.path])],
                                   stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment,
                                   start_new_session=True)
    except OSError as exc:
        os.close(write_end)
        raise BackendError(f"cannot start the warm-up check ({sys.executable}: {exc.strerror or exc})") from None
    finally:
        os.close(read_end)
    feeder = threading.Thread(target=_feed, args=(write_end, header, model_bytes), name="adtk-warm-up-feed",
                              daemon=True)
    feeder.start()
    killed_for = None
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            # in steps of STOP_POLL_S: a daemon told to stop must not wait out a check of up to --warm-up-timeout
            # (a retried communicate loses no output)
            step_s = max(0.0, deadline - time.monotonic()) if stop is None else \
                max(0.0, min(STOP_POLL_S, deadline - time.monotonic()))
            try:
                stdout, stderr = process.communicate(timeout=step_s)
                break
            except subprocess.TimeoutExpired:
                if stop is not None and stop.is_set():
                    killed_for = "stopped"
                elif time.monotonic() >= deadline:
                    killed_for = "timeout"
                if killed_for is not None:
                    break
    finally:
        # at the timeout, when the daemon stops, or when this thread was interrupted (Ctrl-C in a program that
        # embeds the service): no check is left running (the child only is killed: it starts no process of its own)
        if process.returncode is None:
            process.kill()
    if killed_for is not None:
        stdout, stderr = process.communicate()  # reaps it: no zombie, no orphan
    feeder.join()
    return stdout, stderr, process.returncode, killed_for


def _feed(fd: int, header: dict, model_bytes: bytes) -> None:
    try:
        with open(fd, "wb") as stream:
            stream.write(json.dumps(header).encode("utf-8") + b"\n")
            stream.write(model_bytes)
    except OSError:  # the child ended before it read everything (crashed, killed): its exit status says why
        pass


def _reports(stdout: bytes) -> list[dict]:
    reports = []
    for line in stdout.splitlines():
        try:
            report = json.loads(line)
        except ValueError:  # not ours (a library printing to stdout)
            continue
        if isinstance(report, dict):
            reports.append(report)
    return reports


def _problem(source: str, reports: list[dict], stderr: str, status: int, killed_for: str | None,
             limits: WarmUpLimits, memory_bytes: int) -> AdtkError | None:
    """What the child's reports, stderr and exit status say, as the one error to raise (None: it passed)."""
    stage = next((r["stage"] for r in reversed(reports) if "stage" in r), "starting the warm-up check")
    result = next((r for r in reversed(reports) if "ok" in r or "error" in r), {})
    if killed_for == "stopped":
        return ArtefactError(f"{source}: not checked: the daemon stopped while {stage}")
    if killed_for == "timeout":
        return ArtefactError(f"{source}: refused: {stage} did not finish within {limits.timeout_s:g} s "
                             "(--warm-up-timeout)")
    if status == 0 and result.get("ok"):
        return None
    if result.get("out_of_memory") or any(words in stderr for words in ALLOCATION_FAILED):
        budget = next((r["memory_bytes"] for r in reports if r.get("memory_bytes") is not None), memory_bytes)
        return ArtefactError(f"{source}: refused: {stage} needed more than {budget // MB} MB of memory (the warm-up "
                             "limit, --warm-up-memory-mb)")
    if "error" in result:
        error = KNOWN_ERRORS.get(result["error"])
        if error is not None:
            return error(result["message"])
        return ArtefactError(f"{source}: refused: {stage} failed ({result['error']}: "
                             f"{one_line(str(result['message']))[:300]})")
    last_line = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
    said = f": {one_line(last_line.strip())[:300]}" if last_line else ""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = "a signal"
        if -status == signal.SIGKILL:
            return ArtefactError(f"{source}: refused: the warm-up check was killed ({name}) while {stage}; the "
                                 "machine (or the daemon's cgroup) may have run out of memory first (a lower "
                                 "--warm-up-memory-mb refuses such a model by name)")
        if -status in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # e.g. systemd stopping the whole unit
            return ArtefactError(f"{source}: not checked: the warm-up check was stopped ({name}) while {stage}")
        return ArtefactError(f"{source}: refused: {stage} crashed onnxruntime ({name}, signal {-status}){said}")
    return ArtefactError(f"{source}: refused: the warm-up check exited with status {status} while {stage}{said}")


def warm_up(detector: Detector) -> None:
    """Score one mid-grey frame at the model size; raise ArtefactError if the outputs break the contract."""
    height, width = detector.model_size_px
    prediction = detector.predict(np.full((1, height, width, 3), 128, dtype=np.uint8))
    score = prediction.pred_score
    if score.shape != (1,) or not np.all(np.isfinite(score)) or not 0.0 <= float(score[0]) <= 1.0:
        raise ArtefactError(f"warm-up frame gave pred_score {score.tolist()} (expected one value in 0..1)")
    if prediction.anomaly_map.shape != (1, height, width) or not np.all(np.isfinite(prediction.anomaly_map)):
        raise ArtefactError(f"warm-up frame gave an anomaly map of shape {list(prediction.anomaly_map.shape)} "
                            f"with non-finite values or not [1, {height}, {width}]")


# ---- the child's side -------------------------------------------------------------------------------------------

def child_main() -> None:
    """Run by CHILD_CODE: the header and the model's bytes on stdin, one JSON line per step on stdout."""
    stdin = sys.stdin.buffer
    header = json.loads(stdin.readline())
    _limit_cpu_time(header["timeout_s"])
    _first_to_go_when_memory_runs_out()
    from adtk.runtime.extras import require

    require("onnxruntime", "the warm-up check")  # mapped before the limit: its libraries are not the model's
    model_bytes = stdin.read(header["model_bytes"])  # one buffer of the announced size, not chunks joined
    if len(model_bytes) != header["model_bytes"]:
        raise SystemExit(f"the warm-up check got {len(model_bytes)} of the model's {header['model_bytes']} bytes")
    # exactly the bytes the daemon verified (integrity, signature, graph checks) before it sent them
    artefact = VerifiedArtefact(model_bytes, header["manifest"], header["sha256"], header["file_sha256"])
    _report(memory_bytes=_limit_address_space(header["memory_bytes"]))
    try:
        _report(stage="loading it into onnxruntime")
        detector = Detector(artefact, create_backend(artefact, "cpu", memory_arena=False, intra_op_threads=1),
                            max_pixels=header["max_pixels"])
        height, width = detector.model_size_px
        _report(stage=f"scoring a warm-up frame of {width}x{height} px")
        warm_up(detector)
        large_height, large_width = largest_frame((height, width), header["max_pixels"])
        if large_height * large_width > height * width:
            _report(stage=f"scoring a warm-up frame of {large_width}x{large_height} px (the largest, --max-pixels)")
            detector.predict(np.full((1, large_height, large_width, 3), 128, dtype=np.uint8))
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the daemon, which decides
        _report(error=type(exc).__name__, message=str(exc),
                out_of_memory=isinstance(exc, MemoryError) or any(words in str(exc) for words in ALLOCATION_FAILED))
        os._exit(1)
    _report(ok=True)
    os._exit(0)  # at once: tearing the session down is work nobody waits for


def _report(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()  # line by line: after a crash, the last step reported is the one that crashed


def _limit_cpu_time(timeout_s: float) -> None:
    """A backstop for a child whose daemon died (no one left to enforce the timeout): the kernel ends it after
    twice the timeout's seconds of CPU (one thread: CPU time does not outrun the clock, so the daemon's
    timeout comes first while it lives)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    seconds = int(2 * timeout_s) + 10
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (seconds if hard == resource.RLIM_INFINITY else min(seconds, hard), hard))


def _first_to_go_when_memory_runs_out() -> None:
    """Where memory runs out before the address-space limit is reached (a machine with less free memory than the
    limit, or the daemon's cgroup: systemd's MemoryMax), the kernel's OOM killer picks the largest process by
    its score: the highest adjustment makes that this check, not the daemon (raising one's own needs no
    privilege)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as adjustment:
            adjustment.write("1000")
    except OSError:  # not Linux
        pass


def _limit_address_space(budget_bytes: int) -> int | None:
    """Allow the address space in use now plus `budget_bytes` (never more than the daemon's own limit, which the
    child inherits); -> the budget in force, None where the address space cannot be measured (not Linux: the
    crash and time checks still hold)."""
    try:
        import resource

        with open("/proc/self/statm") as statm:
            in_use = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return None
    limit = in_use + budget_bytes
    for inherited in resource.getrlimit(resource.RLIMIT_AS):
        if inherited != resource.RLIM_INFINITY:
            limit = min(limit, inherited)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return max(0, limit - in_use)
