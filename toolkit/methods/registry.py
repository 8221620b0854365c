"""Method registry (like timm's @register_model): one name is the file name, the --method value and
the manifest's `method` field. Hyphens and underscores are the same name."""

from __future__ import annotations

import difflib

from adtk.runtime.errors import ConfigError

_METHODS: dict[str, type] = {}


class UnknownMethodError(ConfigError):
    pass


def canonical_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_method(name: str):
    """Class decorator: make a method available to create_method() and the CLI."""
    key = canonical_name(name)

    def decorator(cls):
        if key in _METHODS:
            raise ValueError(f"method {key!r} is registered twice ({_METHODS[key].__module__} and {cls.__module__})")
        cls.name = key
        _METHODS[key] = cls
        return cls

    return decorator


def _import_builtin_methods() -> None:
    # Importing the package registers every built-in method (each module decorates its class).
    import adtk.toolkit.methods.all  # noqa: F401


def list_methods() -> list[str]:
    _import_builtin_methods()
    return sorted(_METHODS)


def method_class(name: str) -> type:
    _import_builtin_methods()
    key = canonical_name(name)
    if key not in _METHODS:
        close = difflib.get_close_matches(key, list(_METHODS), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownMethodError(f"no method {name!r}{hint} (known: {', '.join(sorted(_METHODS))})")
    return _METHODS[key]


def create_method(name: str, **params):
    """Build a method from its name and constructor keyword arguments (None means the default)."""
    cls = method_class(name)
    params = {k: v for k, v in params.items() if v is not None}
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"method {cls.name!r}: {exc}") from None
