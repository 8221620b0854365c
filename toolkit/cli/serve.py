from __future__ import annotations

import math
from pathlib import Path

import click

from adtk.runtime.daemon.isolated_warm_up import DEFAULT_TIMEOUT_S, WarmUpLimits
from adtk.runtime.daemon.sources import STALL_TIMEOUT_S


def parse_http(value: str) -> tuple[str, int]:
    """HOST:PORT, [IPV6]:PORT or :PORT -> (host, port), checked (the bind itself is checked by ApiServer)."""
    from adtk.runtime.errors import ConfigError

    host, _, port = value.rpartition(":")
    if not port.isdigit() or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        raise ConfigError(f"--http {value}: expected HOST:PORT, e.g. 127.0.0.1:8080, [::1]:8080 (or :8080 for "
                          "127.0.0.1)")
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"--http {value}: port {int(port)} is out of range (0..65535)")
    return (host[1:-1] if host.startswith("[") else host) or "127.0.0.1", int(port)


def read_token(token_file: Path | None) -> str | None:
    import os

    from adtk.runtime.errors import ConfigError

    if token_file is not None:
        try:
            token = token_file.read_bytes().decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"--token-file {token_file}: not UTF-8 text; write the token as plain text") from None
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({exc.strerror or exc})") from None
        if not token:
            raise ConfigError(f"--token-file {token_file}: the file is empty")
        return token
    return os.environ.get("ADTK_SERVE_TOKEN") or None


def _finite(param, value):
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of the range", param=param)
    return value


@click.command("serve")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--source", default=None,
              help="Folder of incoming images, video file, camera index (0) or rtsp:// / http:// stream.")
@click.option("--sink", "sinks", multiple=True,
              help="- / stdout, jsonl:PATH or PATH.jsonl, overlay:DIR, mqtt://host[:port]/topic (repeatable). "
                   "Default: stdout.")
