"""The scoring loop: every frame scored once and matching the Detector, corrupt frames counted and
skipped, the bounded queue dropping (and counting) the oldest, hot swap between frames, SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adtk.runtime.artefact import read_artefact
from adtk.runtime.daemon.metrics import DaemonMetrics
from adtk.runtime.daemon.service import ScoringService, ServiceConfig
from adtk.runtime.daemon.sinks import JsonLinesSink
from adtk.runtime.daemon.sources import FolderSource, FrameCounter, FrameQueue
from adtk.runtime.detector import Detector
from adtk.runtime.errors import ArtefactError
from adtk.runtime.flash import flash


def quiet_log(kind, message):
    pass


def model_folder(tmp_path: Path, artefact: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(artefact, folder / "model.onnx")
    return folder / "model.onnx"


def test_frame_queue_drops_the_oldest_and_counts_each_drop():
    dropped = []
    queue = FrameQueue(3, on_drop=lambda frame: dropped.append(frame.frame_id))
    counter = FrameCounter()
    for _ in range(10):
        queue.put(counter.make("s", None))
    assert dropped == list(range(7))
    assert [queue.get(0.01).frame_id for _ in range(3)] == [7, 8, 9]
    assert queue.get(0.01) is None


def test_blocking_put_waits_for_room_instead_of_dropping():
    queue = FrameQueue(2, on_drop=lambda frame: pytest.fail("a blocking put dropped a frame"))
    counter = FrameCounter()
    producer = threading.Thread(target=lambda: [queue.put(counter.make("s", None), block=True) for _ in range(20)])
    producer.start()
    received = []
    while len(received) < 20:
        frame = queue.get(1.0)
        assert frame is not None, "producer stalled"
        received.append(frame.frame_id)
    producer.join()
    assert received == list(range(20))


def test_folder_source_scores_each_new_image_once_and_counts_a_corrupt_one(tiny_build, test_images, tmp_path,
                                                                            run_service, wait):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    out = tmp_path / "results.jsonl"
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False),
                             FolderSource(incoming, poll_s=0.05), [JsonLinesSink(out)], log=quiet_log)
    run_service(service)
    paths = []
    for i, image in enumerate(test_images):
        paths.append(incoming / f"{i:03d}.png")
        Image.fromarray(image).save(paths[-1])
    (incoming / "broken.png").write_bytes(paths[0].read_bytes()[:200])  # a truncated PNG
    (incoming / ".hidden.png").write_bytes(b"ignored")
    wait(lambda: service.metrics.snapshot()["frames_scored"] == 4
         and service.metrics.snapshot()["frames_undecodable"] == 1, what="4 frames scored, 1 counted as corrupt")
    time.sleep(0.3)  # a few more polls: nothing is scored twice
    service.stop()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["source"] for r in records) == sorted(str(p) for p in paths)
    reference = Detector.load(tiny_build.artefact).predict([str(p) for p in paths])
    by_source = {r["source"]: r for r in records}
    for path, score, label in zip(paths, reference.pred_score, reference.pred_label):
        assert by_source[str(path)]["score"] == pytest.approx(float(score), abs=1e-5)
        assert by_source[str(path)]["label"] == bool(label)
    counts = service.metrics.snapshot()
    assert counts["scoring_errors"] == 0 and counts["frames_dropped"] == 0


def test_scoring_behind_a_live_source_drops_oldest_frames_and_accounts_for_every_frame(
        tiny_build, test_images, array_source, list_sink, run_service, wait):
    source = array_source(test_images, repeat=100, live=True)  # 400 frames, as fast as the CPU makes them
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False, queue_capacity=2), source,
                             [list_sink], log=quiet_log)
    thread = run_service(service)
    thread.join(timeout=60)
    counts = service.metrics.snapshot()
    assert counts["frames_scored"] + counts["frames_dropped"] == 400
    assert counts["frames_dropped"] > 0, "scoring kept up with an unthrottled source: the test proves nothing"
    ids = [r.frame_id for r in list_sink.results]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert list_sink.closed


def test_hot_swap_refuses_truncated_artefacts_then_swaps_a_good_one_between_frames(
        tiny_build, variant_artefact_bytes, test_images, array_source, list_sink, tmp_path, run_service, wait):
    model = model_folder(tmp_path, tiny_build.artefact)
    old_sha = read_artefact(model).sha256
    service = ScoringService(ServiceConfig(model=model, watch_poll_s=0.05), array_source(test_images, repeat=None,
                                                                                         interval_s=0.005),
                             [list_sink], log=quiet_log)
    run_service(service)
    wait(lambda: len(list_sink.results) >= 20, what="20 frames")
    good = model.read_bytes()
    (model.parent / "new.onnx").write_bytes(variant_artefact_bytes[: len(variant_artefact_bytes) // 2])
    wait(lambda: service.metrics.snapshot()["model_swaps_refused"] == 1, what="the truncated new.onnx refused")
    model.write_bytes(good[: len(good) // 3])  # the running model's file, overwritten in place and cut short
    wait(lambda: service.metrics.snapshot()["model_swaps_refused"] == 2, what="the half-overwritten model refused")
    scored_before_swap = len(list_sink.results)
    variant = tmp_path / "variant.onnx"
    variant.write_bytes(variant_artefact_bytes)
    (model.parent / "new.onnx").unlink()
    assert all(r.ok for r in flash(variant, [str(model.parent)]))
    wait(lambda: service.metrics.snapshot()["model_swaps"] == 1, what="the flashed artefact swapped in")
    new_sha = read_artefact(variant).sha256
    wait(lambda: list_sink.results[-1].model_sha256 == new_sha and len(list_sink.results) > scored_before_swap + 20,
         what="frames scored by the new model")
    service.stop()
    shas = [r.model_sha256 for r in list_sink.results]
    switch = shas.index(new_sha)
    assert set(shas[:switch]) == {old_sha} and set(shas[switch:]) == {new_sha}  # one clean switch
    counts = service.metrics.snapshot()
    assert counts["scoring_errors"] == 0 and counts["frames_undecodable"] == 0
    reference = Detector.load(variant).predict(np.stack(test_images)).pred_score
    for result in list_sink.results[switch:switch + 8]:
        expected = reference[result.frame_id % len(test_images)]
        assert result.pred_score == pytest.approx(float(expected), abs=1e-5)


def test_a_bad_model_at_start_is_refused(tiny_build, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(tiny_build.artefact.read_bytes()[:-10])
    with pytest.raises(ArtefactError):
        ScoringService(ServiceConfig(model=bad), None, [], log=quiet_log).start()


def test_metrics_render_as_prometheus_text():
    parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client parses the exposition")
    metrics = DaemonMetrics()
    metrics.inc("frames_scored", 3)
    metrics.inc("frames_dropped")
    for seconds in (0.0005, 0.003, 0.003, 7.0):
        metrics.observe_latency(seconds)
    metrics.model_sha256 = "ab" * 32
    families = {f.name: f for f in parser.text_string_to_metric_families(metrics.render_prometheus())}
    assert families["adtk_frames_scored"].samples[0].value == 3
    assert families["adtk_frames_dropped"].samples[0].value == 1
    buckets = {s.labels["le"]: s.value for s in families["adtk_frame_latency_seconds"].samples
               if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 1 and buckets["0.0025"] == 1 and buckets["0.005"] == 3 and buckets["5.0"] == 3
    assert buckets["+Inf"] == 4
    sums = {s.name: s.value for s in families["adtk_frame_latency_seconds"].samples}
    assert sums["adtk_frame_latency_seconds_sum"] == pytest.approx(7.0065)


def test_metrics_count_anomalous_frames_and_histogram_scores_per_model():
    parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client parses the exposition")
    metrics = DaemonMetrics()
    old, new = "aa" * 32, "bb" * 32
    for score, sha in ((0.2, old), (0.5, old), (0.51, old), (0.97, new), (0.3, new)):
        metrics.observe_score(score, score > 0.5, sha)
    families = {f.name: f for f in parser.text_string_to_metric_families(metrics.render_prometheus())}
    anomalous = {s.labels["model_sha256"]: s.value for s in families["adtk_frames_anomalous"].samples
                 if s.name.endswith("_total")}
    assert anomalous == {old: 1, new: 1}
    assert metrics.snapshot()["frames_anomalous"] == 2
    buckets = {(s.labels["model_sha256"], s.labels["le"]): s.value for s in families["adtk_score"].samples
               if s.name.endswith("_bucket")}
    assert buckets[(old, "0.5")] == 2 and buckets[(old, "0.55")] == 3 and buckets[(old, "+Inf")] == 3
    assert buckets[(new, "0.3")] == 1 and buckets[(new, "1.0")] == 2


def test_without_prometheus_client_metrics_render_nothing_and_the_api_says_what_to_install(monkeypatch):
    import builtins

    from adtk.runtime.daemon.metrics import INSTALL_HINT

    real_import = builtins.__import__

    def no_prometheus(name, *args, **kwargs):
        if name.startswith("prometheus_client"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    metrics = DaemonMetrics()
    metrics.inc("frames_scored")
    metrics.observe_score(0.9, True, "ab" * 32)  # counting goes on
    assert metrics.render_prometheus() is None
    assert metrics.snapshot()["frames_scored"] == 1 and metrics.snapshot()["frames_anomalous"] == 1
    assert "pip install 'adtk[serve]'" in INSTALL_HINT and "\n" not in INSTALL_HINT


def test_sigterm_finishes_the_frame_in_flight_and_flushes_the_sinks(tiny_build, test_images, tmp_path, wait):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i, image in enumerate(test_images):
        Image.fromarray(image).save(incoming / f"{i}.png")
    out = tmp_path / "results.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "adtk.toolkit.cli.main", "serve", str(tiny_build.artefact),
                                "--source", str(incoming), "--sink", f"jsonl:{out}", "--no-watch"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait(lambda: out.exists() and len(out.read_text().splitlines()) == 4, timeout_s=60, what="4 JSON lines")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    summary = json.loads(stderr.strip().splitlines()[-1])
    assert summary["summary"]["frames_scored"] == 4
    assert out.read_text().endswith("\n") and len([json.loads(x) for x in out.read_text().splitlines()]) == 4


def test_daemon_and_flash_import_without_torch_opencv_paho_pillow():
    from tests.runtime.test_torch_free_import import run_isolated

    result = run_isolated("""
        import adtk.runtime.daemon.service, adtk.runtime.daemon.http_api, adtk.runtime.daemon.sinks
        import adtk.runtime.daemon.sources, adtk.runtime.daemon.hot_swap, adtk.runtime.flash
        print("ok")
    """, also_absent=("cv2", "paho"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_of_models_arriving_together_the_newest_verified_one_is_offered_and_a_backend_refusal_names_its_file(
        tiny_build, variant_artefact_bytes, tmp_path):
    """"Newest first: the last one written is the one meant to run." Each verified candidate used to replace the
    previous offer, so the OLDEST good file of a batch won (seen: a hand copy of several models at once)."""
    import os

    from adtk.runtime.daemon.hot_swap import ModelWatcher
    from tests.runtime.test_artefact_tampered_files import resealed

    folder = tmp_path / "models"
    folder.mkdir()
    refused = []
    watcher = ModelWatcher(folder, serving_sha256="another model",
                           on_refused=lambda path, reason: refused.append((path.name, reason)))
    watcher._looked_at = watcher._last_seen = watcher._signatures()  # as start() does, without its thread

    def custom_op(model) -> None:  # verifies (sealed, contract intact); onnxruntime refuses the unknown domain
        from onnx import helper

        model.graph.node.append(helper.make_node("Evil", ["raw_score"], ["evil"], domain="com.example.evil"))
        model.opset_import.append(helper.make_opsetid("com.example.evil", 1))

    files = {"a_older.onnx": tiny_build.artefact.read_bytes(), "b_newer.onnx": variant_artefact_bytes,
             "c_unknown_op.onnx": resealed(tiny_build.artefact.read_bytes(), custom_op)}
    for age, (name, data) in zip((30, 20, 10), files.items()):
        (folder / name).write_bytes(data)
        os.utime(folder / name, (time.time() - age, time.time() - age))
    for _ in range(2):
        watcher.poll_once()
    offered = watcher.take()
    assert offered is not None and offered.artefact.sha256 == read_artefact(folder / "b_newer.onnx").sha256
    assert [name for name, _ in refused] == ["c_unknown_op.onnx"]
    assert refused[0][1].startswith(str(folder / "c_unknown_op.onnx") + ": onnxruntime could not load")
    watcher.poll_once()  # the superseded older file is not loaded later either
    assert watcher.take() is None


def test_a_file_name_with_a_newline_or_control_bytes_is_one_log_line(tiny_build, tmp_path, run_service, wait):
    """A name is anyone's who can write to the folder: "x\\nadtk serve: model swapped: ..." must not forge a
    second log line, nor an ESC sequence recolour the operator's terminal."""
    import io

    from adtk.runtime.daemon.service import RateLimitedLog

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    forged = "x.png\nadtk serve: model swapped: 0123456789ab... -> evil\x1b[8m.png"
    (incoming / forged).write_bytes(b"not an image")
    (incoming / "bad\udcff.png").write_bytes(b"not an image either")  # an undecodable byte in the name
    stream = io.StringIO()
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False),
                             FolderSource(incoming, poll_s=0.05), [], log=RateLimitedLog(0.0, stream))
    run_service(service)
    wait(lambda: service.metrics.snapshot()["frames_undecodable"] == 2, what="both files counted")
    service.stop()
    lines = [line for line in stream.getvalue().splitlines() if "undecodable frame" in line]
    assert len(lines) == 2 and all(line.startswith("adtk serve: undecodable frame: ") for line in lines)
    assert not any(line.startswith("adtk serve: model swapped") for line in stream.getvalue().splitlines())
    assert "\x1b" not in stream.getvalue() and "x.png\\nadtk serve" in stream.getvalue() and "\\udcff" in stream.getvalue()


