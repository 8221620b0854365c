"""The daemon's HTTP API, on the standard library's ThreadingHTTPServer.

    GET  /health    {"status": "ok" | "source down" | "update refused" | "stopping" | "source finished",
                     "model_sha256", "frames_scored", ...}
    GET  /model     {"path", "sha256", "file_sha256", "loaded_at", "manifest"}
    POST /predict   body: one encoded image (PNG, JPEG, ...) -> the JSON record of a sink, plus nothing else
    GET  /metrics   Prometheus text format (metrics.py)
    GET  /          the device page and its JSON feed, when `routes` is given (device_page.py)

The standard library rather than a web framework: four small endpoints, no new dependency on the device,
and a threaded server is enough (scoring is serialised per request by onnxruntime anyway). It binds to
127.0.0.1 unless told otherwise; bound to any other address it refuses to start without a token, and
then every request must carry `Authorization: Bearer <token>` (compared in constant time; a token of
fewer than 16 characters, or one character repeated, is refused at start).

Limits, as nginx sets them (HttpLimits; `adtk serve --http-*` options):
  * connections: at most `max_connections` at once; one more is answered 503 and closed on the
    listener's thread, so a flood costs no thread and no buffer.
  * time: `header_timeout_s` to send the request line and headers, `body_timeout_s` for the whole body,
    `idle_timeout_s` (+ the header time) for the next request on a kept-alive connection. These are
    deadlines for the whole phase, not per read, so a client dripping one byte a second is cut off too;
    a reaper thread shuts such sockets down.
  * headers: at most MAX_HEADER_BYTES for all the header lines of a request together (431). A request that
    declares a body the handler does not read (a GET with a Content-Length, a POST refused before its body) is
    answered with `Connection: close`: the unread bytes are never parsed as a next request (request smuggling
    through a proxy that keeps the connection). An HTTP/0.9 request line (no version) is answered 400 at once.
  * bodies: at most `max_body_bytes` (413 before a byte of it is read); read in 64 KB chunks, so memory
    follows what actually arrived, never the Content-Length a client claims; no chunked uploads (411).
  * memory: `max_concurrent_predictions` frames are decoded and scored at once (each bounded by the pixel
    budget, adtk.runtime.pixels); a request that waits longer than `busy_wait_s` for a slot gets 503.
  * logs: every failure is counted in /metrics and logged as ONE line, rate-limited per kind (no
    tracebacks: an aborted upload is a line, a thousand of them are a line and a count).
"""

from __future__ import annotations

import errno
import hmac
import http.client
import ipaddress
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from adtk.runtime.errors import ConfigError, DataError

MAX_IMAGE_BYTES = 32 * 1024 * 1024  # one frame; larger bodies are refused before they are read
MIN_TOKEN_CHARS = 16
_BODY_CHUNK_BYTES = 64 * 1024
# All the header lines of one request together (the stdlib bounds only each line, 64 KB, and their number, 100:
# 6.5 MB a connection, ~450 MB resident for 31 such connections held open). This API's headers are a few hundred
# bytes (a token, a length); nginx allows 32 KB by default.
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 32
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 15.0
    max_body_bytes: int = MAX_IMAGE_BYTES
    max_concurrent_predictions: int = 2
    busy_wait_s: float = 10.0

    def __post_init__(self):
        for name in ("max_connections", "max_body_bytes", "max_concurrent_predictions"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"HTTP limit {name} must be at least 1, got {getattr(self, name)}")
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s", "busy_wait_s"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"HTTP limit {name} must be > 0 seconds, got {getattr(self, name)}")


def check_token_strength(token: str | None, where: str) -> None:
    """A token guarding a non-loopback bind must be guessable by nobody: blank or short ones are refused."""
    if not token or not token.strip():
        raise ConfigError(f"{where}: binding to a non-loopback address needs a token "
                          "(--token-file FILE or the ADTK_SERVE_TOKEN environment variable)")
    if len(token) < MIN_TOKEN_CHARS or len(set(token)) < 4:
        raise ConfigError(f"{where}: the token is too weak for a non-loopback bind ({len(token)} characters, "
                          f"{len(set(token))} distinct); use at least {MIN_TOKEN_CHARS} random characters, e.g. "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(32))' > token`")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as exposed