@click.option("--http", "http_bind", default=None, help="Serve the HTTP API on HOST:PORT (127.0.0.1 unless given).")
@click.option("--token-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="File holding the HTTP API token (else $ADTK_SERVE_TOKEN); required off loopback.")
@click.option("--queue", "queue_capacity", type=int, default=8, show_default=True,
              help="Frames waiting to be scored; when full the oldest is dropped (and counted).")
@click.option("--fps", "pace_fps", type=float, default=0.0, show_default=True,
              help="Replay a video FILE at this rate like a camera (0: as fast as scoring goes, no drops).")
@click.option("--loop", is_flag=True, help="Replay a video file from the start when it ends.")
@click.option("--model-dir", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Folder watched for new artefacts (default: the model's folder).")
@click.option("--no-watch", is_flag=True, help="Do not hot-swap new artefacts.")
@click.option("--public-key", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="ed25519 public key (PEM): run only artefacts whose MODEL.sig verifies (else $ADTK_PUBLIC_KEY).")
@click.option("--backend", default="auto", show_default=True, help="auto, tensorrt (engine), onnxruntime, cpu, cuda or ort-tensorrt.")
@click.option("--max-pixels", type=click.IntRange(min=256, max=2 ** 31), default=None,
              help="Pixel budget of one frame, checked before decoding (default: sized from this machine's memory, "
                   "or $ADTK_MAX_PIXELS).")
@click.option("--http-max-connections", type=click.IntRange(min=1), default=32, show_default=True,
              help="Open HTTP connections at most; more are answered 503.")
# upper bounds so that no value switches a protection off (inf, 1e30); click's ranges let NaN through (every
# comparison with it is false), so _finite refuses it by name
@click.option("--http-max-body-mb", type=click.FloatRange(min=0.001, max=2048), default=32.0, show_default=True,
              callback=lambda ctx, param, value: _finite(param, value),
              help="Largest POST /predict body.")
@click.option("--http-timeout", "http_timeout_s", type=click.FloatRange(min=0.1, max=3600), default=10.0,
              show_default=True, callback=lambda ctx, param, value: _finite(param, value),
              help="Seconds a client has to send its headers (3x for a body, 1.5x idle between requests).")
@click.option("--http-predictions", "http_predictions", type=click.IntRange(min=1), default=2, show_default=True,
              help="Frames POST /predict decodes and scores at once (memory: each is within --max-pixels).")
@click.option("--warm-up-memory-mb", type=click.IntRange(min=64, max=1024**2), default=None,
              help="Memory a model may use to load and score its warm-up frames (one at the model size, one of "
                   "--max-pixels), tried in a separate process before it is served; a model that needs more is "
                   "refused (default: half this machine's memory, 2048..8192, at least 4x the artefact's size).")
@click.option("--warm-up-timeout", "warm_up_timeout_s", type=click.FloatRange(min=1, max=3600),
              default=DEFAULT_TIMEOUT_S, show_default=True, callback=lambda ctx, param, value: _finite(param, value),
              help="Seconds that separate process may take; a model that takes longer is refused.")
@click.option("--stall-timeout", "stall_timeout_s", type=click.FloatRange(min=1, max=3600),
              default=STALL_TIMEOUT_S, show_default=True, callback=lambda ctx, param, value: _finite(param, value),
              help="Seconds a stream or camera --source may deliver no frame before it is taken as stalled and "
                   "reopened (raise it for a camera triggered by parts that come less often).")
def command(model, source, sinks, http_bind, token_file, queue_capacity, pace_fps, loop, model_dir, no_watch,
            public_key, backend, max_pixels, http_max_connections, http_max_body_mb, http_timeout_s, http_predictions,
            warm_up_memory_mb, warm_up_timeout_s, stall_timeout_s):
    """Score frames from --source with MODEL until SIGTERM; hot-swap new artefacts placed in its folder.

    \b
    Each sink gets one JSON document per scored frame:
      {"frame_id": int, "time": ISO 8601 UTC, "source": str, "score": float (0..1, 0.5 = threshold),
       "label": bool, "raw_score": float, "latency_ms": float (capture -> scored), "inference_ms": float,
       "model_sha256": str}
    HTTP API (--http): GET /health, GET /model, GET /metrics (Prometheus), POST /predict (image bytes);
    GET / is the device page (model, threshold, live scores, last anomalous frames, counters, refused swaps).
    SIGTERM/SIGINT: the frame in flight is finished, sinks are flushed, a summary goes to stderr.
    """
    import json
    import signal

    from adtk.runtime.daemon.http_api import ApiServer, HttpLimits, check_token_strength, is_loopback
    from adtk.runtime.daemon.metrics import DaemonMetrics
    from adtk.runtime.daemon.service import ScoringService, ServiceConfig
    from adtk.runtime.daemon.sinks import open_sink
    from adtk.runtime.daemon.sources import open_source
    from adtk.runtime.memory import release_large_blocks_promptly

    release_large_blocks_promptly(arena_max=2)  # frames of any size, decoded on several threads (runtime/memory.py)

    config = ServiceConfig(model=model, model_dir=model_dir, watch=not no_watch, queue_capacity=queue_capacity,
                           backend=backend, max_pixels=max_pixels, public_key=public_key,
                           warm_up_limits=WarmUpLimits(memory_mb=warm_up_memory_mb, timeout_s=warm_up_timeout_s))
    limits = HttpLimits(max_connections=http_max_connections, max_body_bytes=int(http_max_body_mb * 1024**2),
                        header_timeout_s=http_timeout_s, body_timeout_s=3 * http_timeout_s,
                        idle_timeout_s=1.5 * http_timeout_s, max_concurrent_predictions=http_predictions)
    host_port = parse_http(http_bind) if http_bind else None
    token = read_token(token_file)
    if host_port is not None and not is_loopback(host_port[0]):
        check_token_strength(token, f"--http {http_bind}")  # before any sink or model is opened
    if source is None and host_port is None:
        raise click.UsageError("give --source, --http, or both")
    frame_source = open_source(source, pace_fps=pace_fps, loop=loop, max_pixels=max_pixels,
                               stall_timeout_s=stall_timeout_s) if source is not None else None
    metrics = DaemonMetrics()
    sink_values = (sinks or ("-",)) if frame_source is not None else ()
    opened_sinks = [open_sink(value, on_discard=lambda: metrics.inc("sink_errors")) for value in sink_values]
    page = None
    if host_port is not None:  # the device page at / keeps the recent scores and anomalous frames in memory
        from adtk.runtime.daemon.device_page import DevicePage
        from adtk.runtime.daemon.live_feed import LiveFeed

        feed = LiveFeed()
        opened_sinks.append(feed)
    service = ScoringService(config, frame_source, opened_sinks, metrics=metrics)
    if host_port is not None:
        page = DevicePage(service, feed)
    api = ApiServer(service, *host_port, token=token, limits=limits, routes=page) if host_port else None  # refuses before starting
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.stop())
    service.start()
    if api is not None:
        api.start()
        click.echo(f"adtk serve: HTTP API on http://{api.address[0]}:{api.address[1]}", err=True)
    try:
        service.run()  # without a source it only hot-swaps until SIGTERM, while the API answers
    finally:
        if api is not None:
            api.shutdown()
    click.echo(json.dumps({"summary": service.metrics.snapshot(), "model_sha256": service.detector.artefact.sha256}),
               err=True)
    if service.source_error is not None:  # a failed source is a failed daemon: a supervisor restarts it
        from adtk.runtime.errors import DataError

        raise DataError(f"the source stopped: {service.source_error}")
