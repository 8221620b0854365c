"""Video sources through OpenCV on a generated video file: every frame scored like the Detector scores
it, and a 'camera' that stops delivering and vanishes is reopened with back-off once it comes back."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from adtk.runtime.daemon.service import ScoringService, ServiceConfig
from adtk.runtime.daemon.sources import FrameCounter, VideoSource, open_source
from adtk.runtime.detector import Detector
from adtk.runtime.errors import ConfigError

cv2 = pytest.importorskip("cv2", reason="video sources need opencv-python-headless (pip install 'adtk[camera]')")

NUM_FRAMES = 12


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    """A 12-frame 96x80 MJPG video of moving noise."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 80))
    rng = np.random.default_rng(1)
    for _ in range(NUM_FRAMES):
        writer.write(rng.integers(0, 256, size=(80, 96, 3), dtype=np.uint8))
    writer.release()
    return path


def decode_all(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            return frames
        frames.append(bgr[:, :, ::-1])


def quiet_log(kind, message):
    pass


def test_video_file_source_scores_every_frame_in_order(tiny_build, video_file, list_sink, run_service):
    source = open_source(str(video_file))
    assert isinstance(source, VideoSource) and not source.live
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False, queue_capacity=2), source,
                             [list_sink], log=quiet_log)
    run_service(service).join(timeout=60)  # a file source ends: run() returns by itself
    frames = decode_all(video_file)
    assert len(frames) == NUM_FRAMES
    reference = Detector.load(tiny_build.artefact).predict(np.ascontiguousarray(np.stack(frames)))
    assert [r.frame_id for r in list_sink.results] == list(range(NUM_FRAMES))  # blocking queue: no drops
    np.testing.assert_allclose([r.pred_score for r in list_sink.results], reference.pred_score, atol=1e-5)
    assert service.metrics.snapshot()["frames_dropped"] == 0 and list_sink.closed


def test_vanished_camera_is_reopened_with_back_off(tiny_build, video_file, tmp_path, list_sink, run_service, wait):
    camera = tmp_path / "camera.avi"  # a live source whose stream ends, then disappears, then comes back
    shutil.copy(video_file, camera)
    source = VideoSource(str(camera), live=True, backoff_s=(0.02, 0.2))
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False), source, [list_sink],
                             log=quiet_log)
    run_service(service)
    wait(lambda: len(list_sink.results) >= NUM_FRAMES + 1, what="the stream reopened after it stopped")
    camera.unlink()
    reopens_when_gone = service.metrics.snapshot()["source_reopens"]
    wait(lambda: service.metrics.snapshot()["source_reopens"] >= reopens_when_gone + 4, what="retries while gone")
    scored_while_gone = len(list_sink.results)
    shutil.copy(video_file, camera)
    wait(lambda: len(list_sink.results) >= scored_while_gone + NUM_FRAMES, what="frames after the camera returned")
    assert not service.source_finished  # the daemon never gave up on the source
    assert service.metrics.snapshot()["scoring_errors"] == 0


def test_unknown_source_values_are_refused_with_the_accepted_forms(tmp_path):
    with pytest.raises(ConfigError, match="camera index"):
        open_source(str(tmp_path / "missing.mp4"))
    assert open_source("0").live and open_source("rtsp://10.0.0.5/stream").live


def test_the_stall_timeout_reaches_every_live_source():
    """adtk serve --stall-timeout: a camera triggered by parts may be silent longer than the 10-s default."""
    for value in ("0", "rtsp://10.0.0.5/stream", "/dev/video0"):
        assert open_source(value, stall_timeout_s=42.0).stall_timeout_s == 42.0


def test_serve_exits_non_zero_when_its_video_source_cannot_be_opened(tiny_build, tmp_path, runner):
    """A supervisor (systemd's Restart=on-failure) restarts a daemon whose source failed only if it exits non-zero."""
    pytest.importorskip("cv2")
    from adtk.toolkit.cli.main import cli

    fake = tmp_path / "camera.mp4"
    fake.write_text("not a video")
    result = runner.invoke(cli, ["serve", str(tiny_build.artefact), "--source", str(fake)])
    assert result.exit_code != 0
    assert "the source stopped" in result.output and "camera.mp4" in result.output
    assert "Traceback" not in result.output


def test_a_camera_frame_too_small_to_score_is_refused_naming_the_camera():
    frame = VideoSource(0, live=True)._frame(FrameCounter(), np.zeros((8, 12, 3), np.uint8))
    assert frame.image is None and frame.error == "camera:0: image of 12x8 px is too small (16 px minimum)"
