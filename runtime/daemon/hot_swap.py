"""Hot swap: watch the model folder; verify a new artefact away from the scoring loop; offer it for a swap.

What makes a half-copied model impossible to score with: `read_verified` reads the file ONCE and checks
the integrity record (sha256 over every byte) and the contract on exactly those bytes before any
session exists, so a truncated or still-growing file fails verification, and a file replaced after the
check cannot be the one that runs. A candidate must also load and score its warm-up frames in a child process
within a memory limit and a timeout (isolated_warm_up.py: a graph built to exhaust memory or crash onnxruntime
takes down the child, not the daemon), and score a warm-up frame in the daemon (finite outputs of the
contract's shapes, pred_score in 0..1) before it is offered. The scoring loop takes the offered
detector between two frames (`take()`), so no frame is ever scored half by one model and half by another.

Candidates: every `*.onnx` in the folder except hidden files (temporary names, as `adtk flash` uses) and
`*.previous.onnx` (the copy kept for rollback). A candidate is looked at when its (inode, size, mtime)
changes and has stayed the same for one poll, i.e. once its writer seems done. A refused file is not
retried until it changes again; the detector being served keeps running.

Signatures: given a public key (or $ADTK_PUBLIC_KEY), a candidate runs only if `<candidate>.sig` verifies
against the exact bytes loaded. A candidate's identity includes its `.sig` file, so a model refused for a
missing or stale signature is looked at again as soon as its signature arrives or changes (adtk flash
installs the signature first, but a hand copy may bring it second).
"""

from __future__ import annotations

import threading
from pathlib import Path

from adtk.runtime.daemon.isolated_warm_up import WarmUpLimits, check_in_child, warm_up
from adtk.runtime.detector import Detector, create_backend, read_verified
from adtk.runtime.errors import AdtkError
from adtk.runtime.signing import signature_path

PREVIOUS_SUFFIX = ".previous.onnx"


def load_verified(path: str | Path, backend: str = "auto", public_key: str | Path | None = None,
                  max_pixels: int | None = None, warm_up_limits: WarmUpLimits = WarmUpLimits(),
                  stop: threading.Event | None = None) -> Detector:
    """Verify the file (integrity, schema, manifest against graph, signature when a key is configured), load it
    and score its warm-up frames in a child process within `warm_up_limits` (before this process gives it to
    any backend), then open it here and score the warm-up frame again (it checks the contract on the backend
    that will serve, and warms it). onnxruntime's memory arena is off: frames of any size arrive, and an arena
    keeps the high-water mark of every size it ever saw. Once `stop` is set the check in the child is killed
    (ArtefactError: not checked)."""
    artefact = read_verified(path, public_key)
    check_in_child(artefact, max_pixels, str(path), warm_up_limits, stop)
    detector = Detector(artefact, create_backend(artefact, backend, memory_arena=False), max_pixels=max_pixels)
    warm_up(detector)
    return detector


def is_candidate(path: Path) -> bool:
    return path.suffix == ".onnx" and not path.name.startswith(".") and not path.name.endswith(PREVIOUS_SUFFIX)


