"""The HTTP API on a real socket: health, model, predict (matching the Detector), metrics, tokens."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import pytest
from PIL import Image

from adtk.runtime.artefact import read_artefact
from adtk.runtime.daemon.http_api import ApiServer, is_loopback
from adtk.runtime.daemon.service import ScoringService, ServiceConfig
from adtk.runtime.detector import Detector
from adtk.runtime.errors import ConfigError


def request(url: str, data: bytes | None = None, token: str | None = None, timeout_s: float = 30) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def service(tiny_build):
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False), None, [],
                             log=lambda kind, message: None).start()
    yield service
    service.shutdown()


@pytest.fixture
def api(service):
    server = ApiServer(service, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{server.address[1]}"
    server.shutdown()


def test_health_and_model_describe_the_artefact_being_served(api, tiny_build):
    status, body = request(f"{api}/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = request(f"{api}/model")
    model = json.loads(body)
    verified = read_artefact(tiny_build.artefact)
    assert status == 200
    assert model["sha256"] == verified.sha256 and model["manifest"] == verified.manifest


def test_health_says_when_the_source_is_down_and_when_it_is_back(api, service):
    """A camera that stalled or dropped and is not reopened yet: still 200 (the daemon retries with back-off and
    POST /predict scores; a supervisor's restart would not bring the camera back), the reason in the body."""
    service._on_reopen("rtsp://cam/1", False, "no frame for 10.0 s (stalled)")
    status, body = request(f"{api}/health")
    assert status == 200 and json.loads(body)["status"] == "source down"
    assert json.loads(body)["source_down"] == "rtsp://cam/1: no frame for 10.0 s (stalled); retrying"
    service._on_reopen("rtsp://cam/1", True)
    status, body = request(f"{api}/health")
    assert status == 200 and json.loads(body)["status"] == "ok" and json.loads(body)["source_down"] is None


def test_predict_scores_an_uploaded_image_like_the_detector(api, tiny_build, test_images):
    reference = Detector.load(tiny_build.artefact).predict(test_images[1][None])
    status, body = request(f"{api}/predict", data=png_bytes(test_images[1]))
    result = json.loads(body)
    assert status == 200
    assert result["score"] == pytest.approx(float(reference.pred_score[0]), abs=1e-5)
    assert result["label"] == bool(reference.pred_label[0])


def test_predict_answers_400_for_a_corrupt_image_and_keeps_serving(api, test_images):
    status, body = request(f"{api}/predict", data=png_bytes(test_images[0])[:300])
    assert status == 400 and "cannot decode" in json.loads(body)["error"]
    status, body = request(f"{api}/predict", data=png_bytes(test_images[0][:8, :8]))
    assert status == 400 and json.loads(body)["error"] == "request body: image of 8x8 px is too small (16 px minimum)"
    assert request(f"{api}/predict", data=png_bytes(test_images[0]))[0] == 200
    assert request(f"{api}/nothing")[0] == 404


def test_metrics_endpoint_serves_prometheus_text(api, service):
    parser = pytest.importorskip("prometheus_client.parser")
    service.metrics.inc("frames_scored", 5)
    status, body = request(f"{api}/metrics")
    families = {f.name: f for f in parser.text_string_to_metric_families(body.decode())}
    assert status == 200 and families["adtk_frames_scored"].samples[0].value == 5
    info = families["adtk_model_info"].samples[0]
    assert info.labels["sha256"] == service.detector.artefact.sha256


def test_scored_requests_feed_the_score_histogram_and_the_anomalous_counter(api, service, test_images):
    parser = pytest.importorskip("prometheus_client.parser")
    labels = [json.loads(request(f"{api}/predict", data=png_bytes(image))[1])["label"] for image in test_images[:3]]
    families = {f.name: f for f in parser.text_string_to_metric_families(request(f"{api}/metrics")[1].decode())}
    sha = service.detector.artefact.sha256
    counts = {s.name: s.value for s in families["adtk_score"].samples if s.labels.get("model_sha256") == sha}
    assert counts["adtk_score_count"] == 3
    anomalous = [s.value for s in families["adtk_frames_anomalous"].samples if s.name.endswith("_total")]
    assert anomalous == [sum(labels)]


def test_metrics_endpoint_without_prometheus_client_answers_one_line_and_the_api_keeps_serving(
        api, service, monkeypatch, test_images):
    monkeypatch.setattr(service.metrics, "render_prometheus", lambda: None)  # as when the import fails
    status, body = request(f"{api}/metrics")
    assert status == 503 and body.decode().count("\n") == 1 and "pip install 'adtk[serve]'" in body.decode()
    assert request(f"{api}/predict", data=png_bytes(test_images[0]))[0] == 200


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("camera.local")


def test_non_loopback_bind_requires_a_token_and_refuses_requests_without_it(service):
    with pytest.raises(ConfigError, match="needs a token"):
        ApiServer(service, "0.0.0.0", 0)
    server = ApiServer(service, "0.0.0.0", 0, token="s3cret-token-0123456789").start()
    try:
        url = f"http://127.0.0.1:{server.address[1]}"
        assert request(f"{url}/health")[0] == 401
        assert request(f"{url}/model", token="wrong")[0] == 401
        assert request(f"{url}/predict", data=b"x" * 10)[0] == 401
        assert request(f"{url}/health", token="s3cret-token-0123456789")[0] == 200
        assert service.metrics.snapshot()["http_requests_unauthorised"] == 3
    finally:
        server.shutdown()


def test_serve_command_refuses_a_non_loopback_bind_without_a_token(tiny_build, monkeypatch):
    from click.testing import CliRunner

    from adtk.toolkit.cli.main import cli

    monkeypatch.delenv("ADTK_SERVE_TOKEN", raising=False)
    outcome = CliRunner().invoke(cli, ["serve", str(tiny_build.artefact), "--http", "0.0.0.0:0"])
    assert outcome.exit_code == 2 and "needs a token" in outcome.output
