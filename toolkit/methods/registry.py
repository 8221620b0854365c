"""Finding methods by name (like timm's model registry): one name is the file name, the --method value and
the manifest's `method` field. Hyphens and underscores are the same name.

The classes register themselves with `@register_method` (methods/base.py); this module imports every built-in
method (methods/all.py) and looks them up. Method modules import base.py, never this module, so there is no
import circle (tests/test_import_graph.py).
"""

from __future__ import annotations

import difflib

import adtk.toolkit.methods.all  # noqa: F401  (registers every built-in method)
from adtk.runtime.errors import ConfigError
from adtk.toolkit.methods.base import canonical_name, register_method, registered_classes

__all__ = ["UnknownMethodError", "canonical_name", "create_method", "list_methods", "method_class",
           "register_method"]


class UnknownMethodError(ConfigError):
    pass


def list_methods() -> list[str]:
    return sorted(registered_classes())


def method_class(name: str) -> type:
    key, classes = canonical_name(name), registered_classes()
    if key not in classes:
        close = difflib.get_close_matches(key, list(classes), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownMethodError(f"no method {name!r}{hint} (known: {', '.join(sorted(classes))})")
    return classes[key]


def create_method(name: str, **params):
    """Build a method from its name and constructor keyword arguments (None means the default)."""
    cls = method_class(name)
    params = {k: v for k, v in params.items() if v is not None}
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"method {cls.name!r}: {exc}") from None
