"""The Python build API: what `adtk build` does, as one call (also `adtk.build`).

    import adtk
    result = adtk.build(data="datasets/bottle", out="bottle.onnx", method="patchcore",
                        image_size_px=256, method_params={"coreset_ratio": 0.05})
    result.artefact, result.manifest["calibration"]["threshold"], result.timings_s
    detector = adtk.Detector.load(result.artefact)

Keyword options are BuildConfig's fields, the same names as a `--config` file's keys (`adtk build
--print-config` shows them all); `config=` takes such a file or dict, and keyword options override it, as
flags do on the command line. Every option is validated before any image is read (ConfigError).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from adtk.toolkit.build import BuildResult
from adtk.toolkit.build import build as run_build
from adtk.toolkit.build_config import config_from_dict, read_config_file


def build(data: str | Path | None = None, out: str | Path | None = None, *, config: str | Path | dict | None = None,
          log: Callable[[str], None] | None = None, progress: Callable | None = None, **options: Any) -> BuildResult:
    """Fit a detector on `data` and compile it into the artefact `out`.

    Args:
        data, out: the data folder and the .onnx to write (or `data:` / `out:` in `config`).
        config: a YAML build-config file (as `adtk inspect MODEL --config` prints) or a dict of options.
        log: called with each progress line; default: the "adtk" logger at INFO.
        progress: `progress(total, label)` -> context manager with `.update(n)`, for progress bars; default none.
        **options: any BuildConfig field: method, method_params, backbone, image_size_px, target, precision,
            data_layout, seed, ...

    Returns:
        BuildResult: artefact (Path), manifest (dict, with the resolved options under "build_config"),
        graph (the torch reference), fit/calibration samples, timings_s.
    """
    values = read_config_file(config) if isinstance(config, (str, Path)) else dict(config or {})
    values.update({key: value for key, value in (("data", data), ("out", out)) if value is not None})
    values.update(options)
    resolved = config_from_dict(values, "adtk.build")
    return run_build(resolved, log=log or logging.getLogger("adtk").info, progress_factory=progress)
