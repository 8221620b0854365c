"""What commands say while they work: log lines through `logging` (logger "adtk", on stderr; -q shows warnings
and errors only, -v adds debug lines) and progress bars for long steps (click's bar, on stderr, shown on a
terminal only and never with -q)."""

from __future__ import annotations

import logging
import sys

import click

logger = logging.getLogger("adtk")


def configure_logging(verbosity: int) -> None:
    """verbosity: -1 (-q) warnings and errors, 0 info, 1+ (-v) debug."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def log_info(message: str) -> None:
    """The build's and compiler's `log` callback: "warning: ..." lines are warnings (shown with -q), the rest info."""
    if message.startswith("warning: "):
        logger.warning(message)
    else:
        logger.info(message)


class _SilentBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1, current_item=None):
        pass


def progress_factory(total: int, label: str):
    if logger.getEffectiveLevel() > logging.INFO:  # -q
        return _SilentBar()
    return click.progressbar(length=total, label=f"{label:<10}", file=sys.stderr,
                             show_pos=True, show_eta=True,
                             item_show_func=lambda note: note)  # e.g. "loss 0.123" from bar.update(n, note)
