"""A hostile or broken graph must not kill or exhaust the daemon: before a model is served (at start-up and on every
hot swap) it is loaded and scored in a child process with a memory limit and a timeout (isolated_warm_up.py).
A graph that allocates far more than the limit, crashes onnxruntime or never finishes is refused with one line;
the daemon exits cleanly at start-up, or keeps serving its model on a hot swap.

The limits are low here (256 MB, a 1 MP frame budget, a 1 s timeout) so that nothing large is ever allocated."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from adtk.runtime.artefact import read_artefact
from adtk.runtime.daemon import isolated_warm_up
from adtk.runtime.daemon.hot_swap import ModelWatcher, load_verified
from adtk.runtime.daemon.isolated_warm_up import WarmUpLimits
from adtk.runtime.daemon.service import ScoringService, ServiceConfig
from adtk.runtime.errors import ArtefactError
from tests.runtime.hostile_inputs import BUDGET, allocation_bomb

LOW = WarmUpLimits(memory_mb=256, timeout_s=60)
ONE_GB_AT_THE_MODEL_SIZE = 2**30 // 4 // (64 * 64 * 3)  # float32 per input value: 1 GiB for a 64 x 64 frame
REFUSED_FOR_MEMORY = "refused: scoring a warm-up frame of 64x64 px needed more than 256 MB of memory"


def quiet_log(kind, message):
    pass


def test_a_graph_allocating_far_more_than_the_limit_is_refused_at_start_up_in_one_line(tiny_build, tmp_path):
    """`adtk serve` on a small device (the daemon's own address space capped at 2 GB) given a sealed model whose
    graph asks for ~1 TB per frame: one line, exit status 1, no traceback, not killed."""
    bomb = tmp_path / "model.onnx"
    bomb.write_bytes(allocation_bomb(tiny_build.artefact.read_bytes(), 1000 * ONE_GB_AT_THE_MODEL_SIZE))
    small_device = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3,) * 2); " \
                   "os.execv(sys.executable, [sys.executable, '-m', 'adtk.toolkit.cli.main'] + sys.argv[1:])"
    result = subprocess.run([sys.executable, "-c", small_device, "serve", str(bomb), "--http", "127.0.0.1:0",
                             "--no-watch", "--max-pixels", str(BUDGET), "--warm-up-memory-mb", "256"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"ArtefactError: {bomb}: {REFUSED_FOR_MEMORY} (the warm-up limit, "
                                          "--warm-up-memory-mb)"]


def test_hot_swap_refuses_a_graph_allocating_far_more_than_the_limit_and_keeps_serving(
        tiny_build, test_images, array_source, list_sink, tmp_path, run_service, wait):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_build.artefact, folder / "model.onnx")
    served = read_artefact(folder / "model.onnx").sha256
    service = ScoringService(ServiceConfig(model=folder / "model.onnx", watch_poll_s=0.05, max_pixels=BUDGET,
                                           warm_up_limits=LOW),
                             array_source(test_images, repeat=None, interval_s=0.005), [list_sink], log=quiet_log)
    run_service(service)
    wait(lambda: len(list_sink.results) >= 10, what="10 frames")
    (folder / "new.onnx").write_bytes(allocation_bomb(tiny_build.artefact.read_bytes(), ONE_GB_AT_THE_MODEL_SIZE))
    wait(lambda: service.metrics.snapshot()["model_swaps_refused"] == 1, what="the bomb refused")
    scored = len(list_sink.results)
    wait(lambda: len(list_sink.results) >= scored + 10, what="10 more frames after the refusal")
    service.stop()
    [(path, reason)] = service.refused_models()
    assert path == str(folder / "new.onnx") and reason.startswith(f"{folder / 'new.onnx'}: {REFUSED_FOR_MEMORY}")
    assert service.model_update["reason"] == reason
    assert {r.model_sha256 for r in list_sink.results} == {served}
    counts = service.metrics.snapshot()
    assert counts["model_swaps"] == 0 and counts["scoring_errors"] == 0


def test_a_legitimate_model_passes_within_the_low_limits(tiny_build):
    detector = load_verified(tiny_build.artefact, max_pixels=BUDGET, warm_up_limits=LOW)
    assert detector.predict(np.full((1, 70, 80, 3), 128, dtype=np.uint8)).pred_score.shape == (1,)


@pytest.mark.parametrize("child, limits, message", [
    ("os.kill(os.getpid(), signal.SIGSEGV)", LOW,
     "refused: scoring a warm-up frame of 64x64 px crashed onnxruntime (SIGSEGV, signal 11)"),
    ("time.sleep(60)", WarmUpLimits(memory_mb=256, timeout_s=1),
     "refused: scoring a warm-up frame of 64x64 px did not finish within 1 s (--warm-up-timeout)"),
])
def test_a_crash_or_a_hang_in_the_warm_up_process_refuses_the_model_in_one_line(tiny_build, monkeypatch, child,
                                                                                limits, message):
    """No graph crashes this onnxruntime on purpose, so the child itself plays it: it reports the step it is at, then
    dies of a segfault or never ends. The daemon's side is what is tested: the message, and that it returns."""
    monkeypatch.setattr(isolated_warm_up, "CHILD_CODE", "import os, signal, sys, time; "
                        "print('{\"stage\": \"scoring a warm-up frame of 64x64 px\"}', flush=True); " + child)
    with pytest.raises(ArtefactError) as refused:
        load_verified(tiny_build.artefact, max_pixels=BUDGET, warm_up_limits=limits)
    assert str(refused.value) == f"{tiny_build.artefact}: {message}"


def test_the_warm_up_process_inherits_no_socket_file_or_token_of_the_daemon(tiny_build, tmp_path, monkeypatch):
    seen = tmp_path / "seen.json"
    monkeypatch.setattr(isolated_warm_up, "CHILD_CODE", "import json, os, sys; open_now = os.listdir('/proc/self/fd'); "
                        f"open({str(seen)!r}, 'w').write(json.dumps([open_now, os.environ.get('ADTK_SERVE_TOKEN')])); "
                        "sys.stdin.buffer.read(); print('{\"ok\": true}')")
    monkeypatch.setenv("ADTK_SERVE_TOKEN", "s3cret-token-of-the-http-api")
    listening = socket.create_server(("127.0.0.1", 0))
    listening.set_inheritable(True)  # even one a library made inheritable
    try:
        load_verified(tiny_build.artefact, max_pixels=BUDGET, warm_up_limits=LOW)
    finally:
        listening.close()
    descriptors, token = json.loads(seen.read_text())
    assert token is None
    assert sorted(descriptors, key=int) == ["0", "1", "2", "3"]  # stdin, stdout, stderr and the one listdir opened


def test_onnxruntime_warnings_about_odd_but_working_graphs_stay_out_of_the_daemon_log(capfd):
    """At onnxruntime's default severity an unused initializer prints a coloured warning line to stderr."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from adtk.runtime.backends.onnxruntime import OnnxRuntimeBackend

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "odd",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              initializer=[numpy_helper.from_array(np.ones(3, np.float32), "unused")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    OnnxRuntimeBackend(model.SerializeToString(), provider="cpu")
    assert "onnxruntime" not in capfd.readouterr().err


def sleeping_check(monkeypatch, pid_file):
    """The warm-up child plays a graph that never finishes: it writes its pid, then sleeps for 10 minutes."""
    monkeypatch.setattr(isolated_warm_up, "CHILD_CODE", "import os, time; "
                        f"open({str(pid_file)!r} + '.part', 'w').write(str(os.getpid())); "
                        f"os.replace({str(pid_file)!r} + '.part', {str(pid_file)!r}); time.sleep(600)")


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:  # ended and reaped
        return False
    return True


def test_stopping_the_daemon_during_a_hot_swap_check_kills_the_check_at_once(
        tiny_build, variant_artefact_bytes, tmp_path, monkeypatch, wait):
    """SIGTERM (service.shutdown -> ModelWatcher.stop) while a candidate's check runs: stop() used to wait 10 s for
    the watcher's thread, then return with the check still running (an orphan, up to --warm-up-timeout or forever
    for a sleeping one). It returns at once; the child is killed and reaped; the candidate is not called refused."""
    pid_file = tmp_path / "check.pid"
    sleeping_check(monkeypatch, pid_file)
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_build.artefact, folder / "model.onnx")
    refusals = []
    watcher = ModelWatcher(folder, read_artefact(folder / "model.onnx").sha256, poll_s=0.05, max_pixels=BUDGET,
                           warm_up_limits=WarmUpLimits(memory_mb=256, timeout_s=30),
                           on_refused=lambda path, reason: refusals.append(reason)).start()
    (folder / "new.onnx").write_bytes(variant_artefact_bytes)
    wait(pid_file.exists, what="the candidate's warm-up check to start")
    pid = int(pid_file.read_text())
    try:
        tic = time.monotonic()
        watcher.stop()
        assert time.monotonic() - tic < 3
        assert not running(pid)
        assert refusals == [] and watcher.take() is None
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def test_stopping_the_daemon_during_the_start_up_check_ends_it_at_once(tiny_build, tmp_path, monkeypatch):
    pid_file = tmp_path / "check.pid"
    sleeping_check(monkeypatch, pid_file)
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, max_pixels=BUDGET,
                                           warm_up_limits=WarmUpLimits(memory_mb=256, timeout_s=30)), None, [],
                             log=quiet_log)

    def stop_once_the_check_runs():
        while not pid_file.exists():
            time.sleep(0.02)
        service.stop()  # what the SIGTERM handler of adtk serve does

    threading.Thread(target=stop_once_the_check_runs, daemon=True).start()
    tic = time.monotonic()
    try:
        with pytest.raises(ArtefactError, match="not checked: the daemon stopped while starting the warm-up check"):
            service.start()
        assert time.monotonic() - tic < 10
        assert not running(int(pid_file.read_text()))
    finally:
        if pid_file.exists() and running(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
