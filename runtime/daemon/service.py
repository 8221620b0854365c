"""ScoringService: source -> bounded queue -> score -> sinks, with hot swap; it must not die and must not leak.

    service = ScoringService(ServiceConfig(model=Path("models/model.onnx")), source, [JsonLinesSink(None)])
    service.start()          # verifies the model, starts the capture and model-watcher threads
    service.run()            # the scoring loop, on the calling thread, until stop() or the source ends
    service.stop()           # from a signal handler: finishes the frame in flight; run() then flushes sinks

Every failure a frame, a sink or the source can cause is counted in `service.metrics` and logged
(at most once per `log_every_s` per kind, so a broken camera does not fill the disk), and the loop goes on.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from adtk.runtime.daemon.hot_swap import ModelWatcher, load_verified
from adtk.runtime.daemon.isolated_warm_up import WarmUpLimits
from adtk.runtime.daemon.metrics import DaemonMetrics
from adtk.runtime.daemon.sinks import FrameResult
from adtk.runtime.daemon.sources import Frame, FrameCounter, FrameQueue
from adtk.runtime.detector import Detector
from adtk.runtime.errors import one_line


@dataclass
class ServiceConfig:
    model: Path  # the artefact to serve first
    model_dir: Path | None = None  # folder watched for new artefacts; None = the model's folder
    watch: bool = True
    watch_poll_s: float = 1.0
    queue_capacity: int = 8
    backend: str = "auto"
    log_every_s: float = 10.0
    max_pixels: int | None = None  # per frame, checked before decoding; None = sized from this machine's memory
    public_key: Path | None = None  # ed25519 public key: every model must carry a valid .sig (None: $ADTK_PUBLIC_KEY)
    # memory and time a model may take to load and score its warm-up frames in a child process before it is served
    warm_up_limits: WarmUpLimits = field(default_factory=WarmUpLimits)


CAPTURE_JOIN_S = 1.0  # how long shutdown waits for the capture thread to notice stop()


class RateLimitedLog:
    """Log lines to stderr, at most one per kind every `every_s` seconds (with a count of the suppressed)."""

    def __init__(self, every_s: float, stream=None):
        self.every_s, self.stream = every_s, stream or sys.stderr
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            last_s, suppressed = self._last.get(kind, (-1e18, 0))
            if now - last_s < self.every_s:
                self._last[kind] = (last_s, suppressed + 1)
                return
            self._last[kind] = (now, 0)
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        print(f"adtk serve: {one_line(kind)}: {one_line(message)}{more}", file=self.stream, flush=True)


class ScoringService:
    def __init__(self, config: ServiceConfig, source, sinks: list, metrics: DaemonMetrics | None = None,
                 log=None):
        self.config, self.source, self.sinks = config, source, list(sinks)
        self.metrics = metrics or DaemonMetrics()
        self.log = log or RateLimitedLog(config.log_every_s)
        self.queue = FrameQueue(config.queue_capacity, on_drop=self._on_drop)
        self.detector: Detector | None = None
        self.model_path = Path(config.model)
        self.started_at_s = time.time()
        self.last_frame_at_s: float | None = None
        self.source_finished = False
        self.source_error: str | None = None  # why the source stopped, when it failed (adtk serve then exits 1)
        # a live source that stalled or dropped and could not be reopened yet (GET /health says so until it is)
        self.source_down: str | None = None
        self._stop = threading.Event()
        self._shut_down = False
        self._capture_thread: threading.Thread | None = None
        self._watcher: ModelWatcher | None = None
        self._keep_pixels = any(getattr(sink, "needs_pixels", False) for sink in self.sinks)
        for sink in self.sinks:  # sinks that report events of their own (MQTT: the broker going away, coming back)
            if hasattr(sink, "attach_log"):
                sink.attach_log(self.log)
        self.metrics.gauges["queue_depth"] = ("Frames waiting to be scored.", lambda: len(self.queue))
        from adtk.runtime.signing import configured_public_key

        self.public_key = configured_public_key(config.public_key)
        self.model_update: dict | None = None  # the newest candidate's refusal, until a good one is installed
        self.metrics.gauges["model_update_refused"] = (
            "1 while the newest artefact in the model folder is refused (signature, integrity, contract or "
            "warm-up) and an older one is still served.", lambda: float(self.model_update is not None))

    # ---- life cycle -------------------------------------------------------------------------------

    def start(self) -> "ScoringService":
        """Verify and warm up the model (raises ArtefactError if it is bad, or if stop() came during its warm-up
        check: SIGTERM at start-up ends the check at once rather than after up to --warm-up-timeout), then start
        the threads."""
        self._install(load_verified(self.model_path, self.config.backend, self.public_key, self.config.max_pixels,
                                    self.config.warm_up_limits, self._stop), self.model_path)
        if self.config.watch:
            folder = self.config.model_dir or self.model_path.parent
            self._watcher = ModelWatcher(folder, self.detector.artefact.sha256, self.config.backend,
                                         self.config.watch_poll_s, on_refused=self._on_refused,
                                         on_offered=self._on_offered, public_key=self.public_key,
                                         max_pixels=self.config.max_pixels,
                                         warm_up_limits=self.config.warm_up_limits).start()
        if self.source is not None:
            self._capture_thread = threading.Thread(target=self._capture, name="adtk-capture", daemon=True)
            self._capture_thread.start()
        return self

    def stop(self) -> None:
        """Safe from a signal handler: only sets a flag; run() finishes its frame and cleans up."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def status(self) -> str:
        """One word or two for GET /health and the device page: the most pressing state first."""
        if self.stopping:
            return "stopping"
        if self.source_finished:
            return "source finished"
        if self.source_down is not None:
            return "source down"
        return "update refused" if self.model_update is not None else "ok"

    def run(self) -> None:
        """Score frames until stop() or the source ends; then flush and close every sink."""
        try:
            while not self._stop.is_set():
                self._maybe_swap()
                frame = self.queue.get(timeout_s=0.2)
                if frame is None:
                    if self.queue.closed_and_empty:
                        break
                    continue
                self._process(frame)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop the threads, then flush and close every sink (once; later calls do nothing)."""
        if self._shut_down:
            return
        self._shut_down = True
        self._stop.set()
        self.queue.close()
        if self._watcher is not None:
            self._watcher.stop()
        if self._capture_thread is not None:
            # Nothing captured from now on is scored, so the wait is short: a camera read blocked in OpenCV cannot
            # be interrupted (it ends at the source's stall timeout), and SIGTERM waited for it (10 s on a stall).
            self._capture_thread.join(timeout=CAPTURE_JOIN_S)
            if self._capture_thread.is_alive():
                self.log("source", f"{getattr(self.source, 'name', self.source)}: still blocked in a read at "
                                   "shutdown; not waiting for it")
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - one broken sink must not keep the others unflushed
                self.log("sink error", f"{getattr(sink, 'name', sink)}: closing failed: {exc}")

    # ---- scoring ---------------------------------------------------------------------------------

    def score(self, image, frame_id: int = -1, source: str = "http", captured_mono_s: float | None = None,
              captured_at_s: float | None = None, keep_pixels: bool = False) -> FrameResult:
        """Score one uint8 [H, W, 3] RGB image with the model being served now (thread-safe)."""
        detector = self.detector  # one reference for the whole frame: a swap cannot split a frame
        captured_mono_s = time.monotonic() if captured_mono_s is None else captured_mono_s
        tic = time.monotonic()
        prediction = detector.predict(image[None])
        done = time.monotonic()
        return FrameResult(
            frame_id=frame_id, source=source,
            captured_at_s=time.time() if captured_at_s is None else captured_at_s,
            pred_score=float(prediction.pred_score[0]), pred_label=bool(prediction.pred_label[0]),
            raw_score=float(prediction.raw_score[0]), latency_ms=(done - captured_mono_s) * 1000,
            inference_ms=(done - tic) * 1000, model_sha256=detector.artefact.sha256,
            image=image if keep_pixels else None,
            anomaly_map=prediction.anomaly_map[0] if keep_pixels else None)

    def _process(self, frame: Frame) -> None:
        if frame.image is None:
            self.metrics.inc("frames_undecodable")
            self.log("undecodable frame", frame.error or f"frame {frame.frame_id} from {frame.source}")
            return
        try:
            result = self.score(frame.image, frame.frame_id, frame.source, frame.captured_mono_s,
                                frame.captured_at_s, self._keep_pixels)
        except Exception as exc:  # noqa: BLE001 - the daemon must not die on one frame: count, log, go on
            self.metrics.inc("scoring_errors")
            self.log("scoring error", f"frame {frame.frame_id} from {frame.source}: {type(exc).__name__}: {exc}")
            return
        for sink in self.sinks:
            try:
                sink.write(result)
            except Exception as exc:  # noqa: BLE001 - a full disk or a dead pipe must not stop scoring
                self.metrics.inc("sink_errors")
                self.log("sink error", f"{getattr(sink, 'name', sink)}: {type(exc).__name__}: {exc}")
        self.metrics.inc("frames_scored")
        self.metrics.observe_score(result.pred_score, result.pred_label, result.model_sha256)
        self.metrics.observe_latency(result.latency_ms / 1000)
        self.last_frame_at_s = time.time()

    # ---- threads and callbacks -------------------------------------------------------------------

    def _capture(self) -> None:
        """Capture thread: source -> queue. Live sources drop the oldest frame when scoring falls behind."""
        block = not getattr(self.source, "live", True)
        counter = FrameCounter()
        try:
            for frame in self.source.frames(counter, self._stop, on_reopen=self._on_reopen):
                self.queue.put(frame, block=block, stop=self._stop)
        except Exception as exc:  # noqa: BLE001 - reported; /health then shows the source as finished
            self.source_error = f"{getattr(self.source, 'name', self.source)}: {type(exc).__name__}: {exc}"
            self.log("source error", self.source_error)
        finally:
            self.source_finished = True
            self.queue.close()

    def _maybe_swap(self) -> None:
        if self._watcher is None:
            return
        offered = self._watcher.take()
        if offered is not None:
            old = self.detector.artefact.sha256
            self._install(offered, getattr(offered, "path", self.model_path))
            self.metrics.inc("model_swaps")
            self.log("model swapped", f"{old[:12]}... -> {offered.artefact.sha256[:12]}...")

    def _install(self, detector: Detector, path: Path) -> None:
        self.detector = detector
        self.model_path = Path(path)
        self.model_loaded_at_s = time.time()
        self.metrics.model_sha256 = detector.artefact.sha256

    def refused_models(self) -> list[tuple[str, str]]:
        """(path, reason) of the artefacts the model watcher refused, oldest first (the most recent 100)."""
        return list(self._watcher.refused) if self._watcher is not None else []

    def _on_drop(self, frame: Frame) -> None:
        self.metrics.inc("frames_dropped")

    def _on_reopen(self, name: str, opened: bool, why: str | None = None) -> None:
        """A reopen attempt; `why` is what happened to the source before it (a stall, a drop), when the source knows."""
        self.metrics.inc("source_reopens")
        state = "reopened" if opened else "not delivering; retrying with back-off"
        self.source_down = None if opened else (f"{name}: {why}; retrying" if why else f"{name}: {state}")
        self.log("source reopen", f"{name}: {why}; {state}" if why else f"{name}: {state}")

    def _on_refused(self, path, reason: str) -> None:
        self.metrics.inc("model_swaps_refused")
        self.model_update = {"state": "refused", "path": str(path), "reason": reason,
                             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.log("model refused", f"{reason}; still serving {self.detector.artefact.sha256[:12]}...")

    def _on_offered(self, path, detector: Detector | None) -> None:
        """A candidate verified (None: it is the artefact already served): any earlier refusal is settled."""
        self.model_update = None
        if detector is not None:
            detector.path = Path(path)  # remembered for GET /model once it is swapped in
