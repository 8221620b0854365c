"""The MQTT sink against a real mosquitto broker started on a loopback port (Debian package `mosquitto`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from adtk.runtime.daemon.service import ScoringService, ServiceConfig
from adtk.runtime.daemon.sinks import JsonLinesSink, MqttSink, open_sink

mqtt = pytest.importorskip("paho.mqtt.client", reason="the MQTT sink needs paho-mqtt (pip install 'adtk[mqtt]')")
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ["/usr/sbin/mosquitto"] if os.path.exists(p)), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto)")
    folder = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None:
                pytest.skip(f"mosquitto did not start: {process.stdout.read().decode(errors='replace')[-500:]}")
            time.sleep(0.05)
    else:
        process.kill()
        pytest.skip("mosquitto did not open its port within 10 s")
    yield port
    process.terminate()
    process.wait(timeout=10)


class Subscriber:
    def __init__(self, port: int, topic: str):
        self.messages, self._subscribed = [], threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = lambda client, userdata, message: self.messages.append(json.loads(message.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscriber could not subscribe"

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_every_scored_frame_is_published_to_the_broker(broker, tiny_build, test_images, array_source, tmp_path,
                                                       run_service, wait):
    subscriber = Subscriber(broker, "line-3/anomaly")
    try:
        sink = open_sink(f"mqtt://127.0.0.1:{broker}/line-3/anomaly")
        assert isinstance(sink, MqttSink)
        log = tmp_path / "results.jsonl"
        service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False),
                                 array_source(test_images, repeat=5), [sink, JsonLinesSink(log)],
                                 log=lambda kind, message: None)
        run_service(service).join(timeout=60)  # run() returns when the source ends, after sink.close()
        wait(lambda: len(subscriber.messages) == 20, timeout_s=10, what="20 MQTT messages")
    finally:
        subscriber.close()
    written = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(subscriber.messages, key=lambda m: m["frame_id"]) == written
    assert service.metrics.snapshot()["sink_errors"] == 0


def test_broker_that_is_not_there_does_not_stop_scoring(tiny_build, test_images, array_source, list_sink,
                                                        run_service):
    sink = MqttSink(f"mqtt://127.0.0.1:{free_port()}/nobody-listens")
    sink.close_timeout_s = 0.2  # do not wait 5 s at close for acknowledgements that cannot come
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False), array_source(test_images),
                             [sink, list_sink], log=lambda kind, message: None)
    run_service(service).join(timeout=60)
    assert len(list_sink.results) == 4 and service.metrics.snapshot()["scoring_errors"] == 0


def start_broker(folder, port):
    config = folder / f"mosquitto-{port}.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("mosquitto did not restart")


def test_results_published_while_the_broker_is_down_are_delivered_when_it_returns(broker, tiny_build, test_images,
                                                                                   tmp_path):
    """The broker goes away mid-run and comes back on the same port: paho reconnects and sends what waited."""
    port = free_port()
    first = start_broker(tmp_path, port)
    sink = MqttSink(f"mqtt://127.0.0.1:{port}/outage", max_queued=100)
    service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False), None, [sink],
                             log=lambda kind, message: None).start()
    try:
        deadline = time.monotonic() + 10
        while not sink._client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink._client.is_connected()
        first.terminate()
        first.wait(timeout=10)
        while sink._client.is_connected():
            time.sleep(0.05)
        results = [service.score(image, frame_id=i) for i, image in enumerate(test_images)]
        for result in results:
            sink.write(result)  # the broker is down: these wait in paho's queue
        second = start_broker(tmp_path, port)
        subscriber = Subscriber(port, "outage")  # subscribes before paho's reconnect back-off (>= 1 s) ends
        try:
            sink.flush(timeout_s=15)
            assert sink.unacknowledged == 0, "paho did not deliver the queued results after reconnecting"
            deadline = time.monotonic() + 10
            while len(subscriber.messages) < len(results) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            subscriber.close()
            second.terminate()
            second.wait(timeout=10)
    finally:
        service.shutdown()
        sink._client.loop_stop()
    assert sorted(subscriber.messages, key=lambda m: m["frame_id"]) == [r.as_record() for r in results]
