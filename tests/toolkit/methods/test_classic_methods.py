"""KNN, Mahalanobis, PaDiM and PaIRE heads against brute-force float64 numpy / scikit-learn references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from adtk.toolkit.methods.base import FitInputs
from adtk.runtime.errors import ConfigError
from adtk.toolkit.gaussian import ledoit_wolf, whitening_factor
from adtk.toolkit.methods.paire import low_rank_gaussians
from adtk.toolkit.methods.registry import create_method, list_methods

CHANNELS = (6, 10)


def stage_maps(rng, n, grid=6):
    return [torch.from_numpy(rng.normal(size=(n, CHANNELS[0], grid, grid)).astype(np.float32)),
            torch.from_numpy(rng.normal(size=(n, CHANNELS[1], grid // 2, grid // 2)).astype(np.float32))]


def fitted(name, rng, n_train=30, **params):
    method = create_method(name, **params)
    embedding = method.embedding(CHANNELS)
    with torch.no_grad():
        train = embedding(stage_maps(rng, n_train)).numpy()
        test = embedding(stage_maps(rng, 4)).numpy()
    state = method.fit(FitInputs(train, CHANNELS))
    with torch.no_grad():
        patch_scores, image_scores = method.head(state)(torch.from_numpy(test))
    return method, train.astype(np.float64), test.astype(np.float64), state, patch_scores.numpy(), image_scores.numpy()


def mahalanobis_sq(x, mean, cov):
    r = x - mean
    return float(r @ np.linalg.solve(cov, r))


def test_all_four_are_registered():
    assert {"knn", "mahalanobis", "padim", "paire"} <= set(list_methods())


def test_batched_ledoit_wolf_equals_sklearn():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(3, 20, 8)) @ rng.normal(size=(8, 8))  # correlated, n > d
    samples[2, :, :] = rng.normal(size=(20, 8)) * np.arange(1, 9)  # and one with n small vs spread
    mean, cov, _ = ledoit_wolf(samples)
    for g in range(3):
        reference = LedoitWolf().fit(samples[g])
        np.testing.assert_allclose(cov[g], reference.covariance_, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(mean[g], reference.location_, rtol=1e-12)


def test_whitening_factor_gives_exact_squared_distance_on_ill_conditioned_cov():
    rng = np.random.default_rng(1)
    basis, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    cov = basis @ np.diag(np.logspace(-6, 2, 12)) @ basis.T  # condition number 1e8
    factor = whitening_factor(cov[None])[0]
    assert np.allclose(np.triu(factor, 1), 0)  # lower triangular: W = C^-1 with cov = C C^T
    for _ in range(5):
        r = rng.normal(size=12)
        np.testing.assert_allclose(np.sum((factor @ r) ** 2), mahalanobis_sq(r, 0, cov), rtol=1e-8)


def test_knn_matches_brute_force():
    rng = np.random.default_rng(2)
    _, train, test, state, patch, image = fitted("knn", rng, num_neighbors=5)
    bank = train.mean(axis=(2, 3))
    for b in range(len(test)):
        sq = ((bank - test[b].mean(axis=(1, 2))) ** 2).sum(1)
        nearest = np.argsort(sq)[:5]
        np.testing.assert_allclose(image[b], sq[nearest].mean(), rtol=1e-4)
        same_position = ((train[nearest] - test[b][None]) ** 2).sum(1).mean(0)  # spec P-A5: same (i, j)
        np.testing.assert_allclose(patch[b], same_position, rtol=1e-4, atol=1e-4)


def test_knn_clamps_k_and_checks_config():
    rng = np.random.default_rng(3)
    method, *_ = fitted("knn", rng, n_train=3, num_neighbors=5)
    with pytest.raises(ConfigError):
        create_method("knn", num_neighbors=0)


def test_mahalanobis_matches_sklearn_per_level():
    rng = np.random.default_rng(4)
    _, train, test, state, patch, image = fitted("mahalanobis", rng, n_train=12)  # N < d of level 2
    levels = [slice(0, 6), slice(6, 16)]
    pooled = train.mean(axis=(2, 3))
    models = [LedoitWolf().fit(pooled[:, level]) for level in levels]

    def score(vector):
        return sum(np.sqrt(mahalanobis_sq(vector[level], m.location_, m.covariance_)) for level, m in zip(levels, models))

    for b in range(len(test)):
        np.testing.assert_allclose(image[b], score(test[b].mean(axis=(1, 2))), rtol=1e-4)
        np.testing.assert_allclose(patch[b, 1, 2], score(test[b][:, 1, 2]), rtol=1e-4)  # the labelled deviation


def test_padim_matches_sklearn_per_position_and_records_its_channels():
    rng = np.random.default_rng(5)
    method, train, test, state, patch, image = fitted("padim", rng, n_train=25, num_channels=7, seed=3)
    assert len(state.channel_index) == 7 and np.array_equal(state.channel_index, np.sort(state.channel_index))
    again = create_method("padim", num_channels=7, seed=3)
    np.testing.assert_array_equal(again.channel_index(CHANNELS), state.channel_index)
    other = create_method("padim", num_channels=7, seed=4)
    assert not np.array_equal(other.channel_index(CHANNELS), state.channel_index)
    assert method.fit_report(state)["channel_index"] == state.channel_index.tolist()
    for b in range(2):
        for (i, j) in [(0, 0), (2, 5), (5, 3)]:
            model = LedoitWolf().fit(train[:, :, i, j])
            expected = np.sqrt(mahalanobis_sq(test[b, :, i, j], model.location_, model.covariance_))
            np.testing.assert_allclose(patch[b, i, j], expected, rtol=1e-4)
        np.testing.assert_allclose(image[b], patch[b].max())


@pytest.mark.parametrize("condition_number", [1e2, 1e6])
def test_padim_fp32_factor_is_accurate_on_ill_conditioned_gaussians(condition_number):
    """The head's fp32 mean and factor against float64 distances (error grows like eps * sqrt(cond))."""
    from adtk.toolkit.methods.padim import PadimHead, PadimState

    rng = np.random.default_rng(6)
    dims, positions = 24, 3
    covs = []
    for _ in range(positions):
        basis, _ = np.linalg.qr(rng.normal(size=(dims, dims)))
        covs.append(basis @ np.diag(np.logspace(0, -np.log10(condition_number), dims)) @ basis.T)
    covs = np.stack(covs)
    means = rng.normal(size=(positions, dims)) * 3
    state = PadimState(channel_index=np.arange(dims), mean=means.astype(np.float32),
                       factor=whitening_factor(covs).astype(np.float32), grid=(1, positions))
    # test points drawn from the Gaussians themselves, so every direction contributes
    test = np.stack([means[p][:, None] + np.linalg.cholesky(covs[p]) @ rng.normal(size=(dims, 6))
                     for p in range(positions)])  # [P, d, 6]
    features = test.transpose(2, 1, 0)[:, :, None, :]  # [6, d, 1, P]
    with torch.no_grad():
        patch, _ = PadimHead(state)(torch.from_numpy(features.astype(np.float32)))
    expected = np.array([[np.sqrt(mahalanobis_sq(features[b, :, 0, p], means[p], covs[p])) for p in range(positions)]
                         for b in range(6)])
    relative_error = np.abs(patch.numpy()[:, 0] / expected - 1).max()
    print(f"cond {condition_number:g}: max relative error of the fp32 distance {relative_error:.1e}")
    assert relative_error < 1e-4


