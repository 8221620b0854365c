"""Class 3 of issue 14: one decoding path. The same bytes scored through every input path (a file given to
the Detector, a watched folder, POST /predict, a camera-style OpenCV source) give the same score; before,
a half-transparent PNG scored 1.0 by file and 0.0 over HTTP. Class 7: a folder is not a camera (files
copied at once into a watched folder are all scored, none dropped, however slow the scoring)."""

from __future__ import annotations

import io
import json
import shutil
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from adtk.runtime.daemon.http_api import ApiServer
from adtk.runtime.daemon.service import ScoringService, ServiceConfig
from adtk.runtime.daemon.sources import FolderSource, VideoSource
from adtk.runtime.detector import Detector


def quiet_log(kind, message):
    pass


def variants() -> dict[str, bytes]:
    """Encodings where decoders disagree: alpha, 16-bit, EXIF orientation, palette transparency, CMYK."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)
    out = {}

    def save(name, image, fmt="PNG", **options):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        out[name] = buffer.getvalue()

    rgba = np.dstack([rgb, np.full((60, 70), 128, np.uint8)])
    save("half-transparent.png", Image.fromarray(rgba, mode="RGBA"))
    save("sixteen-bit.png", Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257 + 100)))
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rotated.jpg", Image.fromarray(rgb), "JPEG", exif=exif, quality=95)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette-transparent.png", palette, transparency=3)
    save("cmyk.tiff", Image.fromarray(rgb).convert("CMYK"), "TIFF")
    save("opaque.png", Image.fromarray(rgb))
    return out


def post(port: int, data: bytes) -> dict:
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=data,
                                                       method="POST"), timeout=30) as response:
        return json.loads(response.read())


class Collect:
    needs_pixels = False
    name = "collect"

    def __init__(self):
        self.results = []

    def write(self, result):
        self.results.append(result)

    def close(self):
        pass


def test_the_same_bytes_score_the_same_through_every_path(tiny_build, tmp_path, run_service, wait):
    encoded = variants()
    files = tmp_path / "files"
    files.mkdir()
    for name, data in encoded.items():
        (files / name).write_bytes(data)
    detector = Detector.load(tiny_build.artefact)
    by_file = {name: float(detector.predict(str(files / name)).pred_score[0]) for name in encoded}

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    sink = Collect()
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False),
                             FolderSource(incoming, poll_s=0.05), [sink], log=quiet_log)
    api = ApiServer(service, "127.0.0.1", 0)
    run_service(service)
    api.start()
    try:
        by_http = {name: post(api.address[1], data)["score"] for name, data in encoded.items()}
        for name in encoded:
            shutil.copy(files / name, incoming / name)
        wait(lambda: len(sink.results) == len(encoded), what="every file in the folder scored")
    finally:
        api.shutdown()
    by_folder = {r.source.rsplit("/", 1)[-1]: r.pred_score for r in sink.results}
    for name in encoded:
        assert by_http[name] == pytest.approx(by_file[name], abs=1e-6), name
        assert by_folder[name] == pytest.approx(by_file[name], abs=1e-6), name
    # the half-transparent frame really differs from its opaque pixels (the old HTTP path dropped alpha)
    opaque_rgb = np.asarray(Image.open(io.BytesIO(encoded["half-transparent.png"])).convert("RGB"))
    assert float(detector.predict(opaque_rgb).pred_score[0]) != pytest.approx(by_file["half-transparent.png"],
                                                                                abs=1e-6)


def test_a_camera_frame_scores_like_the_same_picture_as_a_file(tiny_build, tmp_path):
    cv2 = pytest.importorskip("cv2", reason="camera sources need opencv-python-headless")
    path = tmp_path / "frame.png"
    path.write_bytes(variants()["opaque.png"])
    source = VideoSource(str(path), live=False)  # OpenCV opens one image as a one-frame sequence
    from adtk.runtime.daemon.sources import FrameCounter
    import threading

    frames = list(source.frames(FrameCounter(), threading.Event()))
    assert len(frames) >= 1 and frames[0].image is not None
    detector = Detector.load(tiny_build.artefact)
    assert float(detector.predict(frames[0].image).pred_score[0]) == pytest.approx(
        float(detector.predict(str(path)).pred_score[0]), abs=1e-6)
    assert cv2 is not None


class SlowDetectorService(ScoringService):
    """Scoring that takes ~150 ms a frame, like a default-size artefact on a small device."""

    def score(self, *args, **kwargs):
        time.sleep(0.15)
        return super().score(*args, **kwargs)


def test_files_copied_at_once_into_a_watched_folder_are_never_dropped(tiny_build, test_images, tmp_path,
                                                                      run_service, wait):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    sink = Collect()
    service = SlowDetectorService(ServiceConfig(model=tiny_build.artefact, watch=False, queue_capacity=2),
                                  FolderSource(incoming, poll_s=0.05), [sink], log=quiet_log)
    run_service(service)
    staged = tmp_path / "staged"
    staged.mkdir()
    names = [f"{i:03d}.png" for i in range(12)]
    for i, name in enumerate(names):
        Image.fromarray(test_images[i % len(test_images)]).save(staged / name)
    for name in names:  # "ten images copied at once"
        shutil.copy(staged / name, incoming / name)
    wait(lambda: len(sink.results) == len(names), timeout_s=30, what="all 12 files scored")
    counts = service.metrics.snapshot()
    assert counts["frames_dropped"] == 0
    assert sorted(r.source.rsplit("/", 1)[-1] for r in sink.results) == names
