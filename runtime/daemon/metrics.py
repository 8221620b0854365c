"""The daemon's counters and histograms, exposed in the Prometheus text format through prometheus-client.

The counts live here, in plain Python under one lock, because /health, the device page and the exit summary
read them too and the runtime core must work without prometheus-client (numpy + onnxruntime + Pillow).
At scrape time a custom collector (prometheus-client's documented way to expose values an application
already tracks) turns them into metric families and `generate_latest` writes the exposition text. Without
prometheus-client (`pip install 'adtk[serve]'`), scoring goes on and /metrics answers one line saying so.

    adtk_<counter>_total                          the COUNTERS below
    adtk_frames_anomalous_total{model_sha256}     frames with pred_label True, per artefact served
    adtk_score{model_sha256}                      histogram of pred_score (0..1, 0.5 = threshold)
    adtk_frame_latency_seconds                    histogram, capture -> result written
    adtk_<gauge>                                  gauges registered by the service (queue depth)
    adtk_model_info{sha256}                       1 for the artefact being served
"""

from __future__ import annotations

import bisect
import threading

# Frame latency buckets, seconds (capture -> result written). From 1 ms (a tiny model on a desktop) to
# 5 s (a device far behind); the Prometheus default buckets stop at 10 s and start at 5 ms, too coarse here.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# pred_score buckets: 0.5 is the threshold, so le="0.5" counts exactly the frames labelled good; finer
# steps around it show how close to the cut the line runs.
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0)
INSTALL_HINT = "prometheus-client is not installed; /metrics needs it: pip install 'adtk[serve]'"

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
    "http_predictions": "Frames scored through POST /predict.",
    "http_requests_refused": "HTTP requests refused: malformed, body too large or incomplete, image undecodable "
                             "or over the pixel budget, or no prediction slot free (busy).",
    "http_connections_refused": "HTTP connections answered 503 and closed at once: the connection cap was reached.",
    "http_timeouts": "HTTP connections closed because the client missed a header, body or idle deadline.",
}


class _Histogram:
    """Bucket counts (the last one above every bound), sum and count; the caller holds the lock."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, cumulative count)], ending with ("+Inf", count): prometheus-client's bucket form."""
        out, running = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class DaemonMetrics:
    """Thread-safe counters (see COUNTERS), per-model anomalous counts and score histograms, frame latency."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._latency = _Histogram(LATENCY_BUCKETS_S)
        self._scores: dict[str, _Histogram] = {}  # model sha256 -> pred_score histogram
        self._anomalous: dict[str, int] = {}  # model sha256 -> frames labelled anomalous
        self.gauges: dict[str, tuple[str, callable]] = {}  # name -> (help, () -> float), read at render time
        self.model_sha256 = ""

    def inc(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self._latency.observe(seconds)

    def observe_score(self, pred_score: float, pred_label: bool, model_sha256: str) -> None:
        """One scored frame's pred_score (0..1) and label, under the artefact that scored it."""
        with self._lock:
            self._scores.setdefault(model_sha256, _Histogram(SCORE_BUCKETS)).observe(pred_score)
            self._anomalous[model_sha256] = self._anomalous.get(model_sha256, 0) + int(bool(pred_label))

    def snapshot(self) -> dict[str, int]:
        """The COUNTERS plus frames_anomalous (all models together)."""
        with self._lock:
            return {**self._counts, "frames_anomalous": sum(self._anomalous.values())}

    def collect(self):
        """prometheus-client collector protocol: yield the metric families (read under the lock)."""
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily)

        with self._lock:
            counts, anomalous = dict(self._counts), dict(self._anomalous)
            latency = (self._latency.cumulative(), self._latency.sum)
            scores = {sha: (h.cumulative(), h.sum) for sha, h in self._scores.items()}
        for name, help_text in COUNTERS.items():
            yield CounterMetricFamily(f"adtk_{name}", help_text, value=counts[name])
        family = CounterMetricFamily("adtk_frames_anomalous", "Frames labelled anomalous (pred_score > 0.5).",
                                     labels=["model_sha256"])
        for sha, count in anomalous.items():
            family.add_metric([sha], count)
        yield family
        family = HistogramMetricFamily("adtk_score", "pred_score per scored frame (0..1; 0.5 is the threshold).",
                                       labels=["model_sha256"])
        for sha, (buckets, total) in scores.items():
            family.add_metric([sha], buckets, total)
        yield family
        yield HistogramMetricFamily("adtk_frame_latency_seconds", "Capture to result written, per scored frame.",
                                    buckets=latency[0], sum_value=latency[1])
        for name, (help_text, read) in self.gauges.items():
            yield GaugeMetricFamily(f"adtk_{name}", help_text, value=float(read()))
        family = InfoMetricFamily("adtk_model", "The artefact being served (sha256 of its integrity record).")
        family.add_metric([], {"sha256": self.model_sha256})
        yield family

    def render_prometheus(self) -> str | None:
        """The Prometheus text exposition, or None when prometheus-client is not installed (see INSTALL_HINT)."""
        try:
            from prometheus_client import CollectorRegistry, generate_latest
        except ImportError:
            return None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry).decode("utf-8")
