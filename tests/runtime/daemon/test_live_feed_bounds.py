"""The device page's feed holds bounded memory: large anomalous frames are kept at display size, and overlays
are drawn one at a time however many requests arrive together (runtime/daemon/live_feed.py)."""

from __future__ import annotations

import threading
import time

import numpy as np

from adtk.runtime.daemon import live_feed
from adtk.runtime.daemon.live_feed import DISPLAY_MAX_SIDE_PX, LiveFeed
from adtk.runtime.daemon.sinks import FrameResult


def anomalous(frame_id: int, height: int, width: int) -> FrameResult:
    image = np.random.default_rng(frame_id).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return FrameResult(frame_id, "camera", time.time(), 0.9, True, 3.0, 1.0, 1.0, "sha", image,
                       np.full((32, 32), 0.8, np.float32))


def test_a_large_anomalous_frame_is_kept_at_display_size():
    feed = LiveFeed(max_anomalous=2)
    feed.write(anomalous(1, 3000, 4000))
    feed.write(anomalous(2, 200, 300))  # small frames are kept as they are
    kept = {frame_id: result.image.shape for frame_id, result in feed._anomalous.items()}
    assert kept[1] == (960, DISPLAY_MAX_SIDE_PX, 3)
    assert kept[2] == (200, 300, 3)
    png = feed.overlay_png(1)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlays_requested_together_are_drawn_one_at_a_time(monkeypatch):
    feed = LiveFeed(max_anomalous=8)
    for frame_id in range(8):
        feed.write(anomalous(frame_id, 300, 400))
    drawing, most = [0], [0]
    lock = threading.Lock()
    real = __import__("adtk.runtime.overlay", fromlist=["render_overlay"]).render_overlay

    def counting(*args, **kwargs):
        with lock:
            drawing[0] += 1
            most[0] = max(most[0], drawing[0])
        time.sleep(0.05)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                drawing[0] -= 1

    monkeypatch.setattr("adtk.runtime.overlay.render_overlay", counting)
    threads = [threading.Thread(target=feed.overlay_png, args=(frame_id,)) for frame_id in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1
    assert all(feed.overlay_png(frame_id) is not None for frame_id in range(8))
    assert live_feed.DISPLAY_MAX_SIDE_PX >= 640  # the page still gets a legible picture
