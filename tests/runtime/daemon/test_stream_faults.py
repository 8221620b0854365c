"""A live MJPEG-over-HTTP camera (a local server on a thread) that stalls or sends corrupt frames: a stall is
reported and reopened within the source's stall timeout, SIGTERM does not wait for the stalled read, and a corrupt
frame is counted as undecodable without dropping the connection."""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import pytest

from adtk.runtime.daemon.service import ScoringService, ServiceConfig
from adtk.runtime.daemon.sources import VideoSource

cv2 = pytest.importorskip("cv2", reason="video sources need opencv-python-headless (pip install 'adtk[camera]')")


def jpeg(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, size=(80, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


class MjpegCamera:
    """multipart/x-mixed-replace JPEGs at `fps`. The first connection goes silent after `stall_after` frames
    (socket kept open); every `corrupt_every`-th frame is garbage."""

    def __init__(self, fps=20.0, stall_after=None, corrupt_every=None):
        self.fps, self.stall_after, self.corrupt_every = fps, stall_after, corrupt_every
        self.connections = 0
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}/stream.mjpg"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections == 1), daemon=True).start()

    def _serve(self, conn, first):
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            for i in range(100000):
                if first and self.stall_after is not None and i == self.stall_after:
                    self._stop.wait()  # connected, no bytes
                    return
                data = jpeg(i % 7)
                if self.corrupt_every and i % self.corrupt_every == self.corrupt_every - 1:
                    data = data[:200] + b"\0" * 300
                conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                             + data + b"\r\n")
                if self._stop.wait(1 / self.fps):
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self._stop.set()
        self._server.close()


@pytest.fixture
def camera():
    made = []

    def make(**kwargs):
        made.append(MjpegCamera(**kwargs))
        return made[-1]

    yield make
    for cam in made:
        cam.close()


def test_a_stalled_stream_is_reported_and_reopened_at_the_stall_timeout(tiny_build, camera, list_sink, run_service,
                                                                         wait):
    cam = camera(stall_after=5)
    lines = []
    source = VideoSource(cam.url, live=True, backoff_s=(0.05, 0.2), stall_timeout_s=1.5)
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False), source, [list_sink],
                             log=lambda kind, message: lines.append(f"{kind}: {message}"))
    run_service(service)
    wait(lambda: cam.connections >= 2 and len(list_sink.results) >= 10, timeout_s=15,
         what="frames from the reopened stream (OpenCV's own timeout is 30 s)")
    assert any("stalled" in line and "reopened" in line for line in lines), lines


def test_sigterm_does_not_wait_for_a_stalled_read(tiny_build, camera, list_sink, run_service, wait):
    cam = camera(stall_after=3)
    source = VideoSource(cam.url, live=True, stall_timeout_s=30)
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False), source, [list_sink],
                             log=lambda kind, message: None)
    thread = run_service(service)
    wait(lambda: len(list_sink.results) >= 3, what="the frames before the stall")
    time.sleep(0.5)  # the capture thread is now blocked in the silent read
    tic = time.monotonic()
    service.stop()
    thread.join(timeout=20)
    assert not thread.is_alive() and list_sink.closed
    assert time.monotonic() - tic < 4, "shutdown waited for the stalled camera read"


def test_a_corrupt_frame_is_counted_as_undecodable_without_reconnecting(tiny_build, camera, list_sink, run_service,
                                                                        wait):
    cam = camera(corrupt_every=4)
    source = VideoSource(cam.url, live=True, backoff_s=(0.05, 0.2))
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False, queue_capacity=64), source,
                             [list_sink], log=lambda kind, message: None)
    run_service(service)
    wait(lambda: service.metrics.snapshot()["frames_undecodable"] >= 3, timeout_s=15, what="corrupt frames counted")
    counts = service.metrics.snapshot()
    assert counts["source_reopens"] == 0 and cam.connections == 1  # one bad frame is not a dropped stream
    assert counts["scoring_errors"] == 0 and len(list_sink.results) >= 6