class ModelWatcher:
    """Polls `folder` every poll_s on its own thread. `take()` returns a verified Detector once, or None."""

    def __init__(self, folder: str | Path, serving_sha256: str, backend: str = "auto", poll_s: float = 1.0,
                 on_refused=lambda path, reason: None, on_offered=lambda path, detector: None,
                 public_key: str | Path | None = None, max_pixels: int | None = None,
                 warm_up_limits: WarmUpLimits = WarmUpLimits()):
        self.folder = Path(folder)
        self.backend, self.poll_s = backend, poll_s
        self.public_key, self.max_pixels, self.warm_up_limits = public_key, max_pixels, warm_up_limits
        self.on_refused, self.on_offered = on_refused, on_offered
        self._serving_sha256 = serving_sha256
        self._lock = threading.Lock()
        self._offer: Detector | None = None
        self._looked_at: dict[str, tuple[int, int, int]] = {}  # name -> signature already verified/refused
        self._last_seen: dict[str, tuple[int, int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused: list[tuple[str, str]] = []  # (path, reason), the most recent 100
        self._unreadable: set[str] = set()  # names whose stat failed on the last look (refused once)

    def start(self) -> "ModelWatcher":
        self._looked_at = self._signatures()  # what is there at start-up is not news
        self._last_seen = dict(self._looked_at)
        self._thread = threading.Thread(target=self._run, name="adtk-model-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Setting the event also kills a candidate's warm-up check in progress (within STOP_POLL_S), so this
        returns promptly rather than after up to --warm-up-timeout, and leaves no check process behind."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def take(self) -> Detector | None:
        with self._lock:
            offer, self._offer = self._offer, None
        if offer is not None:
            self._serving_sha256 = offer.artefact.sha256
        return offer

    def _signatures(self) -> dict[str, tuple[int, int, int]]:
        found, unreadable = {}, set()
        for path in self.folder.glob("*.onnx"):
            if not is_candidate(path):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            except OSError as exc:  # e.g. a symlink loop: refuse this entry (once), keep watching the others
                if path.name not in self._unreadable:
                    self._refuse(path, f"{path}: cannot read it ({exc.strerror or type(exc).__name__})")
                unreadable.add(path.name)
                continue
            try:
                sig = signature_path(path).stat()
                sig_identity = (sig.st_ino, sig.st_size, sig.st_mtime_ns)
            except OSError:
                sig_identity = None
            found[path.name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns, sig_identity)
        self._unreadable = unreadable
        return found

    def poll_once(self) -> None:
        """One look at the folder (the thread calls this every poll_s; tests may call it directly)."""
        current = self._signatures()
        settled = [name for name, sig in current.items()
                   if self._looked_at.get(name) != sig and self._last_seen.get(name) == sig]
        self._last_seen = current
        self._looked_at = {name: sig for name, sig in self._looked_at.items() if name in current}
        # newest first: if several arrived at once, the last one written is the one meant to run; once one of them
        # verifies, the older ones are superseded (looked at, never loaded: loading them would replace its offer)
        newest_first = sorted(settled, key=lambda n: current[n][2], reverse=True)
        for number, name in enumerate(newest_first):
            if self._stop.is_set():  # shutting down: start no check of the next candidate
                return
            self._looked_at[name] = current[name]
            if self._consider(self.folder / name):
                self._looked_at.update((older, current[older]) for older in newest_first[number + 1:])
                return

    def _consider(self, path: Path) -> bool:
        """Verify one candidate; True when it verified (offered, or it is the artefact already served)."""
        try:
            detector = load_verified(path, self.backend, self.public_key, self.max_pixels, self.warm_up_limits,
                                     self._stop)
        except AdtkError as exc:
            if self._stop.is_set():  # its check was killed because the daemon stops: not a refusal of the model
                return False
            reason = str(exc)  # ArtefactError's name the file; a backend's (onnxruntime refusing the graph) do not
            self._refuse(path, reason if reason.startswith(str(path)) else f"{path}: {reason}")
            return False
        except Exception as exc:  # noqa: BLE001 - whatever a bad file does, the served model keeps running
            self._refuse(path, f"{path}: {type(exc).__name__}: {exc}")
            return False
        if detector.artefact.sha256 == self._serving_sha256:
            self.on_offered(path, None)  # the same artefact again (a re-copy, its signature arriving): settled
            return True
        with self._lock:
            self._offer = detector  # a newer offer replaces one not yet taken
        self.on_offered(path, detector)
        return True

    def _refuse(self, path: Path, reason: str) -> None:
        """reason names the file (ArtefactError messages start with the path)."""
        self.refused = (self.refused + [(str(path), reason)])[-100:]
        self.on_refused(path, reason)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_once()
            except OSError as exc:  # the folder vanished or is unreadable for a while: keep watching
                self.on_refused(self.folder, f"{self.folder}: cannot read the model folder: {exc}")