def decode_image_bytes(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """An encoded image -> uint8 [H, W, 3] RGB through THE decoder (adtk.runtime.images.decode_image), the
    same as a file: EXIF orientation, 16-bit scaling, alpha compositing, the pixel budget before decoding."""
    from adtk.runtime.images import decode_image
    from adtk.runtime.pixels import check_frame_side

    image = decode_image(data, "request body", max_pixels=max_pixels,
                         hint="POST the bytes of one PNG, JPEG, BMP, TIFF, WebP, GIF or PPM image")
    check_frame_side(image.shape[1], image.shape[0], "request body")  # named, as the decoder's refusals are
    return image


class _LimitedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a connection cap, phase deadlines (a reaper thread) and one-line errors."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, handler, api: "ApiServer"):
        self.api = api
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._deadlines: dict[socket.socket, float | None] = {}
        self._deadlines_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        limits = self.api.limits
        with self._deadlines_lock:
            full = len(self._deadlines) >= limits.max_connections
            if not full:
                self._deadlines[request] = time.monotonic() + limits.header_timeout_s
        if full:  # answered here, on the listener's thread: no handler thread, no buffer
            self.api.refused("http_connections_refused", "connection cap",
                             f"{client_address[0]}: {limits.max_connections} connections open; answered 503")
            try:
                request.settimeout(0.5)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
                                b"Connection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def set_deadline(self, request, seconds: float | None) -> None:
        with self._deadlines_lock:
            if request in self._deadlines:
                self._deadlines[request] = None if seconds is None else time.monotonic() + seconds

    def shutdown_request(self, request):
        with self._deadlines_lock:
            self._deadlines.pop(request, None)
        super().shutdown_request(request)

    def reap_expired(self) -> None:
        """Shut down sockets whose phase deadline passed: the handler's blocked read then returns."""
        now = time.monotonic()
        with self._deadlines_lock:
            expired = [r for r, deadline in self._deadlines.items() if deadline is not None and deadline < now]
            for request in expired:
                self._deadlines[request] = None  # once
        for request in expired:
            self.api.refused("http_timeouts", "timeout", "a client was too slow (header, body or idle deadline); "
                             "connection closed")
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        """One rate-limited line instead of socketserver's traceback on stderr."""
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError, socket.timeout)) or \
                getattr(error, "errno", None) in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
            self.api.service.log("http client gone", f"{client_address[0]}: {type(error).__name__}: {error}")
        else:
            self.api.service.metrics.inc("scoring_errors")
            self.api.service.log("http error", f"{client_address[0]}: {type(error).__name__}: {error}")


