"""The daemon's HTTP API, on the standard library's ThreadingHTTPServer.

    GET  /health    {"status": "ok" | "stopping" | "source finished", "model_sha256", "frames_scored", ...}
    GET  /model     {"path", "sha256", "file_sha256", "loaded_at", "manifest"}
    POST /predict   body: one encoded image (PNG, JPEG, ...) -> the JSON record of a sink, plus nothing else
    GET  /metrics   Prometheus text format (metrics.py)

The standard library rather than a web framework: four small endpoints, no new dependency on the device,
and a threaded server is enough (scoring is serialised per request by onnxruntime anyway). It binds to
127.0.0.1 unless told otherwise; bound to any other address it refuses to start without a token, and
then every request must carry `Authorization: Bearer <token>` (compared in constant time).
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from adtk.runtime.errors import ConfigError, DataError

MAX_IMAGE_BYTES = 32 * 1024 * 1024  # one frame; larger bodies are refused before they are read


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as exposed


def decode_image_bytes(data: bytes) -> np.ndarray:
    """An encoded image -> uint8 [H, W, 3] RGB (Pillow, fully decoded now so a truncated body fails here)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            return np.asarray(opened.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
            EOFError) as exc:
        raise DataError(f"request body: cannot decode the image ({exc or type(exc).__name__}); "
                        "POST the bytes of one PNG or JPEG file") from None


class ApiServer:
    def __init__(self, service, host: str = "127.0.0.1", port: int = 8080, token: str | None = None):
        if not is_loopback(host) and not token:
            raise ConfigError(f"--http {host}:{port}: binding to a non-loopback address needs a token "
                              "(--token-file FILE or the ADTK_SERVE_TOKEN environment variable)")
        self.service, self.token = service, token
        handler = type("Handler", (_Handler,), {"api": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def start(self) -> "ApiServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="adtk-http", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def authorised(self, header: str | None) -> bool:
        if not self.token:
            return True
        expected = f"Bearer {self.token}".encode()
        return hmac.compare_digest((header or "").encode(), expected)

    # ---- endpoint bodies (return (status, content type, body bytes)) ----

    def health(self):
        service = self.service
        status = "stopping" if service.stopping else "source finished" if service.source_finished else "ok"
        counts = service.metrics.snapshot()
        body = {"status": status, "model_sha256": service.detector.artefact.sha256,
                "uptime_s": round(time.time() - service.started_at_s, 3),
                "last_frame_age_s": None if service.last_frame_at_s is None
                else round(time.time() - service.last_frame_at_s, 3),
                "queue_depth": len(service.queue), **counts}
        return (200 if status == "ok" else 503), body

    def model(self):
        detector = self.service.detector
        return 200, {"path": str(self.service.model_path), "sha256": detector.artefact.sha256,
                     "file_sha256": detector.artefact.file_sha256,
                     "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.service.model_loaded_at_s)),
                     "manifest": detector.manifest}

    def predict(self, body: bytes):
        image = decode_image_bytes(body)
        result = self.service.score(image, source="http")
        return 200, result.as_record()


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    server_version = "adtk-serve"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass  # request logs would dominate the daemon's output; /metrics counts what matters

    def _send(self, status: int, body, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
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
        else:
            self._send(404, {"error": f"no endpoint {path}; try /health, /model, /metrics or POST /predict"})

    def do_POST(self):  # noqa: N802
        if not self._authorised():
            return
        if self.path.split("?", 1)[0] != "/predict":
            self._send(404, {"error": f"no endpoint POST {self.path}; POST an image to /predict"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(411, {"error": "Content-Length required"})
            return
        if length <= 0 or length > MAX_IMAGE_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            self._send(413 if length > 0 else 400,
                       {"error": f"body of {length} bytes; POST one image of 1..{MAX_IMAGE_BYTES} bytes"})
            return
        body = self.rfile.read(length)
        try:
            self._send(*self.api.predict(body))
        except DataError as exc:
            self._send(400, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - a bad request must not take the server thread down
            self.api.service.metrics.inc("scoring_errors")
            self._send(500, {"error": f"{type(exc).__name__}: {exc}"})
