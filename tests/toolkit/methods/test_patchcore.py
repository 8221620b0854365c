"""PatchCore against brute-force numpy references (as faiss's tests do)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtk.toolkit.methods.base import FitInputs
from adtk.runtime.errors import ConfigError
from adtk.toolkit.coreset import ApproximateGreedyCoreset
from adtk.toolkit.methods.patchcore import PatchCoreState
from adtk.toolkit.methods.registry import UnknownMethodError, create_method, list_methods


def reference_greedy(rows: np.ndarray, target: int, starts: np.ndarray) -> np.ndarray:
    """Textbook greedy k-center in float64 with plain distances, started as the spec says."""
    dist = np.linalg.norm(rows[:, None, :] - rows[None, starts, :], axis=2).mean(1)
    chosen = []
    for _ in range(target):
        index = int(np.argmax(dist))
        chosen.append(index)
        dist = np.minimum(dist, np.linalg.norm(rows - rows[index], axis=1))
    return np.sort(chosen)


def test_coreset_matches_textbook_greedy_k_center():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(300, 16)).astype(np.float32)  # D <= projection_dim: no projection
    sampler = ApproximateGreedyCoreset(ratio=0.1, projection_dim=128, num_starts=10, seed=3)
    selected = sampler.select(rows)
    starts = torch.randperm(300, generator=torch.Generator().manual_seed(3))[:10].numpy()
    np.testing.assert_array_equal(selected, reference_greedy(rows.astype(np.float64), 30, starts))


def test_coreset_is_seeded_and_covers_outliers():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(2000, 200)).astype(np.float32)
    rows[123] += 50.0  # a far outlier must be picked first by a k-center sampler
    a = ApproximateGreedyCoreset(0.01, seed=0).select(rows)
    b = ApproximateGreedyCoreset(0.01, seed=0).select(rows)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 20 and 123 in a
    with pytest.raises(ConfigError):
        ApproximateGreedyCoreset(0.0)


def brute_force_scores(features: np.ndarray, state: PatchCoreState, reweight: bool):
    """features [B, D, h, w] -> (patch scores [B, h, w], image scores [B]) in float64 numpy."""
    bank = state.memory_bank.astype(np.float64)
    batch, dims, height, width = features.shape
    patch_scores, image_scores = [], []
    for image in features.astype(np.float64):
        patches = image.reshape(dims, -1).T
        dists = np.linalg.norm(patches[:, None, :] - bank[None], axis=2)
        nearest = dists.min(1)
        nearest_row = dists.argmin(1)
        worst = int(np.argmax(nearest))
        score = nearest[worst]
        if reweight:
            support = bank[state.bank_neighbours[nearest_row[worst]]]
            d = np.linalg.norm(patches[worst] - support, axis=1)
            score *= 1.0 - np.exp(d[0]) / np.exp(d).sum()
        patch_scores.append(nearest.reshape(height, width))
        image_scores.append(score)
    return np.stack(patch_scores), np.array(image_scores)


@pytest.mark.parametrize("num_neighbors", [1, 5])
def test_head_matches_brute_force(num_neighbors):
    rng = np.random.default_rng(2)
    train = rng.normal(size=(6, 24, 5, 4)).astype(np.float32)
    method = create_method("patchcore", coreset_ratio=0.5, num_neighbors=num_neighbors, seed=1)
    state = method.fit(FitInputs(train))
    assert state.memory_bank.shape == (60, 24)
    if num_neighbors > 1:
        assert state.bank_neighbours.shape == (60, num_neighbors)
        np.testing.assert_array_equal(state.bank_neighbours[:, 0], np.arange(60))
    test = rng.normal(size=(3, 24, 5, 4)).astype(np.float32)
    with torch.no_grad():
        patch_scores, image_scores = method.head(state)(torch.from_numpy(test))
    ref_patch, ref_image = brute_force_scores(test, state, reweight=num_neighbors > 1)
    np.testing.assert_allclose(patch_scores.numpy(), ref_patch, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(image_scores.numpy(), ref_image, rtol=1e-4, atol=1e-4)


def test_training_patches_score_zero_when_bank_keeps_everything():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(3, 8, 4, 4)).astype(np.float32)
    method = create_method("patchcore", coreset_ratio=1.0, num_neighbors=1)
    state = method.fit(FitInputs(train))
    with torch.no_grad():
        patch_scores, _ = method.head(state)(torch.from_numpy(train))
    assert float(patch_scores.max()) < 1e-2


def test_registry_names_and_errors():
    assert "patchcore" in list_methods()
    with pytest.raises(UnknownMethodError, match="did you mean 'patchcore'"):
        create_method("patchcor")
    with pytest.raises(ConfigError):
        create_method("patchcore", no_such_option=1)


def test_coreset_reads_feature_maps_as_their_patch_matrix():
    # PatchCore hands the coreset its [N, D, h, w] maps (no patch-major copy); the picks and the gathered
    # bank rows must be those of the [N*h*w, D] patch matrix in (image, y, x) order.
    from adtk.toolkit.search import patch_rows

    maps = np.random.default_rng(3).normal(size=(5, 160, 6, 7)).astype(np.float32)
    matrix = np.ascontiguousarray(maps.transpose(0, 2, 3, 1).reshape(-1, 160))
    sampler = ApproximateGreedyCoreset(0.1, projection_dim=128, seed=2, block_size=4, num_candidates=16)
    from_maps, from_matrix = sampler.select(maps), sampler.select(matrix)
    np.testing.assert_array_equal(from_maps, from_matrix)
    np.testing.assert_array_equal(patch_rows(maps, from_maps), matrix[from_maps])


def test_nearest_bank_rows_matches_brute_force_and_breaks_ties_by_lowest_index():
    from adtk.toolkit.search import nearest_bank_rows

    rng = np.random.default_rng(3)
    bank = rng.normal(size=(50, 6)).astype(np.float32)
    bank[31] = bank[7]  # an exact duplicate: every query nearest to it must get index 7, as argmin would
    queries = np.concatenate([rng.normal(size=(2, 9, 6)), np.repeat(bank[None, [7, 12, 31]], 2, axis=0)],
                             axis=1).astype(np.float32)
    bank_t = torch.from_numpy(-2.0 * bank.T.copy())
    sq, index = nearest_bank_rows(torch.from_numpy(queries), bank_t, torch.from_numpy((bank ** 2).sum(1)))
    brute = ((queries.astype(np.float64)[:, :, None, :] - bank[None, None]) ** 2).sum(-1)  # [B, P, M]
    np.testing.assert_array_equal(index.numpy()[:, :9], brute.argmin(-1)[:, :9])
    np.testing.assert_array_equal(index.numpy()[:, 9:], [[7, 12, 7], [7, 12, 7]])  # bank[31] == bank[7]
    np.testing.assert_allclose(sq.numpy(), brute.min(-1), atol=1e-4)
    assert (sq.numpy() >= 0).all()
