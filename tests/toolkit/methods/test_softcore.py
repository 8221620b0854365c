"""SoftCore against brute-force numpy references: the three noise discriminators (LOF against a
textbook Breunig LOF), the global removal, the coreset over kept patches, the soft-weighted head, and a
tiny build whose artefact matches its torch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtk.toolkit.methods.base import FitInputs
from adtk.runtime.detector import Detector
from adtk.runtime.errors import ConfigError
from adtk.toolkit.data import read_image
from adtk.toolkit.methods.registry import create_method


def reference_lof(rows: np.ndarray, k: int) -> np.ndarray:
    """Breunig et al. 2000 (spec A.3(c), Eq. 4-6) in float64, with sklearn's 1e-10 guard on lrd."""
    dists = np.linalg.norm(rows[:, None] - rows[None], axis=2)
    np.fill_diagonal(dists, np.inf)
    neighbours = np.argsort(dists, axis=1, kind="stable")[:, :k]
    k_distance = np.take_along_axis(dists, neighbours[:, -1:], axis=1)[:, 0]
    reach = np.maximum(k_distance[neighbours], np.take_along_axis(dists, neighbours, axis=1))
    lrd = 1.0 / (reach.mean(1) + 1e-10)
    return lrd[neighbours].mean(1) / lrd


def reference_nn(rows: np.ndarray) -> np.ndarray:
    dists = np.linalg.norm(rows[:, None] - rows[None], axis=2)
    np.fill_diagonal(dists, np.inf)
    return 1.0 + dists.min(1)


def reference_gauss(rows: np.ndarray, epsilon: float = 0.01) -> np.ndarray:
    centred = rows - rows.mean(0)
    cov = centred.T @ centred / (len(rows) - 1) + epsilon * np.eye(rows.shape[1])
    return 1.0 + np.sqrt(np.einsum("nd,de,ne->n", centred, np.linalg.inv(cov), centred))


@pytest.mark.parametrize("discriminator,reference", [("lof", lambda r: reference_lof(r, 6)), ("nn", reference_nn),
                                                     ("gauss", reference_gauss)])
def test_outlier_scores_match_per_position_references(discriminator, reference):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 8, 3, 2)).astype(np.float32)  # D = 8 <= 128: no projection
    method = create_method("softcore", discriminator=discriminator)
    scores = method.outlier_scores(features)
    assert scores.shape == (20, 3, 2)
    for y in range(3):
        for x in range(2):
            expected = reference(features[:, :, y, x].astype(np.float64))
            np.testing.assert_allclose(scores[:, y, x], expected, rtol=1e-4)


def test_outlier_scores_are_computed_in_the_seeded_128d_projection():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(12, 300, 2, 2)).astype(np.float32)
    a = create_method("softcore", seed=3).outlier_scores(features)
    b = create_method("softcore", seed=3).outlier_scores(features)
    c = create_method("softcore", seed=4).outlier_scores(features)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)  # another projection, other scores


def test_planted_defect_patches_are_removed_and_bank_is_sized_on_all_patches():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(40, 16, 4, 4)).astype(np.float32)
    features[[3, 17], :, 1, 2] += 25.0  # two images with a defect at one position
    method = create_method("softcore", coreset_ratio=0.1, tau=0.15, seed=0)
    weights = method.outlier_scores(features)
    state = method.fit(FitInputs(features))
    total = 40 * 16
    assert state.memory_bank.shape == (int(0.1 * total), 16)
    assert method.last_fit["num_kept"] == pytest.approx(0.85 * total, abs=1)
    planted = features[[3, 17], :, 1, 2]
    assert not any(np.all(np.isclose(state.memory_bank, p), axis=1).any() for p in planted)
    # every bank row is a kept training patch and carries that patch's outlier score
    patches = features.transpose(0, 2, 3, 1).reshape(-1, 16)
    flat_weights = weights.reshape(-1)
    for row, weight in zip(state.memory_bank, state.soft_weights):
        index = int(np.flatnonzero(np.all(patches == row, axis=1))[0])
        assert weight == flat_weights[index] and weight <= method.last_fit["cutoff"]


@pytest.mark.parametrize("distance", ["squared", "l2"])
def test_head_matches_brute_force(distance):
    rng = np.random.default_rng(3)
    method = create_method("softcore", coreset_ratio=0.3, distance=distance, seed=1)
    state = method.fit(FitInputs(rng.normal(size=(10, 12, 3, 3)).astype(np.float32)))
    test = rng.normal(size=(2, 12, 3, 3)).astype(np.float32)
    with torch.no_grad():
        patch_scores, image_scores = method.head(state)(torch.from_numpy(test))
    bank = state.memory_bank.astype(np.float64)
    patches = test.astype(np.float64).transpose(0, 2, 3, 1).reshape(2, 9, 12)
    dists = np.linalg.norm(patches[:, :, None] - bank[None, None], axis=3)
    nearest = dists.argmin(2)
    expected = state.soft_weights[nearest] * dists.min(2) ** (2 if distance == "squared" else 1)
    np.testing.assert_allclose(patch_scores.numpy().reshape(2, 9), expected, rtol=1e-4)
    np.testing.assert_allclose(image_scores.numpy(), expected.max(1), rtol=1e-4)


def test_config_errors():
    for bad in ({"discriminator": "knn"}, {"distance": "cosine"}, {"tau": 1.0}, {"lof_k": 0}):
        with pytest.raises(ConfigError):
            create_method("softcore", **bad)


def test_tiny_build_carries_soft_weights_and_matches_torch_reference(tiny_dataset, tmp_path):
    from adtk.toolkit.build import BuildConfig, build

    config = BuildConfig(data=tiny_dataset.root, out=tmp_path / "softcore.onnx", method="softcore",
                         method_params={"coreset_ratio": 0.25}, random_weights=True, image_size_px=64,
                         calib_fraction=0.25)
    result = build(config, log=lambda message: None, index=tiny_dataset)
    fit = result.manifest["method"]["fit"]
    assert fit["removed_patches"] > 0 and fit["distance"] == "squared"
    assert result.graph.head.soft_weights.shape == (fit["memory_bank_rows"],)
    detector = Detector.load(result.artefact, backend="cpu")
    for sample in tiny_dataset.test[::3]:
        image = read_image(sample.path)
        with torch.no_grad():
            reference = result.graph(torch.from_numpy(image)[None])
        prediction = detector.predict(image[None])
        assert abs(float(reference.pred_score[0]) - float(prediction.pred_score[0])) <= 1e-4
