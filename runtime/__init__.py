"""adtk.runtime: load one adtk artefact and score frames, with numpy and onnxruntime only.

Nothing under adtk.runtime may import torch, timm, faiss or scikit-learn: this package is what runs
on the device. A test imports it in a subprocess where those imports fail.
"""

from adtk.runtime.errors import (  # noqa: F401
    AdtkError,
    ArtefactError,
    BackendError,
    ConfigError,
    DataError,
    TargetError,
)
