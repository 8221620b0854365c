"""`--refine auto` (refinement/contamination.py): cross-fitted scores never come from a model that saw the
image, and the contamination count follows the data (none on clean data, the outliers on polluted data)."""

from __future__ import annotations

import numpy as np
import pytest

from adtk.toolkit.methods.registry import create_method
from adtk.toolkit.refinement import RefineSpec, parse_refine, refine
from adtk.toolkit.refinement.contamination import (MAX_FRACTION, SAFETY_FACTOR, crossfit_scores,
                                                   estimate_contamination, tail_excess)

from .test_refinement import clusters_with_outliers


def test_parse_auto_forms():
    assert parse_refine("auto") == RefineSpec("auto")
    assert parse_refine("auto:PaDiM") == RefineSpec("auto", detector="padim")
    assert str(parse_refine("auto:padim")) == "auto:padim"
    with pytest.raises(Exception):
        parse_refine("auto:padim:0.1")


def test_crossfit_never_scores_an_image_with_a_model_fitted_on_it():
    features = np.arange(20, dtype=np.float64)[:, None]
    seen = []

    def fit_and_score(fit, held):
        overlap = set(fit[:, 0].tolist()) & set(held[:, 0].tolist())
        seen.append(len(overlap))
        return held[:, 0] * 2

    scores = crossfit_scores(features, fit_and_score, folds=3, seed=0)
    assert seen == [0, 0, 0] and np.array_equal(scores, features[:, 0] * 2)


def test_contamination_estimate_is_zero_on_clean_scores_and_follows_the_outliers():
    rng = np.random.default_rng(0)
    for _ in range(3):  # clean, right-skewed or log-symmetric: noise alone gives no estimate
        assert len(estimate_contamination(rng.gamma(20, 1.0, size=500)).dropped) == 0
        assert len(estimate_contamination(rng.lognormal(0, 0.3, size=500)).dropped) == 0
    clean = rng.gamma(20, 1.0, size=500)
    polluted = np.concatenate([clean, rng.gamma(20, 1.0, size=50) * 6])
    estimate = estimate_contamination(polluted)
    assert 0.05 <= estimate.fraction <= 50 / 550 + 0.02
    # twice the estimate is dropped, the highest scores first: every outlier, and some of the good tail
    assert len(estimate.dropped) == round(SAFETY_FACTOR * estimate.fraction * 550)
    assert set(range(500, 550)) <= set(estimate.dropped.tolist())
    many = np.concatenate([clean, np.full(400, 1e3)])  # more outliers than the cap allows
    capped = estimate_contamination(many)
    assert capped.capped and len(capped.dropped) == int(MAX_FRACTION * 900) and capped.dropped.min() >= 500
    assert len(estimate_contamination(np.ones(10)).dropped) == 0  # no spread: nothing is an outlier


def test_auto_refinement_drops_the_outliers_without_being_told_how_many():
    rng = np.random.default_rng(1)
    features, outliers = clusters_with_outliers(rng, n_good=60, n_bad=6)
    method = create_method("knn")
    method.embedding((8,))
    result = refine(RefineSpec("auto"), method, features)
    assert set(outliers.tolist()) <= set(result.dropped.tolist()) and len(result.dropped) <= 2 * len(outliers) + 2
    assert result.details["folds"] == 2 and result.details["estimated_contamination"] > 0


def test_gaussian_refiners_score_in_sample_and_banks_cross_fitted():
    """PaDiM's in-sample scores are its honest ones (a Gaussian: in-sample ~ leave-one-out), so auto:padim scores it
    with one fit on every image, exactly as sroc does; k-NN would find each image itself, so it is cross-fitted."""
    rng = np.random.default_rng(2)
    features, outliers = clusters_with_outliers(rng, n_good=60, n_bad=6)
    padim = create_method("padim", num_channels=8)
    auto = refine(RefineSpec("auto", detector="padim"), padim, features, channels=(8,))  # padim's scores alone
    sroc = refine(RefineSpec("sroc", 0.1), create_method("padim", num_channels=8), features, channels=(8,))
    assert auto.details["scoring"] == "in-sample" and "folds" not in auto.details
    np.testing.assert_array_equal(auto.scores, sroc.scores)
    assert set(outliers.tolist()) <= set(auto.dropped.tolist())
    assert len(auto.dropped) == round(SAFETY_FACTOR * tail_excess(auto.scores) * 66)
    knn = create_method("knn")
    knn.embedding((8,))
    assert refine(RefineSpec("auto"), knn, features).details["scoring"] == "cross-fitted"


