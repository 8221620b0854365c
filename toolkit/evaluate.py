"""`adtk eval`: score a data set's test split with an artefact through the torch-free runtime and report
image AUROC, pixel AUROC, AU-PRO (FPR <= 0.3) and F1 at the artefact's stored threshold.

Maps are compared at the model size: ground-truth masks are resized there with nearest neighbour.
AUROC and AU-PRO use the raw (unclipped) outputs, so clipping in the normalised outputs cannot create ties.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from adtk.runtime.detector import Detector
from adtk.runtime.errors import DataError, one_line
from adtk.toolkit.data import index_dataset, iter_images, read_sample_mask
from adtk.toolkit.evaluation.metrics import evaluate_predictions, image_auroc

logger = logging.getLogger("adtk")


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((size_hw[1], size_hw[0]), Image.NEAREST)) > 127


# Frames scored per call, in model-size pixels: 8 frames of 640 x 256. A batch's intermediates grow with its patches
# (and a memory bank's search with patches x rows): 8 frames at a 1248 x 496 model size took 9.4 GB with LDKNN.
EVAL_BATCH_PIXELS = 8 * 640 * 256


def evaluate_artefact(model_path: str | Path, data: str | Path, backend: str = "auto", batch_size: int = 8,
                      skip_bad: bool = False, progress: Callable[[int], None] | None = None,
                      samples=None, details: dict | None = None,
                      on_warning: Callable[[str], None] | None = None) -> dict:
    """-> metrics dict (JSON-serialisable); `samples` overrides the data set's test split. A `details` dict
    is filled with the per-image arrays (samples, scores, labels, raw maps, masks) for reports. With skip_bad,
    an image that cannot be used (its file or its mask) is skipped and named through `on_warning` (default: a
    warning line on the "adtk" logger, as the build's)."""
    warn = on_warning if on_warning is not None else (lambda message: logger.warning(f"warning: {message}"))
    detector = Detector.load(model_path, backend=backend)
    if samples is None:
        index = index_dataset(data)
        samples = list(index.test)
        if not samples:
            raise DataError(f"{data}: no test images (expected test/good and test/<defect type> folders)")
    size_hw = detector.model_size_px
    batch_size = max(1, min(batch_size, EVAL_BATCH_PIXELS // (size_hw[0] * size_hw[1])))
    scores, labels, pred_labels, maps, masks, types, used = [], [], [], [], [], [], []
    pred_scores: list[float] = []
    batch: list[np.ndarray] = []
    batch_samples = []

    def flush():
        if not batch:
            return
        prediction = detector.predict(batch)
        scores.extend(prediction.raw_score.tolist())
        pred_scores.extend(prediction.pred_score.tolist())
        pred_labels.extend(prediction.pred_label.tolist())
        maps.extend(prediction.raw_anomaly_map)
        batch.clear()
        batch_samples.clear()

    # frames the runtime refuses to score (under 16 px) are bad files here too (iter_images' default minimum): named,
    # or skipped with --skip-bad
    for sample, image in iter_images(samples, skip_bad=skip_bad, on_warning=warn):
        mask = np.zeros(size_hw, dtype=bool)
        if sample.mask_path is not None:
            try:
                mask = resize_mask(read_sample_mask(sample, image.shape[:2]), size_hw)
            except DataError as error:  # its image is skipped with it: the pixel metrics need the mask
                if not skip_bad:
                    raise
                warn(one_line(f"skipped: {sample.path}, as its mask cannot be used: {error}"))
                if progress:
                    progress(1)
                continue
        batch.append(image)
        batch_samples.append(sample)
        used.append(sample)
        labels.append(sample.label)
        types.append(sample.defect_type)
        masks.append(mask)
        if len(batch) == batch_size:
            flush()
        if progress:
            progress(1)
    flush()
    scores_a, labels_a = np.asarray(scores), np.asarray(labels)
    metrics = evaluate_predictions(scores_a, labels_a, maps=np.stack(maps), masks=np.stack(masks),
                                   pred_labels=np.asarray(pred_labels))
    if details is not None:
        details.update(samples=used, scores=scores_a, labels=labels_a, maps=np.stack(maps), masks=np.stack(masks),
                       threshold=detector.threshold, pred_scores=np.asarray(pred_scores),
                       pred_labels=np.asarray(pred_labels, dtype=bool), types=list(types), detector=detector)
    per_type = {}
    for defect_type in sorted(set(types) - {"good"}):
        keep = np.array([t in ("good", defect_type) for t in types])
        if keep.any() and 0 < labels_a[keep].sum() < keep.sum():
            per_type[defect_type] = image_auroc(scores_a[keep], labels_a[keep])
    return {
        "model": str(model_path),
        "data": str(data),
        "method": detector.manifest["method"]["name"],
        "threshold": detector.threshold,
        **{k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in metrics.items()},
        "image_auroc_per_type": per_type,
    }