class ApiServer:
    def __init__(self, service, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                 limits: HttpLimits | None = None, routes=None):
        """routes: extra GET routes, `routes.get(path, query) -> (status, body, content type) | None`
        (the device page, device_page.py)."""
        if not is_loopback(host):
            check_token_strength(token, f"--http {host}:{port}")
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"--http {host}:{port}: the port must be 0..65535")
        self.service, self.token, self.routes = service, token, routes
        self.limits = limits or HttpLimits()
        self.prediction_slots = threading.BoundedSemaphore(self.limits.max_concurrent_predictions)
        # Bodies held at once: the ones being scored and as many waiting. Read for every open connection, 30
        # parallel 32-MB uploads held ~440 MB against 94 MB idle; a body now waits in the client's socket (the
        # kernel's bounded buffer) until a slot is free, and memory is bounded by the slots, not the connections.
        self.body_slots = threading.BoundedSemaphore(2 * self.limits.max_concurrent_predictions)
        handler = type("Handler", (_Handler,), {"api": self})
        try:
            self.httpd = _LimitedHTTPServer((host, int(port)), handler, self)
        except socket.gaierror as exc:
            raise ConfigError(f"--http {host}:{port}: cannot resolve the address ({exc.strerror})") from None
        except OSError as exc:
            reason = "the port is in use" if exc.errno == errno.EADDRINUSE else \
                "not an address of this machine" if exc.errno == errno.EADDRNOTAVAIL else \
                "binding needs more privileges (ports under 1024 need root)" if exc.errno == errno.EACCES else \
                exc.strerror or str(exc)
            raise ConfigError(f"--http {host}:{port}: cannot listen there ({reason})") from None
        self._thread: threading.Thread | None = None
        self._reaper_stop = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def start(self) -> "ApiServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="adtk-http", daemon=True)
        self._thread.start()
        threading.Thread(target=self._reap, name="adtk-http-reaper", daemon=True).start()
        return self

    def _reap(self) -> None:
        while not self._reaper_stop.wait(0.25):
            self.httpd.reap_expired()

    def shutdown(self) -> None:
        self._reaper_stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def refused(self, counter: str, kind: str, message: str) -> None:
        self.service.metrics.inc(counter)
        self.service.log(f"http {kind}", message)

    def authorised(self, header: str | None) -> bool:
        if not self.token:
            return True
        expected = f"Bearer {self.token}".encode()
        return hmac.compare_digest((header or "").encode(), expected)

    # ---- endpoint bodies (return (status, content type, body bytes)) ----

    def health(self):
        service = self.service
        status = service.status
        counts = service.metrics.snapshot()
        body = {"status": status, "source_down": service.source_down,
                "model_sha256": service.detector.artefact.sha256, "signature_required": service.public_key is not None, "model_update": service.model_update,
                "uptime_s": round(time.time() - service.started_at_s, 3),
                "last_frame_age_s": None if service.last_frame_at_s is None
                else round(time.time() - service.last_frame_at_s, 3),
                "queue_depth": len(service.queue), **counts}
        # a refused update leaves the served model running, a camera that is down is being reopened with back-off
        # and POST /predict still scores: 200, with the reason in the body and metrics (a supervisor restarting the
        # daemon would not bring the camera back)
        return (200 if status in ("ok", "source down", "update refused") else 503), body

    def model(self):
        detector = self.service.detector
        return 200, {"path": str(self.service.model_path), "sha256": detector.artefact.sha256,
                     "file_sha256": detector.artefact.file_sha256,
                     "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.service.model_loaded_at_s)),
                     "manifest": detector.manifest}

    def predict(self, body: bytes):
        """Decode and score under a prediction slot: at most max_concurrent_predictions frames in memory."""
        if not self.prediction_slots.acquire(timeout=self.limits.busy_wait_s):
            self.refused("http_requests_refused", "busy", f"no prediction slot within {self.limits.busy_wait_s} s")
            return 503, {"error": f"busy: {self.limits.max_concurrent_predictions} frames are being scored; "
                                  "retry later"}
        try:
            image = decode_image_bytes(body, self.service.config.max_pixels)
            result = self.service.score(image, source="http")
        finally:
            self.prediction_slots.release()
        self.service.metrics.inc("http_predictions")
        self.service.metrics.observe_score(result.pred_score, result.pred_label, result.model_sha256)
        return 200, result.as_record()


