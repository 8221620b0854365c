"""The daemon's counters and latency histogram, rendered in the Prometheus text exposition format.

Written by hand (about 60 lines) rather than with prometheus-client: the device runtime keeps its
dependencies to numpy + onnxruntime, the daemon needs a handful of counters and one histogram, and the
text format is small and stable (Prometheus "Exposition formats", text format 0.0.4: `# HELP`, `# TYPE`,
one `name{labels} value` line per sample; a histogram is cumulative `_bucket{le=...}` lines ending in
`le="+Inf"`, then `_sum` and `_count`). The tests parse the output with prometheus-client's own parser.
"""

from __future__ import annotations

import bisect
import threading

# Frame latency buckets, seconds (capture -> result written). From 1 ms (a tiny model on a desktop) to
# 5 s (a device far behind); the Prometheus default buckets stop at 10 s and start at 5 ms, too coarse here.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

COUNTERS = {
    "frames_scored": "Frames scored and written to the sinks.",
    "frames_dropped": "Frames dropped (oldest first) because scoring fell behind the source.",
    "frames_undecodable": "Frames that could not be decoded; counted and skipped.",
    "scoring_errors": "Frames whose scoring failed; counted and skipped.",
    "sink_errors": "Results a sink failed to write (or had to discard).",
    "source_reopens": "Attempts to reopen a source that stopped delivering.",
    "model_swaps": "New artefacts verified and swapped in.",
    "model_swaps_refused": "Artefacts in the model folder refused (integrity, contract or warm-up failed).",
    "http_requests_unauthorised": "HTTP requests refused for a missing or wrong token.",
}


class DaemonMetrics:
    """Thread-safe counters (see COUNTERS) plus a frame-latency histogram."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._bucket_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)  # last = above every bound
        self._latency_sum_s = 0.0
        self._latency_count = 0
        self.gauges: dict[str, tuple[str, callable]] = {}  # name -> (help, () -> float), read at render time
        self.model_sha256 = ""

    def inc(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self._bucket_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
            self._latency_sum_s += seconds
            self._latency_count += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def render_prometheus(self) -> str:
        with self._lock:
            counts = dict(self._counts)
            buckets = list(self._bucket_counts)
            latency_sum, latency_count = self._latency_sum_s, self._latency_count
        lines = []
        for name, help_text in COUNTERS.items():
            lines += [f"# HELP adtk_{name}_total {help_text}", f"# TYPE adtk_{name}_total counter",
                      f"adtk_{name}_total {counts[name]}"]
        lines += ["# HELP adtk_frame_latency_seconds Capture to result written, per scored frame.",
                  "# TYPE adtk_frame_latency_seconds histogram"]
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS_S + (float("inf"),), buckets):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'adtk_frame_latency_seconds_bucket{{le="{le}"}} {cumulative}')
        lines += [f"adtk_frame_latency_seconds_sum {latency_sum!r}",
                  f"adtk_frame_latency_seconds_count {latency_count}"]
        for name, (help_text, read) in self.gauges.items():
            lines += [f"# HELP adtk_{name} {help_text}", f"# TYPE adtk_{name} gauge", f"adtk_{name} {float(read())!r}"]
        lines += ["# HELP adtk_model_info The artefact being served (sha256 of its integrity record).",
                  "# TYPE adtk_model_info gauge", f'adtk_model_info{{sha256="{self.model_sha256}"}} 1']
        return "\n".join(lines) + "\n"
