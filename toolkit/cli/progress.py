"""Progress bars for long steps (click's bar: part of the core install, shown on a terminal only)."""

from __future__ import annotations

import sys

import click


def progress_factory(total: int, label: str):
    return click.progressbar(length=total, label=f"{label:<10}", file=sys.stderr,
                             show_pos=True, show_eta=True,
                             item_show_func=lambda note: note)  # e.g. "loss 0.123" from bar.update(n, note)
