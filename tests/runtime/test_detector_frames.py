"""Detector.predict takes a batch [B, H, W, C] by the rules of one frame [H, W, C]: grey (1), grey + alpha (2),
RGB (3) and RGBA (4) are converted by the one conversion (adtk.runtime.pixels.to_rgb_frame), and what is refused
for one frame is refused for a batch in the same words. A grey or RGBA batch used to be refused while each of its
frames, given alone, was scored."""

from __future__ import annotations

import numpy as np
import pytest

from adtk.runtime.detector import Detector
from adtk.runtime.errors import DataError


@pytest.fixture(scope="module")
def detector(tiny_build):
    return Detector.load(tiny_build.artefact, backend="cpu")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(3, 70, 80, 4), dtype=np.uint8)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_a_batch_of_grey_grey_alpha_or_rgba_frames_scores_as_its_frames_one_by_one(detector, images, channels):
    batch = np.ascontiguousarray(images[..., :channels])
    alpha_zero = batch.copy()
    if channels in (2, 4):
        alpha_zero[..., -1] = 0  # fully transparent: composited over black, whatever the colour stored under it
    for frames in (batch, alpha_zero):
        together = detector.predict(frames)
        alone = [detector.predict(frame) for frame in frames]
        np.testing.assert_allclose(together.pred_score, [p.pred_score[0] for p in alone], atol=1e-5)
        np.testing.assert_allclose(together.anomaly_map, np.stack([p.anomaly_map[0] for p in alone]), atol=1e-5)
    black = detector.predict(np.zeros((1, 70, 80, 3), np.uint8)).pred_score
    if channels in (2, 4):
        np.testing.assert_allclose(detector.predict(alpha_zero).pred_score, np.repeat(black, 3), atol=1e-5)


@pytest.mark.parametrize("frames, refusal", [
    (np.zeros((2, 70, 80, 5), np.uint8), "with C = 3 (RGB), 1 (grey), 2 (grey + alpha) or 4 (RGBA); got shape"),
    (np.zeros((2, 70, 80, 0), np.uint8), "with C = 3 (RGB), 1 (grey), 2 (grey + alpha) or 4 (RGBA); got shape"),
    (np.zeros((2, 70, 80, 3), np.float32), "expected uint8 pixels (0..255), got float32; convert with"),
    (np.zeros((2, 70, 80, 1), np.uint16), "expected uint8 pixels (0..255), got uint16; convert with"),
])
def test_what_is_refused_for_one_frame_is_refused_for_a_batch_in_the_same_words(detector, frames, refusal):
    with pytest.raises(DataError) as one:
        detector.predict(frames[0])
    with pytest.raises(DataError) as batch:
        detector.predict(frames)
    assert str(one.value).startswith("frame 0: ") and refusal in str(one.value)
    assert str(batch.value).startswith("frames: ") and refusal in str(batch.value)
