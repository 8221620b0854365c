"""`adtk serve | reader` whose reader stops reading: the stdout sink must not stop scoring or hang SIGTERM."""

from __future__ import annotations

import os
import sys
import time

from adtk.runtime.daemon.service import ScoringService, ServiceConfig
from adtk.runtime.daemon.sinks import JsonLinesSink


def test_a_stdout_reader_that_stops_reading_does_not_stop_scoring_or_shutdown(tiny_build, test_images, array_source,
                                                                             run_service, wait, monkeypatch):
    read_end, write_end = os.pipe()  # nobody reads: the pipe (64 KB, about 250 results) fills and stays full
    stdout = open(write_end, "w", encoding="utf-8")
    try:
        monkeypatch.setattr(sys, "stdout", stdout)
        sink = JsonLinesSink(None)
        lines = []
        service = ScoringService(ServiceConfig(model=tiny_build.artefact, watch=False),
                                 array_source(test_images, repeat=None), [sink],
                                 log=lambda kind, message: lines.append(f"{kind}: {message}"))
        thread = run_service(service)
        wait(lambda: service.metrics.snapshot()["frames_scored"] >= 1500, timeout_s=60,
             what="scoring to go on past a full stdout pipe")
        assert service.metrics.snapshot()["sink_errors"] > 0
        assert any("stdout: the reader is not keeping up" in line for line in lines), lines[:3]
        tic = time.monotonic()
        service.stop()
        thread.join(timeout=30)
        assert not thread.is_alive() and time.monotonic() - tic < 10, "shutdown hung on the stalled stdout"
        assert any("results not written: the reader did not read them" in line for line in lines), lines[-3:]
    finally:
        monkeypatch.undo()
        os.close(read_end)
        try:
            stdout.close()
        except OSError:
            pass
