"""SROC and PaIRE refinement: the spec string, which images are dropped, and PaIRE's trimming."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adtk.toolkit.methods.base import FitInputs
from adtk.runtime.errors import ConfigError
from adtk.toolkit.methods.registry import UnknownMethodError, create_method
from adtk.toolkit.refinement import RefineSpec, parse_refine, refine
from adtk.toolkit.trimming import PaireTrimming, window_threshold


def test_parse_refine_forms_and_errors():
    assert parse_refine("sroc:0.2") == RefineSpec("sroc", 0.2, None)
    assert parse_refine("sroc:0.1:Mahalanobis") == RefineSpec("sroc", 0.1, "mahalanobis")
    assert parse_refine("paire") == RefineSpec("paire")
    assert str(parse_refine("sroc:0.2:mahalanobis")) == "sroc:0.2:mahalanobis"
    for bad in ("sroc", "sroc:20", "sroc:x", "sroc:0.1:knn:extra", "trim:0.1", ""):
        with pytest.raises(ConfigError):
            parse_refine(bad)
    with pytest.raises(UnknownMethodError, match="did you mean 'mahalanobis'"):
        parse_refine("sroc:0.2:mahalanobiss")


def clusters_with_outliers(rng, n_good=40, n_bad=10, dims=8):
    good = rng.normal(size=(n_good, dims, 2, 2))
    bad = rng.normal(size=(n_bad, dims, 2, 2)) + rng.choice([-1, 1], size=(n_bad, dims, 1, 1)) * 4.0
    return np.concatenate([good, bad]).astype(np.float32), np.arange(n_good, n_good + n_bad)


def test_sroc_drops_the_round_r_n_highest_in_sample_scores():
    rng = np.random.default_rng(0)
    features, _ = clusters_with_outliers(rng)
    method = create_method("knn")
    result = refine(RefineSpec("sroc", 0.15), method, features, channels=(8,))
    # independent in-sample k-NN scores (self included, spec P-A1): mean of the 5 smallest squared distances
    pooled = features.astype(np.float64).mean(axis=(2, 3))
    sq = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
    reference = np.sort(sq, axis=1)[:, :5].mean(1)
    np.testing.assert_allclose(result.scores, reference, rtol=1e-4, atol=1e-5)
    assert len(result.dropped) == round(0.15 * 50)
    np.testing.assert_array_equal(result.dropped, np.sort(np.argsort(-reference)[:8]))
    assert sorted(np.concatenate([result.kept, result.dropped]).tolist()) == list(range(50))


@pytest.mark.parametrize("detector", ["knn", "mahalanobis", "padim"])
def test_sroc_at_the_true_rate_finds_obvious_outliers(detector):
    rng = np.random.default_rng(1)
    features, outliers = clusters_with_outliers(rng)
    method = create_method(detector, **({"num_channels": 8} if detector == "padim" else {}))
    result = refine(RefineSpec("sroc", 0.2), method, features, channels=(8,))
    assert set(result.dropped.tolist()) == set(outliers.tolist())


def test_window_threshold_straight_curve_trims_nothing_and_knee_is_found():
    straight = np.linspace(0, 1, 100)
    assert math.isinf(window_threshold(straight, first_round=True))
    knee = np.concatenate([np.linspace(0, 0.3, 80), np.linspace(0.35, 1.0, 20)])  # slope jumps at 80
    threshold = window_threshold(knee, first_round=True)
    assert 0.3 <= threshold <= 0.5
    # the knee is where the 80 low distances end: everything below the threshold is in the flat part
    assert (knee < threshold).sum() >= 78


def test_paire_trimming_removes_injected_outliers():
    """15 of 75 images far off at every position. The knee rule needs a run of U windows past the knee
    and sometimes finds none (then nothing is trimmed, by the spec's B4.1 gap-fill); whenever it trims,
    no outlier may survive and most good images must."""
    trimmed = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        good = rng.normal(size=(60, 4, 3))
        bad = rng.normal(size=(15, 4, 3)) + rng.choice([-1, 1], size=(15, 4, 3)) * 5.0
        result = PaireTrimming().select(np.concatenate([good, bad]))
        clean = set(result.clean.tolist())
        assert result.rounds[0]["clean"] == len(clean) or len(result.rounds) > 1
        if len(clean) < 75:
            trimmed += 1
            assert not clean & set(range(60, 75))
            assert len(clean) >= 45
    assert trimmed >= 3


def test_paire_refiner_keeps_the_clean_set_of_the_paire_method():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(30, 5, 2, 2)).astype(np.float32)
    method = create_method("paire", pool_kernel=1, pool_stride=1)
    result = refine(RefineSpec("paire"), method, features, channels=(5,))
    state = create_method("paire", pool_kernel=1, pool_stride=1).fit(FitInputs(features))
    np.testing.assert_array_equal(result.kept, state.clean)
    assert "rounds" in result.details
