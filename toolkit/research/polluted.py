"""`adtk research pollution RATE --protocol sroc|paire --seed S`: build on a polluted training set, evaluate,
and measure how well the build's refinement (if any) removed the injected defects.

The polluted set comes from research/pollution.py (the paper's protocol); the build is the ordinary
`adtk build` (toolkit/build.py) on an in-memory DatasetIndex whose train split is the polluted set and
whose test split is the protocol's evaluation set, so the artefact, calibration and refinement are
exactly what a user would get. The build holds out its calibration images from the polluted set as
usual; injected images that land there cannot be refined away and are counted separately.
"""

from __future__ import annotations

import json

from adtk.toolkit.build import build
from adtk.toolkit.data import DatasetIndex, index_dataset
from adtk.toolkit.evaluate import evaluate_artefact
from adtk.toolkit.refinement import training_list_path
from adtk.toolkit.research.pollution import pollute, refinement_quality

LEAKY_NOTE = ("LEAKY protocol (PaIRE, spec P-B1): the injected defective images are also in the test set, so a "
              "detector that memorises its training images scores them as normal. Do not compare with "
              "sroc_disjoint numbers.")


def evaluate_polluted(config, rate: float, protocol: str, seed: int, details: dict | None = None,
                      log=print, progress_factory=None) -> dict:
    """config: a BuildConfig (its `out` receives the artefact). -> metrics with 'protocol' and 'refinement'."""
    index = index_dataset(config.data)
    split = pollute(index.train, index.test, rate, protocol, seed)
    polluted = DatasetIndex(index.root, index.layout, train=split.train, test=split.test, defects=index.defects)
    log(f"{split.protocol}: {len(split.injected)} defective images injected into {len(split.train)} training "
        f"images (seed {seed}); {len(split.test)} test images")
    result = build(config, log=log, progress_factory=progress_factory, index=polluted)
    metrics = evaluate_artefact(result.artefact, config.data, samples=list(split.test), details=details)
    injected = {str(s.path) for s in split.injected}
    calibration = {str(s.path) for s in result.calibration_samples}
    record = result.manifest["training"].get("refinement")
    refinement = None
    if record is not None:
        listing = json.loads(training_list_path(result.artefact).read_text())
        candidates = injected - calibration  # the injected images the refiner could see
        refinement = {"spec": record["spec"], "detector": record["detector"],
                      **refinement_quality(listing["dropped"], candidates)}
    metrics["protocol"] = {
        "name": split.protocol, "rate": rate, "seed": seed, "leaky": split.leaky,
        "note": LEAKY_NOTE if split.leaky else "leak-free (SROC, spec A6): the pollution pool is removed from test",
        "num_train": len(split.train), "num_injected": len(split.injected),
        "injected_in_calibration": len(injected & calibration), "num_test": len(split.test),
    }
    metrics["refinement"] = refinement
    metrics["build"] = {"artefact": str(result.artefact), "method": config.method,
                        "params": result.manifest["method"]["params"], "refine": config.refine}
    return metrics