class _HeaderBudget:
    """The connection's reader while the headers are parsed: readline within what is left of MAX_HEADER_BYTES,
    so that no more than that is ever held; beyond it HTTPException (the stdlib answers 431)."""

    def __init__(self, stream, budget: int):
        self.stream, self.left = stream, budget

    def readline(self, limit: int = -1) -> bytes:
        line = self.stream.readline(self.left + 1 if limit < 0 else min(limit, self.left + 1))
        self.left -= len(line)
        if self.left < 0:
            raise http.client.HTTPException(f"the header lines are over {MAX_HEADER_BYTES} bytes together")
        return line

    def __getattr__(self, name):
        return getattr(self.stream, name)


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    server_version = "adtk-serve"
    protocol_version = "HTTP/1.1"
    # The version assumed until the request line is parsed. The stdlib's "HTTP/0.9" made its answers to an
    # unparsable line (a bad or HTTP/2 version, garbage) a bare HTML page with no status line and no headers:
    # nothing a client can read as a refusal.
    default_request_version = "HTTP/1.0"

    def setup(self):
        self.timeout = self.api.limits.idle_timeout_s  # per read, a backstop to the reaper's phase deadlines
        super().setup()

    def handle_one_request(self):
        # the first request line + headers within header_timeout_s of connecting; on a kept-alive connection
        # the next one within idle_timeout_s of the last answer (the deadline set below, left running)
        if not getattr(self, "_answered_one", False):
            self.server.set_deadline(self.request, self.api.limits.header_timeout_s)
        self._body_read = False
        super().handle_one_request()
        self._answered_one = True
        self.server.set_deadline(self.request, self.api.limits.idle_timeout_s + self.api.limits.header_timeout_s)

    def parse_request(self) -> bool:
        if len(str(self.raw_requestline, "iso-8859-1").split()) == 2:  # as the stdlib splits it
            # HTTP/0.9 ("GET /path"): the stdlib would wait for headers such a request never sends, until the
            # deadline closes the connection without an answer
            self.command, self.request_version = None, self.default_request_version
            self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")  # the stdlib's answer logs it
            self.close_connection = True
            self.send_error(400, "HTTP/0.9 request (no HTTP version)", "send HTTP/1.1 or HTTP/1.0")
            return False
        stream, self.rfile = self.rfile, _HeaderBudget(self.rfile, MAX_HEADER_BYTES)
        try:
            return super().parse_request()
        finally:
            self.rfile = stream

    def _leaves_a_body_unread(self) -> bool:
        """The request declares a body (a Content-Length other than 0, or a Transfer-Encoding) not read (yet)."""
        if self._body_read or getattr(self, "headers", None) is None:
            return False
        return self.headers.get("Transfer-Encoding") is not None or \
            any(value.strip() != "0" for value in self.headers.get_all("Content-Length") or [])

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass  # request logs would dominate the daemon's output; /metrics counts what matters

    def log_error(self, format, *args):  # noqa: A002 - malformed request lines, headers too long, ...
        timed_out = format.startswith("Request timed out")  # the stdlib's words for a read timeout
        self.api.refused("http_timeouts" if timed_out else "http_requests_refused",
                         "timeout" if timed_out else "bad request", f"{self.client_address[0]}: {format % args}")

    def _read_body(self, length: int) -> bytes | None:
        """Read exactly `length` bytes in chunks before the body deadline; None if the client gave up."""
        self.server.set_deadline(self.request, self.api.limits.body_timeout_s)
        chunks, received = [], 0
        try:
            while received < length:
                chunk = self.rfile.read1(min(_BODY_CHUNK_BYTES, length - received))
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
        except TimeoutError:
            self.close_connection = True
            self.server.set_deadline(self.request, None)
            self.api.refused("http_timeouts", "timeout", f"{self.client_address[0]}: body stalled after "
                             f"{received} of {length} bytes")
            return None
        except (OSError, ValueError):
            pass
        self.server.set_deadline(self.request, None)  # scoring takes the time it takes
        self._body_read = received == length
        if received < length:
            self.close_connection = True
            self.api.refused("http_requests_refused", "incomplete body",
                             f"{self.client_address[0]}: {received} of {length} bytes arrived")
            return None
        return b"".join(chunks)

    def _send(self, status: int, body, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self._leaves_a_body_unread():  # its bytes must not be read as the next request (smuggling): close
            self.send_header("Connection", "close")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="adtk"')
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.api.authorised(self.headers.get("Authorization")):
            return True
        self.api.service.metrics.inc("http_requests_unauthorised")
        self._send(401, {"error": "missing or wrong token: send 'Authorization: Bearer <token>'"})
        return False

    def do_GET(self):  # noqa: N802 - the stdlib's naming
        # the headers are in: what follows is the daemon's work (an overlay can take seconds), not the client's
        # slowness, so the header deadline stops here (a stalled reader of the answer meets the socket timeout)
        self.server.set_deadline(self.request, None)
        if not self._authorised():
            return
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(*self.api.health())
        elif path == "/model":
            self._send(*self.api.model())
        elif path == "/metrics":
            from adtk.runtime.daemon.metrics import INSTALL_HINT

            text = self.api.service.metrics.render_prometheus()
            self._send(200 if text is not None else 503, (text or INSTALL_HINT + "\n").encode(),
                       "text/plain; version=0.0.4; charset=utf-8")
        elif self.api.routes is not None and (reply := self.api.routes.get(path, self.path.partition("?")[2])):
            status, body, content_type = reply
            self._send(status, body, content_type)
        else:
            self._send(404, {"error": f"no endpoint {path}; try /health, /model, /metrics or POST /predict"})

    def _declared_length(self) -> int | tuple[int, str, str, str]:
        """The body length the request declares, or its refusal as (status, log kind, log detail, error): one decimal
        byte count stated once (int() would take "+5", "1_000" or " 5 ": a proxy in front may read such a length, or
        the other of two lengths, differently and take the rest of this body for a request of its own: request
        smuggling), no chunked upload, 1..max_body_bytes. The one reading of Content-Length, for do_POST and
        handle_expect_100 alike."""
        limit = self.api.limits.max_body_bytes
        declared = self.headers.get("Content-Length")
        declared_all = self.headers.get_all("Content-Length") or []
        if declared is not None and (len(set(value.strip() for value in declared_all)) > 1
                                     or not declared.strip().isascii() or not declared.strip().isdigit()):
            return (400, "bad request", f"Content-Length {', '.join(repr(value[:24]) for value in declared_all[:2])}",
                    "Content-Length must be one decimal byte count (digits only, stated once)")
        if self.headers.get("Transfer-Encoding") is not None or declared is None:
            return 411, "bad request", "no Content-Length", "Content-Length required (chunked uploads are not accepted)"
        if len(declared.strip()) > 19:  # no byte count has more digits (and int() refuses ~4,300 and more)
            return (413, "body size", f"a Content-Length of {len(declared)} characters",
                    f"Content-Length of {len(declared)} digits; POST one image of 1..{limit} bytes")
        length = int(declared)
        if length <= 0 or length > limit:
            return (413 if length > 0 else 400, "body size", f"{length} bytes",
                    f"body of {length} bytes; POST one image of 1..{limit} bytes")
        return length

    def _refuse(self, status: int, kind: str, detail: str, error: str) -> None:
        """Answer `status` and close: the body is not read, so the connection cannot be reused."""
        self.close_connection = True
        self.api.refused("http_requests_refused", kind, f"{self.client_address[0]}: {detail}")
        self._send(status, {"error": error})

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue`: the client waits for a go-ahead before it sends the body. The standard handler
        gives it at once; here only to an authorised client whose declared body is within the limit (else the
        body would come only to be refused), the refusal answered instead and the connection closed."""
        if not self._authorised():
            self.close_connection = True
            return False
        declared = self._declared_length()
        if isinstance(declared, tuple):
            status, kind, detail, error = declared
            self._refuse(status, kind, f"{detail} announced with Expect: 100-continue", error)
            return False
        return super().handle_expect_100()

    def do_POST(self):  # noqa: N802
        if not self._authorised():
            return
        if self.path.split("?", 1)[0] != "/predict":
            self._send(404, {"error": f"no endpoint POST {self.path}; POST an image to /predict"})
            return
        length = self._declared_length()
        if isinstance(length, tuple):
            self._refuse(*length)
            return
        self.server.set_deadline(self.request, None)  # waiting for a body slot is the daemon's time
        if not self.api.body_slots.acquire(timeout=self.api.limits.busy_wait_s):
            self.close_connection = True  # the body is not read: the connection cannot be reused
            self.api.refused("http_requests_refused", "busy", f"no body slot within {self.api.limits.busy_wait_s} s")
            self._send(503, {"error": f"busy: {self.api.limits.max_concurrent_predictions} frames are being scored "
                                      "and as many wait; retry later"})
            return
        try:
            body = self._read_body(length)
            if body is None:
                return
            try:
                status, record = self.api.predict(body)
                reply = status, (json.dumps(record) + "\n").encode()  # as _send would: a failure here is scoring's
            except DataError as exc:
                self.api.refused("http_requests_refused", "undecodable image", str(exc))
                reply = 400, {"error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - a bad request must not take the server thread down
                self.api.service.metrics.inc("scoring_errors")
                self.api.service.log("http scoring error", f"{type(exc).__name__}: {exc}")
                reply = 500, {"error": f"{type(exc).__name__}: {exc}"}
            # outside the scoring's try: a client that resets the connection while the reply is written is a
            # client gone (handle_error), not a scoring error
            self._send(*reply)
        finally:
            self.api.body_slots.release()
