"""One entry of a watched folder that cannot even be looked at (a symlink loop: stat fails with ELOOP) is reported
once, by name, and skipped; it does not stop the folder's other frames being scored or its other models being
taken."""

from __future__ import annotations

import shutil
import threading

import numpy as np
from PIL import Image

from adtk.runtime.daemon.hot_swap import ModelWatcher
from adtk.runtime.daemon.sources import FolderSource, FrameCounter


def test_a_symlink_loop_among_the_frames_is_reported_once_and_the_other_frames_are_scored(tmp_path):
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    source, stop = FolderSource(tmp_path, poll_s=0.01), threading.Event()
    deadline = threading.Timer(10.0, stop.set)  # a source stuck on the loop yields nothing: fail, not hang
    deadline.start()
    frames = []
    for frame in source.frames(FrameCounter(), stop):
        frames.append(frame)
        if any(f.image is not None for f in frames) and len(frames) >= 2:
            break
    deadline.cancel()
    errors = [f for f in frames if f.image is None]
    assert [f.source for f in errors] == [str(tmp_path / "loop.png")]
    assert "loop.png" in errors[0].error and "cannot read" in errors[0].error
    assert [f.source for f in frames if f.image is not None] == [str(tmp_path / "a.png")]


def test_a_symlink_loop_among_the_models_is_refused_once_and_a_new_model_is_still_taken(tiny_build, tmp_path):
    (tmp_path / "loop.onnx").symlink_to(tmp_path / "loop.onnx")
    refused = []
    watcher = ModelWatcher(tmp_path, serving_sha256="another model",
                           on_refused=lambda path, reason: refused.append((path.name, reason)))
    watcher._looked_at = watcher._last_seen = watcher._signatures()  # as start() does, without its thread
    shutil.copyfile(tiny_build.artefact, tmp_path / "new.onnx")
    for _ in range(3):  # a file is taken once it is unchanged between two looks
        watcher.poll_once()
    assert watcher.take() is not None
    assert [name for name, _ in refused] == ["loop.onnx"]
    assert "cannot read it" in refused[0][1]


def test_an_undecodable_frame_says_the_daemon_skips_it_not_to_pass_skip_bad(tmp_path):
    """adtk serve has no --skip-bad (the decoder's hint for predict and build): the daemon skips the frame."""
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b_broken.png").write_bytes((tmp_path / "a.png").read_bytes()[:60])  # a truncated PNG
    source, stop = FolderSource(tmp_path, poll_s=0.01), threading.Event()
    deadline = threading.Timer(10.0, stop.set)
    deadline.start()
    frames = []
    for frame in source.frames(FrameCounter(), stop):
        frames.append(frame)
        if len(frames) >= 2:
            break
    deadline.cancel()
    errors = [f.error for f in frames if f.image is None]
    assert len(errors) == 1 and "b_broken.png: cannot decode image" in errors[0]
    assert errors[0].endswith("skipped; the daemon goes on with the next frame") and "--skip-bad" not in errors[0]
