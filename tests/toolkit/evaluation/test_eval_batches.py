"""adtk eval scores its test frames in batches bounded by model-size pixels, so a large model size does not
multiply a batch's memory (8 frames at 1248 x 496 took 9.4 GB with LDKNN)."""

from __future__ import annotations

from adtk.runtime.detector import Detector
from adtk.toolkit import evaluate


def test_eval_batches_hold_at_most_the_pixel_budget_of_frames(tiny_build, tiny_dataset, monkeypatch):
    sizes = []
    predict = Detector.predict

    def counting(self, frames):
        sizes.append(len(frames))
        return predict(self, frames)

    monkeypatch.setattr(Detector, "predict", counting)
    height, width = tiny_build.manifest["input"]["model_size_px"]
    metrics = evaluate.evaluate_artefact(tiny_build.artefact, tiny_dataset.root)
    assert max(sizes) == min(8, len(tiny_dataset.test)) and sum(sizes) == metrics["num_images"]
    sizes.clear()
    monkeypatch.setattr(evaluate, "EVAL_BATCH_PIXELS", 3 * height * width + 1)
    again = evaluate.evaluate_artefact(tiny_build.artefact, tiny_dataset.root)
    assert max(sizes) == 3 and sum(sizes) == metrics["num_images"]
    assert again["image_auroc"] == metrics["image_auroc"]  # the batching changes no score
