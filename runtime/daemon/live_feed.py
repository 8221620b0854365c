"""What the device page shows, kept in memory: a sink that remembers the recent scores and the last anomalous
frames, and renders their overlays on request (runtime/overlay.py, the renderer of `adtk predict --overlays`).

    feed = LiveFeed(max_scores=600, max_anomalous=8)    # a sink: ScoringService(..., sinks=[..., feed])
    feed.scores_since(frame_id)     -> [{"frame_id", "time", "score", "label"}, ...] newer than frame_id
    feed.anomalous()                -> [{"frame_id", "time", "score", "source"}, ...] newest first
    feed.overlay_png(frame_id)      -> PNG bytes, or None when that frame is no longer kept

Overlays are drawn lazily (once, when the page first asks for one), so the scoring loop only keeps references
to the frame and its map: a camera at 30 fps does not pay a PNG encode per anomalous frame.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict, deque

from adtk.runtime.daemon.sinks import FrameResult


class LiveFeed:
    needs_pixels = True  # the service then keeps each frame's pixels and map for the sinks
    name = "device page"

    def __init__(self, max_scores: int = 600, max_anomalous: int = 8):
        self._lock = threading.Lock()
        self._scores: deque[dict] = deque(maxlen=max_scores)
        self._anomalous: OrderedDict[int, FrameResult] = OrderedDict()  # frame_id -> result, oldest first
        self._pngs: dict[int, bytes] = {}
        self.max_anomalous = max_anomalous

    def write(self, result: FrameResult) -> None:
        record = result.as_record()
        with self._lock:
            self._scores.append({key: record[key] for key in ("frame_id", "time", "score", "label")})
            if result.pred_label and result.image is not None and result.anomaly_map is not None:
                self._anomalous[result.frame_id] = result
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

        picture = render_overlay(result.image, result.anomaly_map, result.pred_score, result.pred_label,
                                 caption=f"frame {result.frame_id}")
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG")
        with self._lock:
            if frame_id in self._anomalous:
                self._pngs[frame_id] = buffer.getvalue()
        return buffer.getvalue()
