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


def _frames_until(source, count: int, timeout_s: float = 10.0, act=None) -> list:
    """The first `count` frames a FolderSource yields (fewer if it stalls for timeout_s); act(frames) after each."""
    stop = threading.Event()
    deadline = threading.Timer(timeout_s, stop.set)
    deadline.start()
    frames = []
    for frame in source.frames(FrameCounter(), stop):
        frames.append(frame)
        if act is not None:
            act(frames)
        if len(frames) >= count:
            break
    deadline.cancel()
    return frames


def test_a_frame_refused_for_its_permissions_is_scored_once_they_are_fixed(tmp_path, monkeypatch):
    """A camera's uploader that writes with a umask of 077 and fixes the mode afterwards, or an operator's chmod:
    the file was reported once as unreadable, and must not then be lost (chmod changes neither size nor mtime).
    Root reads any file, so the daemon's user is played: no read bit, no read (EACCES), as for a non-root daemon."""
    import builtins
    import errno
    import os
    import stat

    def denied(path) -> bool:
        try:
            return os.path.basename(os.fsdecode(path)) == "locked.png" and not stat.S_IMODE(os.stat(path).st_mode) & 0o444
        except (TypeError, OSError):
            return False

    real_open, real_os_open = builtins.open, os.open

    def open_as_daemon_user(file, *args, **kwargs):
        if denied(file):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(file))
        return real_open(file, *args, **kwargs)

    def os_open_as_daemon_user(path, *args, **kwargs):
        if denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_as_daemon_user)
    monkeypatch.setattr(os, "open", os_open_as_daemon_user)
    locked = tmp_path / "locked.png"
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(locked)
    locked.chmod(0o000)

    def fix_the_mode(frames) -> None:
        if len(frames) == 1:
            locked.chmod(0o644)

    frames = _frames_until(FolderSource(tmp_path, poll_s=0.01), 2, act=fix_the_mode)
    assert frames[0].image is None and "Permission denied" in frames[0].error
    assert len(frames) == 2 and frames[1].source == str(locked) and frames[1].image is not None


def test_a_name_swapped_for_a_fifo_after_the_look_does_not_block_the_reader(tiny_build, tmp_path, monkeypatch):
    """The look (stat, is_file) saw a regular file; by the open it is a named pipe (the writer swapped it): open()
    would wait for a pipe writer forever and the capture thread (or the model watcher) would stop without a word.
    Played by making the look see a regular file where the pipe is."""
    import os
    from pathlib import Path

    from adtk.runtime.artefact import read_artefact
    from adtk.runtime.errors import ArtefactError, DataError
    from adtk.runtime.images import decode_image

    pipes = [tmp_path / "frame.png", tmp_path / "model.onnx"]
    for pipe in pipes:
        os.mkfifo(pipe)
    regular = {pipes[0]: tmp_path / "real.png", pipes[1]: tiny_build.artefact}
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(regular[pipes[0]])
    real_stat, real_is_file = Path.stat, Path.is_file
    monkeypatch.setattr(Path, "stat", lambda self, **kw: real_stat(regular.get(self, self), **kw))
    monkeypatch.setattr(Path, "is_file", lambda self: real_is_file(regular.get(self, self)))

    outcomes = {}

    def read(pipe, reader) -> None:
        try:
            reader(pipe)
            outcomes[pipe] = "read"
        except (DataError, ArtefactError) as exc:
            outcomes[pipe] = str(exc)

    for pipe, reader in zip(pipes, (decode_image, read_artefact)):
        thread = threading.Thread(target=read, args=(pipe, reader), daemon=True)
        thread.start()
        thread.join(10)
        if thread.is_alive():  # blocked in open(): play the pipe's writer so the thread can end, then fail
            with open(pipe, "wb"):
                pass
            thread.join(10)
            outcomes[pipe] = "blocked"
    assert "not a file" in outcomes[pipes[0]], outcomes
    assert "not a regular file" in outcomes[pipes[1]], outcomes
