"""Which pip extra brings each optional import, and the one-line error that says how to install it.

adtk's core install is the device runtime (numpy, Pillow, click); everything else is an extra declared in
pyproject.toml. When an optional import fails, the user gets one line naming the command, the extra and
the pip command, e.g. ``adtk eval needs the [eval] extra (scipy is not installed): pip install 'adtk[eval]'``,
never a traceback. A test checks this table against pyproject.toml's extras.
"""

from __future__ import annotations

import importlib
from adtk.runtime.errors import AdtkError

# import name (top level) -> (distribution that provides it, the extra that declares it). The runtime core
# (numpy, PIL, click) is not here: without it nothing runs.
EXTRA_OF_IMPORT: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "cpu"),
    "onnx": ("onnx", "onnx"),
    "scipy": ("scipy", "eval"),
    "sklearn": ("scikit-learn", "eval"),
    "matplotlib": ("matplotlib", "eval"),
    "tensorrt": ("tensorrt", "tensorrt"),
    "cuda": ("cuda-python", "tensorrt"),
    "cv2": ("opencv-python-headless", "serve"),
    "paho": ("paho-mqtt", "serve"),
    "cryptography": ("cryptography", "sign"),
    "torch": ("torch", "build"),
    "timm": ("timm", "build"),
    "huggingface_hub": ("huggingface-hub", "build"),
    "safetensors": ("safetensors", "build"),
    "faiss": ("faiss-cpu", "build"),
    "skimage": ("scikit-image", "build"),
    "onnxscript": ("onnxscript", "build"),
    "yaml": ("pyyaml", "build"),
    "pytest": ("pytest", "test"),
    "prometheus_client": ("prometheus-client", "serve"),
}

# The extra a command is installed with: a module it misses that this extra also declares is reported
# under it (`adtk build` without scipy needs [build], not [eval]).
EXTRA_OF_COMMAND: dict[str, str] = {
    "build": "build", "demo": "build", "defects": "build", "targets": "build", "eval": "eval",
    "inspect": "onnx", "export": "onnx", "serve": "serve", "sign": "sign", "compile": "tensorrt",
}

# Extras whose packages another extra also declares (kept in step with pyproject.toml by a test).
EXTRAS_THAT_ALSO_DECLARE: dict[str, tuple[str, ...]] = {
    "build": ("scipy", "sklearn", "matplotlib", "onnx", "yaml"),
    "tensorrt": ("onnx", "yaml"),
}

ONNXRUNTIME_HINT = "pip install 'adtk[cpu]' (or 'adtk[gpu]' with CUDA; on Jetson NVIDIA's onnxruntime-gpu wheel)"


class MissingExtraError(AdtkError):
    """An optional dependency is not installed; the message names the extra and the pip command."""


def extra_for(import_name: str, command: str | None = None) -> str | None:
    """The extra that provides top-level module `import_name`, preferring the command's own extra."""
    top = import_name.split(".")[0]
    if top not in EXTRA_OF_IMPORT:
        return None
    command_extra = EXTRA_OF_COMMAND.get(command or "")
    if command_extra is not None and top in EXTRAS_THAT_ALSO_DECLARE.get(command_extra, ()):
        return command_extra
    return EXTRA_OF_IMPORT[top][1]


def missing_extra_message(import_name: str, feature: str, command: str | None = None) -> str | None:
    """``"<feature> needs the [x] extra (<dist> is not installed): pip install 'adtk[x]'"``, or None when
    `import_name` is not an optional dependency of adtk (then the error is a real bug, not an install)."""
    extra = extra_for(import_name, command)
    if extra is None:
        return None
    distribution = EXTRA_OF_IMPORT[import_name.split(".")[0]][0]
    install = ONNXRUNTIME_HINT if extra == "cpu" else f"pip install 'adtk[{extra}]'"
    return f"{feature} needs the [{extra}] extra ({distribution} is not installed): {install}"


def require(import_name: str, feature: str):
    """Import and return `import_name`, or raise MissingExtraError with the one-line install hint."""
    try:
        return importlib.import_module(import_name)
    except ModuleNotFoundError as error:
        missing = error.name or import_name
        message = missing_extra_message(missing, feature)
        if message is None:
            raise
        raise MissingExtraError(message) from None
