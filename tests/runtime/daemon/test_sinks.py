"""JSON-lines records and anomaly-map overlays (the MQTT sink is in test_mqtt.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from adtk.runtime.daemon.sinks import FrameResult, JsonLinesSink, OverlaySink, open_sink
from adtk.runtime.errors import ConfigError


def result(frame_id: int, label: bool, image=None, anomaly_map=None) -> FrameResult:
    return FrameResult(frame_id=frame_id, source="camera:0", captured_at_s=1700000000.25, pred_score=0.75 if label
                       else 0.2, pred_label=label, raw_score=3.5, latency_ms=12.3456, inference_ms=4.0,
                       model_sha256="ab" * 32, image=image, anomaly_map=anomaly_map)


def test_json_lines_sink_writes_one_complete_record_per_frame(tmp_path):
    path = tmp_path / "out" / "results.jsonl"
    sink = JsonLinesSink(path)
    sink.write(result(7, True))
    sink.write(result(8, False))
    sink.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0] == {"frame_id": 7, "time": "2023-11-14T22:13:20.250Z", "source": "camera:0", "score": 0.75,
                          "label": True, "raw_score": 3.5, "latency_ms": 12.346, "inference_ms": 4.0,
                          "model_sha256": "ab" * 32}
    assert records[1]["frame_id"] == 8 and records[1]["label"] is False


def test_overlay_sink_writes_the_shared_renderers_png_only_for_anomalous_frames(tmp_path):
    from adtk.runtime.overlay import render_overlay

    frame = np.full((60, 90, 3), 100, dtype=np.uint8)
    anomaly_map = np.zeros((16, 16), dtype=np.float32)
    anomaly_map[4:12, 4:12] = 1.0  # a hot square in the middle of the (upsampled) frame
    sink = OverlaySink(tmp_path / "overlays")
    sink.write(result(1, False, frame, anomaly_map))
    sink.write(result(2, True, frame, anomaly_map))
    files = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert files == ["0000000002.png"]  # no overlay for the normal frame, no temporary file left
    overlay = np.asarray(Image.open(tmp_path / "overlays" / files[0]))
    expected = render_overlay(frame, anomaly_map, 0.75, True, caption="frame 2  camera:0")
    assert np.array_equal(overlay, expected)  # the same picture as `adtk predict --overlays` draws


def test_sink_values_are_parsed_or_refused_with_the_accepted_forms(tmp_path):
    assert isinstance(open_sink(f"jsonl:{tmp_path / 'a.jsonl'}"), JsonLinesSink)
    assert isinstance(open_sink(str(tmp_path / "b.jsonl")), JsonLinesSink)
    assert isinstance(open_sink(f"overlay:{tmp_path / 'o'}"), OverlaySink)
    with pytest.raises(ConfigError, match="mqtt://host"):
        open_sink("kafka://broker/topic")


def test_a_source_name_with_undecodable_bytes_is_valid_unicode_in_the_record(tmp_path):
    """A watched file named with a byte that is not UTF-8 reaches Python as a lone surrogate; the record carries
    it as visible text, so strict JSON parsers (which refuse a lone surrogate escape) read every line."""
    from dataclasses import replace

    record = replace(result(1, True), source="/watch/part\udcff.png").as_record()
    line = json.dumps(record, ensure_ascii=False)
    line.encode("utf-8")  # a lone surrogate cannot be encoded: this raised
    assert json.loads(line)["source"] == "/watch/part\\udcff.png"