def test_auto_refines_with_a_gaussian_whatever_the_final_method():
    """`--refine auto` without a detector: a non-Gaussian build (PatchCore) is refined by AUTO_REFINER (PaDiM,
    in-sample), a Gaussian build by itself with its own parameters; a named detector or sroc keep their rules."""
    from adtk.toolkit.refinement.refine import AUTO_REFINER, refiner_for

    patchcore = create_method("patchcore", coreset_ratio=0.05)
    chosen = refiner_for(RefineSpec("auto"), patchcore)
    assert chosen.name == AUTO_REFINER == "padim" and chosen.refines_in_sample
    padim = create_method("padim", num_channels=8)
    assert refiner_for(RefineSpec("auto"), padim).params() == padim.params()
    assert refiner_for(RefineSpec("auto", detector="knn"), patchcore).name == "knn"
    assert refiner_for(RefineSpec("sroc", 0.1), patchcore).params() == patchcore.params()


def local_outlier_set(rng, n_good=60, n_bad=6, dims=6, grid=4):
    """Good images: each grid position's patches on one of two tight clusters (a bimodal texture, one Gaussian
    per position spans both, so the gap between them is 'normal' to it). Defective images: one patch placed in
    the gap, the rest good. -> features [N, dims, grid, grid] float32, indices of the defective images."""
    centres = rng.normal(size=(2, dims, grid, grid)) * 3.0
    pick = rng.integers(0, 2, size=(n_good + n_bad, 1, grid, grid))
    features = np.where(pick == 0, centres[0], centres[1]) + 0.05 * rng.normal(size=(n_good + n_bad, dims, grid, grid))
    bad = np.arange(n_good, n_good + n_bad)
    for i in bad:
        y, x = rng.integers(0, grid, size=2)
        features[i, :, y, x] = (centres[0, :, y, x] + centres[1, :, y, x]) / 2  # between the modes: no neighbours
    return features.astype(np.float32), bad


def test_lof_image_scores_rank_patch_outliers_first_and_chunking_changes_nothing(monkeypatch):
    from adtk.toolkit.methods.softcore import lof_scores
    from adtk.toolkit.refinement import rank_sum
    from adtk.toolkit.refinement.rank_sum import RankSumRefiner

    features, bad = local_outlier_set(np.random.default_rng(3))
    refiner = RankSumRefiner(top_patch_fraction=1 / 16)  # top 1 of 16 patches
    scores = refiner.lof_image_scores(features)
    assert set(np.argsort(-scores)[:len(bad)].tolist()) == set(bad.tolist())
    # why LOF: one Gaussian per position spans both modes, so a patch between them is close to its mean
    padim = create_method("padim", num_channels=6)
    gaussian = refine(RefineSpec("sroc", 0.1), padim, features, channels=(6,)).scores
    assert not set(np.argsort(-gaussian)[:len(bad)].tolist()) & set(bad.tolist())
    # positions fitted a few at a time (bounded memory) give every position's LOF of one all-at-once fit
    monkeypatch.setattr(rank_sum, "POSITION_CHUNK", 3)
    n, d, h, w = features.shape
    whole = lof_scores(features.reshape(n, d, h * w).transpose(2, 0, 1).astype(np.float64), 6).T  # [N, P]
    np.testing.assert_allclose(refiner.lof_image_scores(features), whole.max(axis=1))


def test_rank_sum_puts_first_what_both_scorers_rank_high():
    from adtk.toolkit.refinement.rank_sum import rank_sum

    gaussian = np.array([0.0, 5.0, 9.0, 1.0, 2.0])  # image 2 first, image 1 second
    lof = np.array([9.0, 5.0, 8.0, 1.0, 2.0])  # image 0 first, image 2 second
    combined = rank_sum(gaussian, lof)
    assert np.argmax(combined) == 2 and combined.max() == 0.9 and combined.min() > 0
    assert np.array_equal(np.argsort(rank_sum(gaussian)), np.argsort(gaussian))


def test_plain_auto_drops_the_gaussians_count_from_the_rank_sum_and_records_both_scorers():
    """`--refine auto` (no detector) with a Gaussian: the injected outliers are first in the rank sum, the count
    dropped is the Gaussian's own estimate (auto:padim drops as many), and the manifest's refinement record
    names both scorers."""
    features, outliers = clusters_with_outliers(np.random.default_rng(5), n_good=60, n_bad=6)
    plain = refine(RefineSpec("auto"), create_method("padim", num_channels=8), features, channels=(8,))
    single = refine(RefineSpec("auto", detector="padim"), create_method("padim", num_channels=8), features,
                    channels=(8,))
    assert set(np.argsort(-plain.scores)[:len(outliers)].tolist()) == set(outliers.tolist())
    assert set(outliers.tolist()) <= set(plain.dropped.tolist())
    assert len(plain.dropped) == len(single.dropped) == round(SAFETY_FACTOR * tail_excess(single.scores) * 66)
    assert plain.details["combination"] == "rank-sum" and plain.details["count_from"] == "padim"
    assert plain.details["scorers"] == ["padim in-sample", "per-position LOF"]
    assert plain.details["estimated_contamination"] == single.details["estimated_contamination"]
    assert "combination" not in single.details
