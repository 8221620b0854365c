"""What the device page shows, kept in memory: a sink that remembers the recent scores and the last anomalous
frames, and renders their overlays on request (runtime/overlay.py, the renderer of `adtk predict --overlays`).

    feed = LiveFeed(max_scores=600, max_anomalous=8)    # a sink: ScoringService(..., sinks=[..., feed])
    feed.scores_since(frame_id)     -> [{"frame_id", "time", "score", "label"}, ...] newer than frame_id
    feed.anomalous()                -> [{"frame_id", "time", "score", "source"}, ...] newest first
    feed.overlay_png(frame_id)      -> PNG bytes, or None when that frame is no longer kept

Overlays are drawn lazily (once, when the page first asks for one), so the scoring loop pays no PNG encode per
anomalous frame. What is kept of a frame is a copy at display size (longer side DISPLAY_MAX_SIDE_PX), and one
overlay is drawn at a time: kept whole, eight 9000 x 9000 frames held 2 GB, and the page's eight overlay requests,
drawn at once at full size in float32, took the daemon to 22 GB.
"""

from __future__ import annotations

import dataclasses
import io
import threading
from collections import OrderedDict, deque

import numpy as np

from adtk.runtime.daemon.sinks import FrameResult

DISPLAY_MAX_SIDE_PX = 1280  # the page shows overlays at most this large; larger frames are kept scaled down


def display_copy(result: FrameResult) -> FrameResult:
    """The result with its frame scaled down to DISPLAY_MAX_SIDE_PX on its longer side (a copy; others kept)."""
    image = result.image
    if max(image.shape[:2]) <= DISPLAY_MAX_SIDE_PX:
        return result
    from PIL import Image

    scale = DISPLAY_MAX_SIDE_PX / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    picture = Image.fromarray(image)
    picture.thumbnail(size, Image.BILINEAR, reducing_gap=2.0)  # reduces by whole factors first: fast
    return dataclasses.replace(result, image=np.asarray(picture))


class LiveFeed:
    needs_pixels = True  # the service then keeps each frame's pixels and map for the sinks
    name = "device page"

    def __init__(self, max_scores: int = 600, max_anomalous: int = 8):
        self._lock = threading.Lock()
        self._scores: deque[dict] = deque(maxlen=max_scores)
        self._anomalous: OrderedDict[int, FrameResult] = OrderedDict()  # frame_id -> result, oldest first
        self._pngs: dict[int, bytes] = {}
        self._drawing = threading.Lock()  # one overlay drawn at a time (each holds float32 copies of its frame)
        self.max_anomalous = max_anomalous

    def write(self, result: FrameResult) -> None:
        record = result.as_record()
        with self._lock:
            self._scores.append({key: record[key] for key in ("frame_id", "time", "score", "label")})
            keep = result.pred_label and result.image is not None and result.anomaly_map is not None
        if keep:
            kept = display_copy(result)  # outside the lock: the page's reads do not wait for the resize
            with self._lock:
                self._anomalous[result.frame_id] = kept
                while len(self._anomalous) > self.max_anomalous:
                    dropped, _ = self._anomalous.popitem(last=False)
                    self._pngs.pop(dropped, None)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def scores_since(self, frame_id: int = -1) -> list[dict]:
        with self._lock:
            return [entry for entry in self._scores if entry["frame_id"] > frame_id]

    def anomalous(self) -> list[dict]:
        with self._lock:
            results = list(self._anomalous.values())
        return [{"frame_id": r.frame_id, "time": r.as_record()["time"], "score": round(r.pred_score, 4),
                 "source": r.source} for r in reversed(results)]

    def overlay_png(self, frame_id: int) -> bytes | None:
        with self._lock:
            cached = self._pngs.get(frame_id)
            result = self._anomalous.get(frame_id)
        if cached is not None or result is None:
            return cached
        from PIL import Image

        from adtk.runtime.overlay import render_overlay

        with self._drawing:
            with self._lock:
                cached = self._pngs.get(frame_id)  # drawn by a request that held the lock before this one
            if cached is not None:
                return cached
            picture = render_overlay(result.image, result.anomaly_map, result.pred_score, result.pred_label,
                                     caption=f"frame {result.frame_id}")
            buffer = io.BytesIO()
            Image.fromarray(picture).save(buffer, format="PNG")
        with self._lock:
            if frame_id in self._anomalous:
                self._pngs[frame_id] = buffer.getvalue()
        return buffer.getvalue()
