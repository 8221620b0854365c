"""The MQTT sink loses nothing silently: against a real mosquitto broker (Debian package `mosquitto`) frozen with
SIGSTOP or stopped, every result it could not deliver is counted as a sink error and reported in a log line that
names the sink and how many; the broker going away and coming back is logged; shutdown waits a bounded time."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from adtk.runtime.daemon.metrics import DaemonMetrics
from adtk.runtime.daemon.service import ScoringService, ServiceConfig
from adtk.runtime.daemon.sinks import FrameResult, MqttSink

pytest.importorskip("paho.mqtt.client", reason="the MQTT sink needs paho-mqtt (pip install 'adtk[mqtt]')")
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ["/usr/sbin/mosquitto"] if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None,
                                reason="mosquitto is not installed (Debian: apt-get install mosquitto)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Broker:
    """mosquitto on a loopback port; freeze() / thaw() with SIGSTOP / SIGCONT, stop() and start() again."""

    def __init__(self, folder, port: int | None = None):
        self.port = port or free_port()
        self.config = folder / f"mosquitto-{self.port}.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process = None
        self.start()

    def start(self):
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    pytest.skip(f"mosquitto did not start on port {self.port}")
                time.sleep(0.05)
        self.stop()
        pytest.skip("mosquitto did not open its port within 10 s")

    def freeze(self):
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self):
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path)
    yield broker
    broker.stop()


class Lines:
    """The service's log: (kind, message) pairs."""

    def __init__(self):
        self.lines = []

    def __call__(self, kind, message):
        self.lines.append((kind, message))

    def __len__(self):
        return len(self.lines)

    def __bool__(self):  # `log or RateLimitedLog(...)` in the service
        return True

    def __repr__(self):
        return repr(self.lines)

    def about(self, sink, *words):
        return [f"{kind}: {message}" for kind, message in list(self.lines)
                if sink.name in f"{kind}: {message}" and all(word in message for word in words)]


def connected_sink(port: int, metrics: DaemonMetrics, **options) -> MqttSink:
    sink = MqttSink(f"mqtt://127.0.0.1:{port}/line-1/results", on_discard=lambda: metrics.inc("sink_errors"),
                    **options)  # wired as `adtk serve` wires it
    sink.close_timeout_s = 1.0  # attributes, not arguments: the same test runs against the sink before the fix
    deadline = time.monotonic() + 10
    while not sink._client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink._client.is_connected(), "the sink did not connect to the broker"
    return sink


def reported_count(lines: list[str]) -> int:
    """The results the log lines say were lost ("N results not acknowledged", "N discarded")."""
    pattern = r"(\d+) (?:results? )?(?:discarded|not acknowledged)"
    return sum(int(n) for line in lines for n in re.findall(pattern, line))


def test_results_the_frozen_broker_never_acknowledged_are_counted_and_reported_at_shutdown(
        broker, tiny_build, test_images, array_source, run_service):
    """The probe's case: broker frozen, daemon stopped -> the unacknowledged results were dropped, sink_errors 0."""
    metrics, lines = DaemonMetrics(), Lines()
    sink = connected_sink(broker.port, metrics)
    broker.freeze()
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False),
                             array_source(test_images, repeat=10), [sink], metrics=metrics, log=lines)
    thread = run_service(service)
    thread.join(timeout=60)
    assert not thread.is_alive()
    counts = metrics.snapshot()
    assert counts["frames_scored"] == 40
    assert counts["sink_errors"] == 40, "results the broker never acknowledged were dropped uncounted"
    closing = lines.about(sink, "not acknowledged")
    assert len(closing) == 1, f"no one-line report of the unacknowledged results: {lines}"
    assert "40 results not acknowledged" in closing[0]
    assert reported_count(lines.about(sink)) == 40


def test_results_discarded_on_a_full_queue_are_reported_with_how_many(broker, tiny_build, test_images,
                                                                      array_source, run_service):
    metrics, lines = DaemonMetrics(), Lines()
    sink = connected_sink(broker.port, metrics, max_queued=10)
    broker.freeze()
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False),
                             array_source(test_images, repeat=25), [sink], metrics=metrics, log=lines)
    started = time.monotonic()
    run_service(service).join(timeout=60)
    took_s = time.monotonic() - started
    assert metrics.snapshot()["frames_scored"] == 100
    assert metrics.snapshot()["sink_errors"] == 100  # 90 discarded (queue full) + 10 never acknowledged
    during_run = lines.about(sink, "discarded", "queue is full")
    assert during_run and "1 result discarded" in during_run[0], f"queue-full discards were not logged: {lines}"
    assert len(lines) <= 3, f"the log is not rate-limited: {lines}"
    assert reported_count(lines.about(sink)) == 100, lines  # every lost result is in some line's count
    assert took_s < 20, "the frozen broker held up scoring or shutdown"


def test_writes_do_not_block_on_a_frozen_broker_and_a_stall_is_reported(broker, tiny_build):
    metrics, lines = DaemonMetrics(), Lines()
    sink = connected_sink(broker.port, metrics)
    sink.stall_s = 0.5
    ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False), None, [sink], log=lines)  # attaches its log
    result = FrameResult(frame_id=0, source="test", captured_at_s=time.time(), pred_score=0.2, pred_label=False,
                         raw_score=1.0, latency_ms=1.0, inference_ms=1.0, model_sha256="0" * 64)
    try:
        broker.freeze()
        slowest = 0.0
        deadline = time.monotonic() + 10
        while not lines.about(sink, "acknowledged nothing") and time.monotonic() < deadline:
            tic = time.monotonic()
            sink.write(result)
            slowest = max(slowest, time.monotonic() - tic)
            time.sleep(0.05)
        assert slowest < 0.5
        assert lines.about(sink, "acknowledged nothing"), f"a frozen broker was not reported: {lines}"
        broker.thaw()
        sink.flush(timeout_s=10)
        assert sink.unacknowledged == 0
        assert lines.about(sink, "acknowledging again"), lines
    finally:
        sink.close()
    assert metrics.snapshot()["sink_errors"] == 0


def test_the_broker_going_away_and_coming_back_is_logged(tmp_path, tiny_build, wait):
    broker = Broker(tmp_path)
    metrics, lines = DaemonMetrics(), Lines()
    sink = connected_sink(broker.port, metrics)
    ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False), None, [sink], log=lines)
    try:
        broker.stop()
        wait(lambda: lines.about(sink, "lost the connection"), timeout_s=10, what="a log line: connection lost")
        broker.start()
        wait(lambda: lines.about(sink, "connected to the broker again"), timeout_s=20,
             what="a log line: connected again")
        assert len(lines) == 2, lines  # one line each; the failed reconnect attempts in between are not news
    finally:
        sink.close()
        broker.stop()
