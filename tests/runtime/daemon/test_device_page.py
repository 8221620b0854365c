"""The device page (`adtk serve --http`, GET /): its JSON feed, and the page itself in a real headless Chromium
(Debian's chromium + chromium-driver, driven by selenium): it loads, updates as frames are scored, and shows
a refused model swap."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adtk.runtime.daemon.device_page import DevicePage
from adtk.runtime.daemon.http_api import ApiServer
from adtk.runtime.daemon.live_feed import LiveFeed
from adtk.runtime.daemon.service import ScoringService, ServiceConfig
from adtk.runtime.daemon.sources import FolderSource
from adtk.runtime.detector import Detector
from tests.runtime.daemon.test_http_api import request

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def served(tiny_build, tmp_path):
    """A daemon on a folder source, its model folder watched, with the device page: (url, incoming, models)."""
    models, incoming = tmp_path / "models", tmp_path / "incoming"
    models.mkdir()
    incoming.mkdir()
    shutil.copy(tiny_build.artefact, models / "model.onnx")
    feed = LiveFeed()
    service = ScoringService(ServiceConfig(model=models / "model.onnx", watch_poll_s=0.2),
                             FolderSource(incoming, poll_s=0.1), [feed], log=lambda kind, message: None)
    server = ApiServer(service, "127.0.0.1", 0, routes=DevicePage(service, feed))
    service.start()
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    server.start()
    yield f"http://127.0.0.1:{server.address[1]}", incoming, models
    server.shutdown()
    service.stop()
    runner.join(timeout=20)


def anomalous_frame(tiny_build) -> np.ndarray:
    """A grey frame with a red square, unlike the tiny data set's textures: the tiny model flags it (checked,
    since the page tests rely on an anomalous frame)."""
    frame = np.full((96, 96, 3), 128, dtype=np.uint8)
    frame[20:60, 30:70] = (255, 0, 0)
    assert Detector.load(tiny_build.artefact, backend="cpu").predict(frame[None]).pred_label[0]
    return frame


def test_state_feed_reports_scores_since_a_frame_and_serves_overlays(served, tiny_build, wait):
    url, incoming, _ = served
    noise = anomalous_frame(tiny_build)
    Image.fromarray(noise).save(incoming / "a.png")
    wait(lambda: json.loads(request(f"{url}/api/state")[1])["counters"]["frames_scored"] == 1, what="a frame scored")
    state = json.loads(request(f"{url}/api/state")[1])
    assert state["threshold"] == 0.5 and state["model"]["sha256"] == Detector.load(tiny_build.artefact).artefact.sha256
    (score,) = state["scores"]
    assert score["label"] is True and state["anomalous"][0]["frame_id"] == score["frame_id"]
    assert json.loads(request(f"{url}/api/state?since={score['frame_id']}")[1])["scores"] == []
    assert state["model_update"] is None and state["status"] == "ok"
    status, png = request(f"{url}/api/overlay/{score['frame_id']}.png")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert request(f"{url}/api/overlay/999.png")[0] == 404
    assert request(f"{url}/api/state?since=x")[0] == 400
    page = request(f"{url}/")[1].decode()
    assert "<script>" in page and "http://" not in page and "https://" not in page  # nothing fetched from outside


def chromium_driver(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium drives the browser")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def test_page_in_headless_chromium_updates_as_frames_are_scored_and_shows_a_refused_swap(
        served, tiny_build, tmp_path, wait):
    from selenium.webdriver.common.by import By

    url, incoming, models = served
    noise = anomalous_frame(tiny_build)
    driver = chromium_driver(tmp_path)
    try:
        driver.get(url + "/")
        text = lambda element_id: driver.find_element(By.ID, element_id).text  # noqa: E731
        wait(lambda: text("status") == "ok", what="the page's first poll")
        assert "no frames scored yet" in text("last")
        assert not driver.find_element(By.ID, "refused").is_displayed()

        Image.fromarray(noise).save(incoming / "first.png")
        Image.fromarray(np.roll(noise, 20, axis=0)).save(incoming / "second.png")
        wait(lambda: "frames scored\n2" in text("counters") or "frames scored 2" in text("counters"),
             what="the counters to show 2 frames")
        assert "ANOMALOUS" in text("last")
        wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#frames img")) == 2, what="two overlay thumbnails")
        wait(lambda: all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                         for img in driver.find_elements(By.CSS_SELECTOR, "#frames img")), what="overlays loaded")
        # the timeline drew points: some canvas pixels are the anomalous red
        red = driver.execute_script(
            "const c = document.getElementById('timeline'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 198 && d[i+1] === 40 && d[i+2] === 40) n++; return n;")
        assert red > 10

        data = bytearray(tiny_build.artefact.read_bytes())
        data[len(data) // 2] ^= 0xFF  # a damaged artefact dropped into the model folder: refused, never served
        (models / "broken.onnx").write_bytes(bytes(data))
        wait(lambda: driver.find_element(By.ID, "refused").is_displayed(), what="the refused swap on the page")
        assert "broken.onnx" in text("refused-now") and "integrity" in text("refused-now")
        wait(lambda: text("status") == "update refused", what="the status pill to say so, as /health does")
        assert json.loads(request(f"{url}/health")[1])["status"] == "update refused"
        assert "swaps refused\n1" in text("counters") or "swaps refused 1" in text("counters")
        screenshot = tmp_path / "device_page.png"
        driver.save_screenshot(str(screenshot))
        assert Image.open(screenshot).size[0] > 600
    finally:
        driver.quit()


def test_adtk_serve_http_serves_the_page_and_its_feed(tiny_build, tmp_path, wait):
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a free port for the daemon
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "adtk.toolkit.cli.main", "serve", str(tiny_build.artefact),
                                "--http", f"127.0.0.1:{port}", "--no-watch"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            try:
                return request(f"{url}/api/state", timeout_s=2)[0] == 200
            except OSError:
                return False

        wait(answers, timeout_s=90, what="adtk serve --http to answer")
        assert b"<title>adtk device</title>" in request(f"{url}/")[1]
        state = json.loads(request(f"{url}/api/state")[1])
        assert state["model"]["path"] == str(tiny_build.artefact) and state["scores"] == []
    finally:
        process.terminate()
        process.wait(timeout=30)
