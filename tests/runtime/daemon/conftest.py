"""Fixtures for the daemon tests: a second valid artefact (the tiny build re-sealed with another manifest),
images, an in-memory frame source, and a helper that runs a service on a thread."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from tests.conftest import reseal_with_note


@pytest.fixture(scope="session")
def variant_artefact_bytes(tiny_build):
    return reseal_with_note(tiny_build.artefact.read_bytes(), "variant for the hot-swap tests")


@pytest.fixture(scope="session")
def test_images():
    """Four different uint8 RGB images of 80x70 px (seeded)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(70, 80, 3), dtype=np.uint8) for _ in range(4)]


class ArraySource:
    """Frames from arrays: `repeat` passes over the images (None = forever), one every interval_s."""

    name = "arrays"

    def __init__(self, images, repeat: int | None = 1, interval_s: float = 0.0, live: bool = False):
        self.images, self.repeat, self.interval_s, self.live = images, repeat, interval_s, live

    def frames(self, counter, stop, on_reopen=None):
        steps = itertools.count() if self.repeat is None else range(len(self.images) * self.repeat)
        for step in steps:
            if stop.is_set():
                return
            yield counter.make(self.name, self.images[step % len(self.images)])
            if self.interval_s:
                stop.wait(self.interval_s)


@pytest.fixture
def array_source():
    return ArraySource


class ListSink:
    needs_pixels = False
    name = "list"

    def __init__(self):
        self.results, self.closed = [], False

    def write(self, result):
        self.results.append(result)

    def flush(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def list_sink():
    return ListSink()


def wait_until(condition, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def run_service():
    """run_service(service) -> thread running service.run(); every service is stopped at teardown."""
    started = []

    def start(service):
        service.start()
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        started.append((service, thread))
        return thread

    yield start
    for service, thread in started:
        service.stop()
        thread.join(timeout=20)


@pytest.fixture
def wait():
    return wait_until
