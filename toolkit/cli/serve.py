from __future__ import annotations

from pathlib import Path

import click


def parse_http(value: str) -> tuple[str, int]:
    from adtk.runtime.errors import ConfigError

    host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"--http {value}: expected HOST:PORT, e.g. 127.0.0.1:8080 (or :8080 for 127.0.0.1)")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def read_token(token_file: Path | None) -> str | None:
    import os

    from adtk.runtime.errors import ConfigError

    if token_file is not None:
        token = token_file.read_text().strip()
        if not token:
            raise ConfigError(f"--token-file {token_file}: the file is empty")
        return token
    return os.environ.get("ADTK_SERVE_TOKEN") or None


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
@click.option("--model-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder watched for new artefacts (default: the model's folder).")
@click.option("--no-watch", is_flag=True, help="Do not hot-swap new artefacts.")
@click.option("--backend", default="auto", show_default=True, help="auto, tensorrt (engine), onnxruntime, cpu, cuda or ort-tensorrt.")
def command(model, source, sinks, http_bind, token_file, queue_capacity, pace_fps, loop, model_dir, no_watch,
            backend):
    """Score frames from --source with MODEL until SIGTERM; hot-swap new artefacts placed in its folder.

    \b
    Each sink gets one JSON document per scored frame:
      {"frame_id": int, "time": ISO 8601 UTC, "source": str, "score": float (0..1, 0.5 = threshold),
       "label": bool, "raw_score": float, "latency_ms": float (capture -> scored), "inference_ms": float,
       "model_sha256": str}
    HTTP API (--http): GET /health, GET /model, GET /metrics (Prometheus), POST /predict (image bytes).
    SIGTERM/SIGINT: the frame in flight is finished, sinks are flushed, a summary goes to stderr.
    """
    import json
    import signal

    from adtk.runtime.daemon.http_api import ApiServer
    from adtk.runtime.daemon.metrics import DaemonMetrics
    from adtk.runtime.daemon.service import ScoringService, ServiceConfig
    from adtk.runtime.daemon.sinks import open_sink
    from adtk.runtime.daemon.sources import open_source

    config = ServiceConfig(model=model, model_dir=model_dir, watch=not no_watch, queue_capacity=queue_capacity,
                           backend=backend)
    host_port = parse_http(http_bind) if http_bind else None
    token = read_token(token_file)
    if source is None and host_port is None:
        raise click.UsageError("give --source, --http, or both")
    frame_source = open_source(source, pace_fps=pace_fps, loop=loop) if source is not None else None
    metrics = DaemonMetrics()
    sink_values = (sinks or ("-",)) if frame_source is not None else ()
    opened_sinks = [open_sink(value, on_discard=lambda: metrics.inc("sink_errors")) for value in sink_values]
    service = ScoringService(config, frame_source, opened_sinks, metrics=metrics)
    api = ApiServer(service, *host_port, token=token) if host_port else None  # refuses before anything starts
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