def test_a_frame_too_small_to_score_is_logged_naming_its_file_like_an_undecodable_one(tiny_build, test_images,
                                                                                         tmp_path, run_service, wait):
    """An 8x8 image in the folder was logged "scoring error: frame 0 from ...: DataError: frames: image of 8x8 px is
    too small": the refusal itself named "frames", not the file, and it was counted as a scoring error. It is
    refused at the source, as the decoder refuses a corrupt file: one line naming the file, one undecodable frame."""
    import io

    from adtk.runtime.daemon.service import RateLimitedLog

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    Image.fromarray(test_images[0][:8, :8]).save(incoming / "tiny.png")
    Image.fromarray(test_images[1]).save(incoming / "good.png")
    stream = io.StringIO()
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False),
                             FolderSource(incoming, poll_s=0.05), [], log=RateLimitedLog(0.0, stream))
    run_service(service)
    wait(lambda: service.metrics.snapshot()["frames_scored"] == 1
         and service.metrics.snapshot()["frames_undecodable"] == 1, what="1 frame scored, 1 refused")
    service.stop()
    assert stream.getvalue().splitlines() == [
        f"adtk serve: undecodable frame: {incoming / 'tiny.png'}: image of 8x8 px is too small (16 px minimum); "
        "skipped; the daemon goes on with the next frame"]
    assert service.metrics.snapshot()["scoring_errors"] == 0
