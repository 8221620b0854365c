"""Frame sources for the daemon, and the bounded queue between capture and scoring.

A source yields `Frame`s from its own capture thread. A frame that cannot be decoded is still yielded,
with `image=None` and `error` set, so that the scoring loop counts it instead of it vanishing.

    FolderSource(folder)        new image files appearing in a folder (adtk.runtime.images.decode_image);
                                never dropped: when scoring falls behind, files wait on disk (backpressure)
    VideoSource(uri)            a video file, a camera index (V4L2) or an RTSP/HTTP stream, through OpenCV
    open_source("0" | "rtsp://..." | "clip.mp4" | "folder/")   picks one from a command-line value
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adtk.runtime.errors import ConfigError, DataError
from adtk.runtime.extras import require
from adtk.runtime.pixels import check_frame_side

STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
# what an undecodable frame's message ends with (the decoder's default hint names --skip-bad, an option of adtk
# predict and adtk build that adtk serve does not have: the daemon always skips such a frame)
SKIPPED_HINT = "skipped; the daemon goes on with the next frame"
# A live stream that delivers no frame for this long is taken as stalled and reopened. OpenCV's FFmpeg default is
# 30 s for opening and for each read, during which a connected-but-silent camera looked healthy and a SIGTERM waited.
STALL_TIMEOUT_S = 10.0
# Failed reads in a row, each returning at once, before a stream is taken as ended: one corrupt frame makes a single
# read fail and the next one succeed, and reconnecting for it cost the camera's next frames (and was not counted).
BAD_READS_IN_A_ROW = 3


@dataclass
class Frame:
    frame_id: int  # daemon-wide sequence number, in capture order
    source: str  # the file, "camera:0" or the stream URL it came from
    captured_at_s: float  # wall clock (time.time()) at capture
    captured_mono_s: float  # time.monotonic() at capture: latency is measured from here
    image: np.ndarray | None  # uint8 [H, W, 3] RGB; None when the frame could not be decoded
    error: str | None = None


class FrameQueue:
    """Bounded queue between capture and scoring. When it is full, `put` drops the OLDEST frame and
    counts it (a camera's newest frame is the one worth scoring); `put(block=True)` waits instead, for
    recorded files where every frame should be scored."""

    def __init__(self, capacity: int, on_drop: Callable[[Frame], None] = lambda frame: None):
        if capacity < 1:
            raise ConfigError(f"queue capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._frames: deque[Frame] = deque()
        self._ready = threading.Condition()
        self._on_drop = on_drop
        self._closed = False

    def put(self, frame: Frame, block: bool = False, stop: threading.Event | None = None) -> None:
        with self._ready:
            while block and len(self._frames) >= self.capacity and not self._closed:
                if stop is not None and stop.is_set():
                    return
                self._ready.wait(0.1)
            if len(self._frames) >= self.capacity:
                self._on_drop(self._frames.popleft())
            self._frames.append(frame)
            self._ready.notify_all()

    def get(self, timeout_s: float) -> Frame | None:
        """The oldest queued frame, or None after timeout_s (or once closed and empty)."""
        with self._ready:
            if not self._frames and not self._closed:
                self._ready.wait(timeout_s)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._ready.notify_all()
            return frame

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    @property
    def closed_and_empty(self) -> bool:
        with self._ready:
            return self._closed and not self._frames

    def __len__(self) -> int:
        with self._ready:
            return len(self._frames)


class FrameCounter:
    """Hands out frame ids; shared by whichever sources feed one daemon."""

    def __init__(self):
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def make(self, source: str, image: np.ndarray | None, error: str | None = None) -> Frame:
        with self._lock:
            frame_id = next(self._ids)
        return Frame(frame_id, source, time.time(), time.monotonic(), image, error)


class FolderSource:
    """New image files in a folder, oldest first (the folder is listed every poll_s; a file is scored
    again if it is rewritten). A file is taken once its size and mtime have not changed between two polls, so a file still being written is not read half-way (and if it is, the
    strict decoder refuses it and the frame is counted as undecodable). Hidden files and *.part/*.tmp
    are ignored. Files are never modified or deleted.

    A folder is not a camera: files waiting on disk are never dropped. The capture thread blocks on a
    full queue (live = False), so at most `queue capacity` decoded frames are held and the rest wait as
    files; each is decoded by the one decoder, within the pixel budget."""

    live = False  # files wait on disk: backpressure, never drop-oldest

    def __init__(self, folder: str | Path, poll_s: float = 0.2, max_pixels: int | None = None):
        from adtk.runtime.images import IMAGE_EXTENSIONS

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"--source {folder}: no such folder")
        self.poll_s = poll_s
        self.max_pixels = max_pixels
        self.name = str(self.folder)
        self._extensions = IMAGE_EXTENSIONS
        self._pending: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) seen on the last poll
        self._done: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) when it was scored
        self._unreadable: dict[str, str] = {}  # name -> why it cannot be looked at (stat failed), this poll
        self._reported: set[str] = set()  # unreadable names already reported
        self._changed_ns: dict[str, int] = {}  # name -> st_ctime_ns on the last poll (permissions, owner, content)
        self._failed: dict[str, int] = {}  # name -> st_ctime_ns when it could not be read or decoded

    def _candidates(self) -> dict[str, tuple[int, int]]:
        found, self._unreadable, self._changed_ns = {}, {}, {}
        for path in self.folder.iterdir():
            name = path.name
            if name.startswith(".") or path.suffix.lower() not in self._extensions:
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed between listing and stat
                continue
            except OSError as exc:  # e.g. a symlink loop: this entry only, never the whole folder
                self._unreadable[name] = exc.strerror or type(exc).__name__
                continue
            found[name] = (stat.st_size, stat.st_mtime_ns)
            self._changed_ns[name] = stat.st_ctime_ns
        return found

    def frames(self, counter: FrameCounter, stop: threading.Event, on_reopen=None) -> Iterator[Frame]:
        from adtk.runtime.images import decode_image

        while not stop.is_set():
            try:
                found = self._candidates()
            except OSError:  # the folder vanished or its mount dropped: keep looking, as for a camera
                if on_reopen is not None:
                    on_reopen(self.name, False)
                stop.wait(max(self.poll_s, 1.0))
                continue
            # forget files that left the folder, so memory stays bounded by the folder's size
            self._done = {name: sig for name, sig in self._done.items() if name in found}
            # a file that could not be read (no permission) or decoded is looked at again once its permissions,
            # owner or content change (chmod changes st_ctime, not the size and mtime that say "scored already")
            for name, changed_ns in list(self._failed.items()):
                if name not in found or self._changed_ns.get(name) != changed_ns:
                    del self._failed[name]
                    if name in found:
                        self._done.pop(name, None)
            # an entry that cannot even be looked at is reported once (an undecodable frame naming it), not retried
            self._reported = {name for name in self._reported if name in self._unreadable}
            for name, reason in sorted(self._unreadable.items()):
                if name not in self._reported:
                    self._reported.add(name)
                    yield counter.make(str(self.folder / name), None, f"{self.folder / name}: cannot read it "
                                       f"({reason}); skipped")
            ready = []
            for name, (size, mtime_ns) in found.items():
                if self._done.get(name) == (size, mtime_ns):
                    continue  # scored already; a file rewritten under the same name is scored again
                if self._pending.get(name) == (size, mtime_ns):
                    ready.append((mtime_ns, name))
                self._pending[name] = (size, mtime_ns)
            self._pending = {name: sig for name, sig in self._pending.items() if name in found}
            for _, name in sorted(ready):
                self._done[name] = found[name]
                self._pending.pop(name, None)
                path = self.folder / name
                try:
                    image = decode_image(path, max_pixels=self.max_pixels, hint=SKIPPED_HINT)
                    # refused here, naming the file, like the decoder's refusals: the model would refuse it as
                    # "frames", naming nothing, and count a scoring error
                    check_frame_side(image.shape[1], image.shape[0], str(path), hint=SKIPPED_HINT)
                except DataError as exc:
                    self._failed[name] = self._changed_ns.get(name)
                    yield counter.make(str(path), None, str(exc))
                else:
                    yield counter.make(str(path), image)
                if stop.is_set():
                    return
            stop.wait(self.poll_s)


def import_cv2():
    import os

    # FFmpeg and OpenCV print a line per corrupt packet or dropped connection on stderr, outside the daemon's
    # rate-limited one-line log (a camera sending a bad frame a second filled the log); the daemon reports those
    # itself. Read when the FFmpeg backend is first used, so set before any capture is opened.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cv2 = require("cv2", "video, camera and stream sources")
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # older OpenCV builds without the logging module
        pass
    return cv2


class VideoSource:
    """A video file, a camera index or a stream URL, read with OpenCV's VideoCapture.

    live=True (cameras and streams): when the source stops delivering, it is released and reopened
    with exponential back-off (backoff_s[0] doubling up to backoff_s[1]); each reopen is reported.
    live=False (files): frames are read as fast as scoring takes them (the queue blocks, nothing is
    dropped) unless pace_fps is set, which replays the file at that rate like a camera (then the oldest
    frames are dropped when scoring falls behind); at the end the source stops, or starts again with loop=True.
    """

    def __init__(self, uri: str | int, live: bool, pace_fps: float = 0.0, loop: bool = False,
                 backoff_s: tuple[float, float] = (0.5, 30.0), max_pixels: int | None = None,
                 stall_timeout_s: float = STALL_TIMEOUT_S):
        self.cv2 = import_cv2()
        self.stall_timeout_s = stall_timeout_s
        self.uri, self.loop = uri, loop
        self.reconnect = live  # a camera or stream that stops delivering is reopened, a file just ends
        self.live = live or pace_fps > 0  # real-time frames: drop the oldest when scoring falls behind
        self.pace_fps = pace_fps
        self.backoff_s = backoff_s
        self.max_pixels = max_pixels
        self.name = f"camera:{uri}" if isinstance(uri, int) else str(uri)
        if not self.reconnect and not Path(str(uri)).is_file():
            raise ConfigError(f"--source {uri}: no such video file")

    def _open(self):
        if isinstance(self.uri, str) and self.uri.startswith(STREAM_SCHEMES):
            # bounded open and read: a server that accepts and then sends nothing is a stall, reported and reopened
            timeout_ms = int(self.stall_timeout_s * 1000)
            capture = self.cv2.VideoCapture(self.uri, self.cv2.CAP_ANY, [
                self.cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, self.cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        else:
            capture = self.cv2.VideoCapture(self.uri)
        if not capture.isOpened():
            capture.release()
            return None
        return capture

    def _frame(self, counter: FrameCounter, bgr: np.ndarray) -> Frame:
        """An OpenCV frame (BGR) -> the same RGB frame conversion and pixel budget as decoded images."""
        from adtk.runtime.pixels import check_frame_pixels, to_rgb_frame

        try:
            check_frame_pixels(bgr.shape[1], bgr.shape[0], self.name, self.max_pixels)
            check_frame_side(bgr.shape[1], bgr.shape[0], self.name)  # naming the stream (see FolderSource)
            return counter.make(self.name, to_rgb_frame(np.ascontiguousarray(bgr[:, :, ::-1]), self.name))
        except DataError as exc:
            return counter.make(self.name, None, str(exc))

    def frames(self, counter: FrameCounter, stop: threading.Event, on_reopen=None) -> Iterator[Frame]:
        backoff_s = self.backoff_s[0]
        capture = self._open()
        next_due = time.monotonic()
        failed_reads = 0  # reads in a row that returned no frame at once (corrupt frames, or the end)
        why = "cannot open it" if capture is None else None  # said with the next reopen report
        try:
            while not stop.is_set():
                if capture is None:  # vanished camera (or not there yet): retry with back-off
                    if not self.reconnect:
                        raise DataError(f"{self.name}: cannot open the video file")
                    stop.wait(backoff_s)
                    if stop.is_set():
                        return
                    backoff_s = min(backoff_s * 2, self.backoff_s[1])
                    capture = self._open()
                    if on_reopen is not None:
                        on_reopen(self.name, capture is not None, why)
                    why = None if capture is not None else "cannot open it"
                    continue
                tic = time.monotonic()
                ok, bgr = capture.read()
                if not ok:
                    took_s = time.monotonic() - tic
                    stalled = self.reconnect and took_s >= 0.8 * self.stall_timeout_s
                    if not stalled and failed_reads < BAD_READS_IN_A_ROW - 1 and not stop.is_set():
                        failed_reads += 1  # maybe one corrupt frame: the next read tells (counted then)
                        continue
                    capture.release()
                    capture = None
                    failed_reads = 0
                    why = f"no frame for {took_s:.1f} s (stalled)" if stalled else "the stream ended or dropped"
                    if not self.reconnect and not self.loop:
                        return
                    if not self.reconnect:
                        capture = self._open()
                    continue
                backoff_s = self.backoff_s[0]
                for _ in range(failed_reads):  # the stream went on: those reads were frames it could not decode
                    yield counter.make(self.name, None, f"{self.name}: undecodable frame; {SKIPPED_HINT}")
                failed_reads = 0
                if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
                    yield counter.make(self.name, None, f"{self.name}: undecodable frame "
                                                        f"(shape {None if bgr is None else list(bgr.shape)})")
                    continue
                if self.pace_fps > 0:  # replay at camera rate
                    next_due += 1.0 / self.pace_fps
                    delay = next_due - time.monotonic()
                    if delay > 0:
                        stop.wait(delay)
                    else:
                        next_due = time.monotonic()
                yield self._frame(counter, bgr)
        finally:
            if capture is not None:
                capture.release()


def open_source(value: str, pace_fps: float = 0.0, loop: bool = False, poll_s: float = 0.2,
                backoff_s: tuple[float, float] = (0.5, 30.0), max_pixels: int | None = None,
                stall_timeout_s: float = STALL_TIMEOUT_S):
    """A command-line --source value -> a source: a folder, a camera index, a stream URL or a video file."""
    live = dict(live=True, backoff_s=backoff_s, max_pixels=max_pixels, stall_timeout_s=stall_timeout_s)
    if value.isdigit():
        return VideoSource(int(value), **live)
    if value.startswith(STREAM_SCHEMES) or value.startswith("/dev/video"):
        return VideoSource(value, **live)
    path = Path(value)
    if path.is_dir():
        return FolderSource(path, poll_s=poll_s, max_pixels=max_pixels)
    if path.is_file():
        return VideoSource(str(path), live=False, pace_fps=pace_fps, loop=loop, backoff_s=backoff_s,
                           max_pixels=max_pixels)
    raise ConfigError(f"--source {value}: not a folder, a video file, a camera index (0, 1, ...) or a stream "
                      f"URL ({', '.join(s.rstrip(':/') for s in STREAM_SCHEMES)})")
