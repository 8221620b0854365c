"""The compiler and the runtime never name a method: methods plug in through their heads."""

from __future__ import annotations

import re
from pathlib import Path

from adtk.toolkit.methods.registry import list_methods

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_export_and_runtime_mention_no_method_name():
    names = set(list_methods())
    names |= {n.replace("_", "-") for n in names}
    offenders = []
    for folder in ("export", "runtime"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            text = path.read_text().lower()
            for name in names:
                if re.search(rf"\b{re.escape(name)}\b", text):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}: {name}")
    assert not offenders, offenders