def test_padim_refuses_an_artefact_over_2_gb():
    method = create_method("padim", num_channels=3000)
    with pytest.raises(ConfigError, match="num_channels="):
        method.fit(FitInputs(np.zeros((2, 3000, 64, 64), dtype=np.float32), channels=(3000,)))


@pytest.mark.parametrize("num_images", [6, 30])  # K - 1 < d (residual term) and K - 1 >= d (full rank)
def test_paire_low_rank_form_is_the_exact_precision(num_images):
    rng = np.random.default_rng(7)
    dims, ridge = 16, 1e-6
    features = rng.normal(size=(num_images, 2, dims))
    mean, basis, variance = low_rank_gaussians(features, ridge)
    for p in range(2):
        cov = np.cov(features[:, p].T) + ridge * np.eye(dims)  # spec B3: unbiased + lambda I
        x = rng.normal(size=dims)
        r = x - mean[p]
        coefficients = basis[p].T @ r
        low_rank = (np.sum((r - basis[p] @ coefficients) ** 2) / ridge
                    + np.sum(coefficients ** 2 / (variance[p] + ridge)))
        np.testing.assert_allclose(low_rank, mahalanobis_sq(x, mean[p], cov), rtol=1e-6)


def test_paire_head_fp32_matches_float64_distances():
    rng = np.random.default_rng(8)
    method, train, test, state, patch, image = fitted("paire", rng, n_train=40, pool_kernel=2, pool_stride=2)
    assert state.basis.dtype == np.float32 and state.inv_variance.dtype == np.float32  # never fp16 (spec B9)
    clean = train[state.clean]
    for (i, j) in [(0, 0), (1, 2)]:
        cov = np.cov(clean[:, :, i, j].T) + 1e-6 * np.eye(16)
        for b in range(2):
            expected = np.sqrt(mahalanobis_sq(test[b, :, i, j], clean[:, :, i, j].mean(0), cov))
            np.testing.assert_allclose(patch[b, i, j], expected, rtol=1e-3)
    np.testing.assert_allclose(image, patch.reshape(len(patch), -1).max(1))
