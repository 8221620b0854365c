"""`adtk research known-anomalies`: leave-one-defect-type-out (seed 003's protocol, spec B.1, on one
data set's defect types instead of MVTec categories).

For every defect type T of the test set:
  * labelled training defects: the first half (int(n * 0.5), by sorted file name, deterministic as the
    authors' code) of every *other* type's test images, with their masks;
  * evaluation set: test/good plus *all* images of T (the other types' images are not scored: their first
    halves were seen, and B.1 tests on the target type only);
  * the ordinary build (toolkit/build.py) on an in-memory DatasetIndex whose `defects` are those training
    defects, so the artefact is what `adtk build` would give. Methods that do not learn from defects
    (e.g. patchcore) see them only through the threshold calibration, which uses the same labelled set.
Image AUROC is threshold-free; F1 uses a threshold fitted on the training defects, not on T.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from adtk.runtime.errors import DataError
from adtk.toolkit.build import build
from adtk.toolkit.data import DatasetIndex, index_dataset
from adtk.toolkit.evaluate import evaluate_artefact

TRAIN_FRACTION = 0.5  # spec B.1: first half of each source anomaly type to train


def first_half(samples) -> list:
    ordered = sorted(samples, key=lambda s: s.path.name)
    return ordered[: int(len(ordered) * TRAIN_FRACTION)]


def leave_one_type_out_splits(index: DatasetIndex) -> dict[str, tuple[tuple, tuple]]:
    """-> {held-out type: (training defects, evaluation samples)}; only masked images can train."""
    defects = [s for s in index.test if s.label == 1]
    types = sorted({s.defect_type for s in defects})
    if len(types) < 2:
        raise DataError(f"{index.root}: the known-anomalies protocol needs at least 2 defect types in test/, "
                        f"found {len(types)} ({', '.join(types) or 'none'})")
    good = [s for s in index.test if s.label == 0]
    if not good:
        raise DataError(f"{index.root}/test/good: no good test images to score against the held-out type")
    splits = {}
    for held_out in types:
        train = [s for t in types if t != held_out
                 for s in first_half([d for d in defects if d.defect_type == t and d.mask_path is not None])]
        evaluation = good + [s for s in defects if s.defect_type == held_out]
        splits[held_out] = (tuple(train), tuple(evaluation))
    return splits


def evaluate_known_anomalies(config, log=print, progress_factory=None, types=None) -> dict:
    """config: a BuildConfig (its `out` names the artefacts: OUT stem + '.<type>.onnx'). -> metrics dict."""
    index = index_dataset(config.data)
    splits = leave_one_type_out_splits(index)
    per_type = {}
    for held_out, (train_defects, evaluation) in splits.items():
        if types and held_out not in types:
            continue
        held = DatasetIndex(index.root, index.layout, train=index.train, test=evaluation, defects=train_defects)
        out = Path(config.out)
        run_config = dataclasses.replace(config, out=out.with_name(f"{out.stem}.{held_out}{out.suffix or '.onnx'}"),
                                         defects_from_test=())
        log(f"known-anomalies: held out {held_out!r}; {len(train_defects)} labelled defects of "
            f"{len(splits) - 1} other types to train, {len(evaluation)} images to test")
        result = build(run_config, log=log, progress_factory=progress_factory, index=held)
        metrics = evaluate_artefact(result.artefact, config.data, samples=list(evaluation))
        per_type[held_out] = {"image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"],
                              "f1": metrics["f1"], "num_train_defects": len(train_defects),
                              "num_test": len(evaluation), "artefact": str(result.artefact)}
    aurocs = [m["image_auroc"] for m in per_type.values() if m["image_auroc"] is not None]
    return {"protocol": "known-anomalies (leave one defect type out)", "data": str(config.data),
            "method": config.method, "params": config.method_params, "per_type": per_type,
            "mean_image_auroc": float(np.mean(aurocs)) if aurocs else None}
