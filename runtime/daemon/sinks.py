"""Where the daemon's results go: JSON lines, anomaly-map overlays, MQTT. (The HTTP API is http_api.py.)

A sink is `write(result)`, `flush()`, `close()`. write() is called from the scoring loop, so it must be
quick and must not block on the network: MqttSink hands messages to paho's own network thread.

    open_sink("-" | "stdout" | "jsonl:PATH" | "PATH.jsonl" | "overlay:DIR" | "mqtt://host:1883/topic")
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from adtk.runtime.errors import ConfigError, unicode_text
from adtk.runtime.extras import require


@dataclass
class FrameResult:
    frame_id: int
    source: str
    captured_at_s: float  # wall clock at capture
    pred_score: float  # 0..1, 0.5 = threshold
    pred_label: bool
    raw_score: float
    latency_ms: float  # capture -> scored (queue wait + inference)
    inference_ms: float
    model_sha256: str  # which artefact scored it (changes at a hot swap)
    image: np.ndarray | None = None  # uint8 [H, W, 3]; kept only for sinks that need pixels
    anomaly_map: np.ndarray | None = None  # float32 [H, W] in 0..1 (the model size)

    def as_record(self) -> dict:
        """The JSON document every sink emits (documented in `adtk serve --help`)."""
        return {
            "frame_id": self.frame_id, "time": _iso_utc(self.captured_at_s), "source": unicode_text(self.source),
            "score": round(self.pred_score, 6), "label": self.pred_label, "raw_score": round(self.raw_score, 6),
            "latency_ms": round(self.latency_ms, 3), "inference_ms": round(self.inference_ms, 3),
            "model_sha256": self.model_sha256,
        }


def _iso_utc(seconds: float) -> str:
    millis = int(round((seconds % 1) * 1000)) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonLinesSink:
    """One JSON document per line, to a file (appended) or stdout. Line-buffered: a killed daemon
    leaves at most one partial line, and SIGTERM (close) leaves none.

    stdout is usually a pipe, and a reader that stops reading would block write() and with it the scoring loop
    and SIGTERM (for ever). When stdout is a real file descriptor, lines go through a thread: up to `max_queued`
    wait while the reader is slow, beyond that the oldest is discarded and write() raises (the daemon counts it
    as a sink error and logs it), and close() waits at most `close_timeout_s` for the reader."""

    needs_pixels = False

    def __init__(self, path: str | Path | None, max_queued: int = 1000, close_timeout_s: float = 5.0):
        self.name = "stdout" if path is None else str(path)
        self._writer = None
        if path is None:
            self._stream, self._owned = sys.stdout, False
            try:
                fd = sys.stdout.fileno()
            except (AttributeError, OSError, ValueError):  # a captured stdout (tests, click's runner): write inline
                fd = None
            if fd is not None:
                sys.stdout.flush()
                self._writer = _LineWriter(fd, self.name, max_queued, close_timeout_s)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._stream, self._owned = open(path, "a", buffering=1, encoding="utf-8"), True

    def write(self, result: FrameResult) -> None:
        line = json.dumps(result.as_record()) + "\n"
        if self._writer is not None:
            self._writer.put(line.encode("utf-8"))
        else:
            self._stream.write(line)

    def flush(self) -> None:
        if self._writer is None:
            self._stream.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            return
        self.flush()
        if self._owned:
            self._stream.close()


class _LineWriter:
    """Writes queued lines to a duplicate of `fd` on its own thread, so that a stalled reader blocks only that
    thread (sys.stdout is left empty: the interpreter's own flush at exit cannot block on it either)."""

    def __init__(self, fd: int, name: str, max_queued: int, close_timeout_s: float):
        self.name, self.max_queued, self.close_timeout_s = name, max_queued, close_timeout_s
        self._fd = os.dup(fd)
        self._lines: deque[bytes] = deque()
        self._ready = threading.Condition()
        self._writing = False
        self._closed = False
        self._error: str | None = None  # why writing stopped for good (the reader closed the pipe)
        threading.Thread(target=self._run, name=f"adtk-sink-{name}", daemon=True).start()

    def put(self, line: bytes) -> None:
        with self._ready:
            if self._error is not None:
                raise OSError(f"{self.name}: {self._error}")
            self._lines.append(line)
            self._ready.notify_all()
            if len(self._lines) > self.max_queued:
                self._lines.popleft()
                raise OSError(f"{self.name}: the reader is not keeping up ({self.max_queued} results waiting); "
                              "the oldest was discarded")

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._lines and not self._closed:
                    self._ready.wait()
                if not self._lines:
                    return
                line = self._lines.popleft()
                self._writing = True
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:  # the reader went away (EPIPE): every later result fails at once, counted
                with self._ready:
                    self._error = f"cannot write: {exc.strerror or type(exc).__name__}"
                    self._lines.clear()
                    self._writing = False
                    self._ready.notify_all()
                return
            with self._ready:
                self._writing = False
                self._ready.notify_all()

    def close(self) -> None:
        """Wait up to close_timeout_s for the waiting lines; raise naming how many were not written."""
        deadline = time.monotonic() + self.close_timeout_s
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            while (self._lines or self._writing) and self._error is None and time.monotonic() < deadline:
                self._ready.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            lost = len(self._lines) + int(self._writing)
            self._lines.clear()
        if lost:  # the thread may be blocked in os.write for good: it is a daemon thread, left to the exit
            raise OSError(f"{self.name}: {lost} results not written: the reader did not read them within "
                          f"{self.close_timeout_s:g} s")
        os.close(self._fd)


class OverlaySink:
    """A PNG per anomalous frame (pred_label True), named <frame_id>.png: the frame with its map coloured above
    the map threshold, the defect region outlined, label and score in a banner (runtime/overlay.py, the same
    renderer as `adtk predict --overlays`). Written to a hidden temporary name and renamed, so readers never
    see half a PNG."""

    needs_pixels = True

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = f"overlay:{self.folder}"

    def write(self, result: FrameResult) -> None:
        if not result.pred_label or result.image is None or result.anomaly_map is None:
            return
        from adtk.runtime.overlay import render_overlay, save_png  # Pillow: imported only by this sink

        picture = render_overlay(result.image, result.anomaly_map, result.pred_score, result.pred_label,
                                 caption=f"frame {result.frame_id}  {result.source}")
        save_png(picture, self.folder / f"{result.frame_id:010d}.png")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MqttSink:
    """Publish each result's JSON record to an MQTT broker (paho-mqtt, `pip install 'adtk[mqtt]'`).

    URL: mqtt://[user[:password]@]host[:port]/topic (mqtts:// for TLS). paho's network thread connects,
    reconnects after a broker outage (back-off 1..60 s) and sends; while the broker is away up to
    `max_queued` messages wait, beyond that they are discarded and counted as sink errors.

    Nothing is lost silently: every result that is not delivered (discarded because paho's queue is full, or,
    with qos 0, published while disconnected; or still unacknowledged when close() has waited
    `close_timeout_s`) is passed to `on_discard` (`adtk serve` counts it in sink_errors) and reported on the
    log, with how many, at most one line per `report_every_s`. The broker's connection going away, coming
    back, and a connected broker that acknowledges nothing for `stall_s` (frozen, overloaded) are reported
    too. The log is stderr until the service attaches its own (attach_log).
    """

    needs_pixels = False

    def __init__(self, url: str, qos: int = 1, max_queued: int = 1000, client_id: str = "",
                 on_discard=lambda: None, close_timeout_s: float = 5.0, report_every_s: float = 10.0,
                 stall_s: float = 10.0, log=None):
        mqtt = require("paho.mqtt.client", "the MQTT sink")
        parts = urlsplit(url)
        self.topic = unquote(parts.path.lstrip("/"))
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or not self.topic:
            raise ConfigError(f"--sink {url}: expected mqtt://host[:port]/topic (or mqtts://)")
        self.name = f"mqtt://{parts.hostname}:{parts.port or 1883}/{self.topic}"
        self.qos, self.max_queued = qos, max_queued
        self.close_timeout_s, self.report_every_s, self.stall_s = close_timeout_s, report_every_s, stall_s
        self._on_discard = on_discard
        self._log = log or _print_to_stderr
        self._mqtt = mqtt
        # What went wrong, reported by state change (connection) or tallied and reported at most once per
        # report_every_s (discards): guarded by _acks, like the acknowledgement bookkeeping below.
        self._down_since: float | None = None  # not connected since (monotonic); None while connected or never tried
        self._closing = False
        self._discarded_total = 0
        self._discarded_unreported = 0
        self._discard_reason = ""
        self._last_discard_report = -1e18
        self._waiting_since: float | None = None  # the broker owes acknowledgements since (last ack or first owed)
        self._stalled_since: float | None = None
        # Acknowledgements are tracked by message id through on_publish: paho's MessageInfo of a message
        # queued while disconnected keeps its NO_CONN code even after it is sent on reconnect.
        self._unacked: set[int] = set()
        self._acked_early: set[int] = set()  # acks that arrived before publish() returned
        self._acks = threading.Condition()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.max_queued_messages_set(max_queued)
        self._client.reconnect_delay_set(min_delay=1, max_delay=60)
        if parts.username:
            self._client.username_pw_set(unquote(parts.username), unquote(parts.password or ""))
        if parts.scheme == "mqtts":
            self._client.tls_set()
        self._client.on_publish = self._on_publish
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.connect_async(parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883))
        self._client.loop_start()

    def attach_log(self, log) -> None:
        """Report through `log(kind, message)` (the service's rate-limited log) from now on."""
        self._log = log
        self.report_every_s = max(self.report_every_s, getattr(log, "every_s", 0.0))

    def _report(self, what: str, message: str) -> None:
        try:  # the kind names the sink: another sink's errors cannot suppress these lines in a rate-limited log
            self._log(f"sink {what} {self.name}", message)
        except Exception:  # noqa: BLE001 - a broken log must not stop paho's network thread or scoring
            pass

    # ---- paho's network thread -------------------------------------------------------------------

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        recovered = None
        with self._acks:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._acked_early.add(mid)
            now = time.monotonic()
            self._waiting_since = now if self._unacked else None
            if self._stalled_since is not None:
                recovered, self._stalled_since = now - self._stalled_since, None
            self._acks.notify_all()
        if recovered is not None:
            self._report("connection", f"the broker is acknowledging again (after {recovered:.0f} s)")

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if getattr(reason_code, "is_failure", False):
            self._went_down(f"the broker refused the connection ({reason_code}); paho retries with back-off 1..60 s")
            return
        with self._acks:
            down_since, self._down_since = self._down_since, None
            waiting = len(self._unacked)
            self._waiting_since = time.monotonic() if waiting else None  # the stall clock starts again
        if down_since is not None:
            self._report("connection", f"connected to the broker again after {time.monotonic() - down_since:.0f} s; "
                                       f"sending the {waiting} results that waited")

    def _on_connect_fail(self, client, userdata) -> None:
        self._went_down("cannot connect to the broker; paho retries with back-off 1..60 s")

    def _on_disconnect(self, client, userdata, flags=None, reason_code=None, properties=None) -> None:
        self._went_down(f"lost the connection to the broker ({reason_code}); paho reconnects with back-off 1..60 s")

    def _went_down(self, why: str) -> None:
        with self._acks:
            if self._down_since is not None or self._closing:
                return  # reported once per outage; repeated failed attempts are not news
            self._down_since = time.monotonic()
        self._report("connection", f"{why}; results wait in its queue (at most {self.max_queued}, beyond that "
                                   "they are discarded and counted as sink errors)")

    # ---- the scoring loop ------------------------------------------------------------------------

    def write(self, result: FrameResult) -> None:
        info = self._client.publish(self.topic, json.dumps(result.as_record()), qos=self.qos)
        if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
            self._discard(f"paho's queue is full: {self.max_queued} results waiting for the broker")
        elif info.rc == self._mqtt.MQTT_ERR_NO_CONN and self.qos == 0:
            self._discard("qos 0 and not connected to the broker")  # paho does not queue qos 0
        elif info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
            self._discard(f"publish failed: {self._mqtt.error_string(info.rc)}")
        elif self.qos > 0:
            with self._acks:
                if info.mid in self._acked_early:
                    self._acked_early.discard(info.mid)
                else:
                    self._unacked.add(info.mid)
                    if self._waiting_since is None:
                        self._waiting_since = time.monotonic()
        self._check_stall()
        self._report_discards()

    def _discard(self, reason: str) -> None:
        self._on_discard()  # this result is lost, and counted
        with self._acks:
            self._discarded_total += 1
            self._discarded_unreported += 1
            self._discard_reason = reason

    def _report_discards(self, force: bool = False) -> None:
        with self._acks:
            now = time.monotonic()
            if not self._discarded_unreported or (not force and now - self._last_discard_report < self.report_every_s):
                return
            count, self._discarded_unreported, self._last_discard_report = self._discarded_unreported, 0, now
            total, reason = self._discarded_total, self._discard_reason
        self._report("error", f"{count} result{'s' * (count != 1)} discarded ({reason}), counted as sink errors; "
                              f"{total} in all")

    def _check_stall(self) -> None:
        with self._acks:
            now = time.monotonic()
            if (self._stalled_since is not None or self._waiting_since is None or self._down_since is not None
                    or now - self._waiting_since < self.stall_s):
                return
            self._stalled_since, waiting = self._waiting_since, len(self._unacked)
        self._report("connection", f"the broker has acknowledged nothing for {now - self._stalled_since:.0f} s "
                                   f"({waiting} results waiting); they stay queued")

    @property
    def unacknowledged(self) -> int:
        with self._acks:
            return len(self._unacked)

    @property
    def discarded(self) -> int:
        """Results not delivered so far (each also passed to on_discard)."""
        with self._acks:
            return self._discarded_total

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait (up to timeout_s) until the broker has acknowledged everything published (qos >= 1)."""
        deadline = time.monotonic() + timeout_s
        with self._acks:
            while self._unacked and time.monotonic() < deadline:
                self._acks.wait(min(0.1, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        """Wait up to close_timeout_s for the broker's acknowledgements; what is still unacknowledged then is
        lost: counted (on_discard) and reported in one line, with the discards not reported yet."""
        with self._acks:
            self._closing = True
        self.flush(self.close_timeout_s)
        with self._acks:
            lost = len(self._unacked)
            self._unacked.clear()
            self._discarded_total += lost
            earlier, self._discarded_unreported = self._discarded_unreported, 0
            reason = self._discard_reason
        for _ in range(lost):
            self._on_discard()
        self._client.disconnect()
        self._client.loop_stop()
        parts = []
        if lost:
            parts.append(f"{lost} result{'s' * (lost != 1)} not acknowledged by the broker within "
                         f"{self.close_timeout_s:g} s at shutdown")
        if earlier:
            parts.append(f"{earlier} discarded since the last report ({reason})")
        if parts:
            self._report("closed", f"{'; '.join(parts)}: lost, counted as sink errors ({self.discarded} in all)")


def _print_to_stderr(kind: str, message: str) -> None:
    print(f"adtk serve: {kind}: {message}", file=sys.stderr, flush=True)


def open_sink(value: str, on_discard=lambda: None):
    """A command-line --sink value -> a sink."""
    if value in ("-", "stdout"):
        return JsonLinesSink(None)
    if value.startswith(("mqtt://", "mqtts://")):
        return MqttSink(value, on_discard=on_discard)
    if value.startswith("overlay:"):
        return OverlaySink(value[len("overlay:"):])
    if value.startswith("jsonl:"):
        return JsonLinesSink(value[len("jsonl:"):])
    if value.endswith((".jsonl", ".json", ".log")):
        return JsonLinesSink(value)
    raise ConfigError(f"--sink {value}: expected -, stdout, jsonl:PATH, PATH.jsonl, overlay:DIR or "
                      "mqtt://host[:port]/topic")
