"""adtk: fit industrial anomaly detectors, compile them into one ONNX artefact, score frames on the edge.

The top-level names are imported lazily (PEP 562), so `import adtk` stays as light as the runtime core
(numpy, Pillow) and `adtk.__version__` works on a device without torch:

    adtk.__version__      the installed distribution's version
    adtk.Detector         adtk.runtime.detector.Detector: load an artefact, score frames (torch-free)
    adtk.build(...)       adtk.toolkit.api.build: fit and compile, as `adtk build` (needs the [build] extra)
"""

from __future__ import annotations

import importlib
import pkgutil

# The subpackages live in the repo's top-level folders (toolkit/, runtime/, ...), mapped by pyproject.toml.
# Extending __path__ keeps `import adtk.runtime` working when this folder is found on sys.path before the
# installed package (python run from a checkout holding a non-editable install).
__path__ = pkgutil.extend_path(__path__, __name__)


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adtk")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "0+unknown"


__version__ = _installed_version()

# name -> (module, attribute): what `adtk.NAME` imports on first use.
_LAZY_NAMES = {
    "Detector": ("adtk.runtime.detector", "Detector"),
    "Prediction": ("adtk.runtime.detector", "Prediction"),
    "AdtkError": ("adtk.runtime.errors", "AdtkError"),
    "build": ("adtk.toolkit.api", "build"),
    "BuildConfig": ("adtk.toolkit.build", "BuildConfig"),
}

__all__ = ["__version__", *_LAZY_NAMES]


def __getattr__(name: str):
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module 'adtk' has no attribute {name!r}")
    module_name, attribute = _LAZY_NAMES[name]
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))
