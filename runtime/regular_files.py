"""Open a file the runtime reads (a frame, an artefact, a signature) only if it is a regular file, without blocking.

A name that was a regular file when it was looked at (stat, is_file) may be a FIFO by the time it is opened: its
writer (anyone who can write to a watched folder) swapped it. open() on a FIFO waits for a writer, forever, and the
thread that called it (the daemon's capture thread, its model watcher) stops without a word. Opened with O_NONBLOCK
such an open returns at once; fstat on the descriptor then says what was opened, and only a regular file is read
(in blocking mode again, as usual). The check and the read are on the same descriptor, so nothing can be swapped
in between.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import BinaryIO

_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)


class NotARegularFile(OSError):
    """What was opened is a FIFO, a device, a socket or a folder, not a file to read."""


def open_regular(path) -> BinaryIO:
    """`path` opened for reading in binary mode; NotARegularFile (an OSError) when it is not a regular file, and
    the OSError of the open itself (missing, no permission, a socket: ENXIO) otherwise."""
    descriptor = os.open(path, _FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file (a device, a pipe or a socket)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_small_json(path, limit_bytes: int = 64 * 1024):
    """The JSON document of a small side file (a signature, an engine's metadata), read as a regular file of at
    most `limit_bytes`. Raises OSError (NotARegularFile among them) or ValueError (too large, not UTF-8, not
    JSON), or RecursionError (a nesting bomb): callers name the file in their own words."""
    with open_regular(path) as stream:
        text = stream.read(limit_bytes + 1)
    if len(text) > limit_bytes:
        raise ValueError(f"larger than {limit_bytes // 1024} KB")
    return json.loads(text.decode("utf-8"))
