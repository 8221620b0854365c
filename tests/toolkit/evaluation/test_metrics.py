"""Tests of adtk.toolkit.evaluation.metrics against independent brute-force references."""

from bisect import bisect_right

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.evaluation.metrics import (
    au_pro,
    best_f1,
    evaluate_predictions,
    f1_at_threshold,
    image_auroc,
    pixel_auroc,
    pro_curve,
    roc_curve_points,
)

# --------------------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------------------


def pairwise_auroc(scores, labels):
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def brute_au_pro(maps, masks, fpr_limit):
    """Loop over every distinct score; label per image with 8-connectivity; MVTec-style trapezoid."""
    comps = []
    for mp, mk in zip(maps, masks):
        lab, k = ndimage.label(mk, structure=np.ones((3, 3)))
        comps += [mp[lab == c] for c in range(1, k + 1)]
    neg = maps[~masks]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        xs.append(float(np.mean(neg >= t)))
        ys.append(float(np.mean([np.mean(c >= t) for c in comps])))
    xs.append(1.0)
    ys.append(1.0)
    x, y = np.array(xs), np.array(ys)
    correction = 0.0
    if fpr_limit not in x:
        i = bisect_right(list(x), fpr_limit)
        y_int = y[i - 1] + (y[i] - y[i - 1]) * (fpr_limit - x[i - 1]) / (x[i] - x[i - 1])
        correction = 0.5 * (y_int + y[i - 1]) * (fpr_limit - x[i - 1])
    keep = x <= fpr_limit
    x, y = x[keep], y[keep]
    return (np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / fpr_limit


def blob_masks(rng, n, h, w, max_blobs=3):
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, max_blobs + 1)):  # some images stay good
            r, c = rng.integers(0, h - 3), rng.integers(0, w - 3)
            masks[i, r:r + rng.integers(1, 5), c:c + rng.integers(1, 5)] = True
    masks[0, 1, 1] = True  # at least one defect
    return masks


# --------------------------------------------------------------------------------------------------
# Image level
# --------------------------------------------------------------------------------------------------


def test_image_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=80).astype(float)  # many ties
    labels = rng.integers(0, 2, size=80)
    assert image_auroc(scores, labels) == pytest.approx(pairwise_auroc(scores, labels), abs=1e-12)


def test_image_auroc_single_class_raises():
    with pytest.raises(DataError, match="both good and defective"):
        image_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(DataError):
        image_auroc([0.1, np.nan], [0, 1])
    with pytest.raises(DataError):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(DataError):
        image_auroc([0.1, 0.2], [0, 2])


def test_roc_curve_points():
    fpr, tpr, thr = roc_curve_points([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1 and len(thr) == len(fpr)


def test_f1_at_threshold_hand_case():
    r = f1_at_threshold([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    assert f1_at_threshold([1, 0], [0, 0]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_best_f1_matches_threshold_sweep():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(60), 1)
    labels = (rng.random(60) < 0.4).astype(int)
    best = max(f1_at_threshold(labels, scores >= t)["f1"] for t in np.unique(scores))
    r = best_f1(scores, labels)
    assert r["f1"] == pytest.approx(best, abs=1e-12)
    assert f1_at_threshold(labels, scores >= r["threshold"])["f1"] == pytest.approx(best, abs=1e-12)
    with pytest.raises(DataError):
        best_f1([0.1, 0.2], [0, 0])


# --------------------------------------------------------------------------------------------------
# Pixel AUROC
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_auroc_matches_sklearn(dtype):
    rng = np.random.default_rng(2)
    masks = blob_masks(rng, 6, 24, 24)
    maps = (rng.random(masks.shape) + 0.7 * masks).astype(dtype)
    maps[:, ::3] = np.round(maps[:, ::3], 1)  # ties, also between normal and defective pixels
    ref = roc_auc_score(masks.ravel(), maps.ravel())
    # Exact algorithm: only float rounding separates it from sklearn.
    assert pixel_auroc(maps, masks) == pytest.approx(ref, abs=1e-12)


def test_pixel_auroc_perfect_and_inverted():
    rng = np.random.default_rng(3)
    masks = blob_masks(rng, 4, 16, 16)
    maps = masks + 0.5 * rng.random(masks.shape)
    assert pixel_auroc(maps, masks) == 1.0
    assert pixel_auroc(-maps, masks) == 0.0


def test_pixel_auroc_bad_input():
    with pytest.raises(DataError):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool))
    with pytest.raises(DataError):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool))
    with pytest.raises(DataError):
        pixel_auroc(np.zeros((2, 4, 4)), np.full((2, 4, 4), 255, np.uint8))


# --------------------------------------------------------------------------------------------------
# AU-PRO
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_au_pro_matches_brute_force(seed, fpr_limit):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 5, 14, 14)
    maps = rng.random(masks.shape) + 0.4 * masks
    if seed == 1:
        maps = np.round(maps, 1)  # heavy ties, incl. normal/defective ties (diagonal curve segments)
    # Both compute the same exact curve (every distinct score is a threshold), so the only difference
    # is float summation order: far below 1e-9. (A threshold-grid implementation would need ~1e-3.)
    assert au_pro(maps, masks, fpr_limit) == pytest.approx(brute_au_pro(maps, masks, fpr_limit), abs=1e-9)


def test_pro_curve_points_lie_on_the_brute_force_curve():
    rng = np.random.default_rng(3)
    masks = blob_masks(rng, 5, 14, 14)
    maps = rng.random(masks.shape) + 0.4 * masks
    fpr, pro = pro_curve(maps, masks, fpr_limit=0.3, num_points=50)
    assert fpr[0] == 0.0 and pro[0] == 0.0 and fpr.max() <= 0.3 and fpr.max() > 0.25
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    comps = []
    for mp, mk in zip(maps, masks):
        lab, k = ndimage.label(mk, structure=np.ones((3, 3)))
        comps += [mp[lab == c] for c in range(1, k + 1)]
    neg = maps[~masks]
    for x, y in zip(fpr[1:], pro[1:]):  # each point is (FPR(>= t), PRO(>= t)) for one normal score t
        t = np.sort(neg)[::-1][int(round(x * len(neg))) - 1]
        assert np.mean(neg >= t) == pytest.approx(x)
        assert np.mean([np.mean(c >= t) for c in comps]) == pytest.approx(y)


def test_au_pro_perfect_and_constant():
    rng = np.random.default_rng(4)
    masks = blob_masks(rng, 4, 20, 20)
    perfect = masks + (~masks) * 1e-3 * rng.random(masks.shape)
    assert au_pro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    # A constant map: the curve jumps from (0, 0) straight to (1, 1); area to 0.3 is 0.3^2/2 -> 0.15.
    assert au_pro(np.zeros(masks.shape), masks) == pytest.approx(0.15, abs=1e-12)


def test_au_pro_weighs_components_equally():
    rng = np.random.default_rng(5)
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 2:22, 2:22] = True  # big component, 400 px: found
    masks[1, 30:33, 30:33] = True  # small component, 9 px: missed
    maps = 0.5 * rng.random(masks.shape)
    maps[0][masks[0]] = 1.0
    maps[1][masks[1]] = -1.0
    assert au_pro(maps, masks) == pytest.approx(0.5, abs=1e-12)
    assert pixel_auroc(maps, masks) > 0.97  # pixel-weighted metrics barely see the missed defect


def test_au_pro_uses_8_connectivity():
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 2, 2] = True  # touches the 3-pixel block only diagonally
    masks[0, 3, 3:6] = True
    maps = np.linspace(0.0, 0.5, 100).reshape(1, 10, 10)
    maps[0, 2, 2] = 1.0
    maps[0, 3, 3:6] = -1.0
    # One 4-pixel component with 1/4 found (4-connectivity would give two components: (1 + 0) / 2).
    assert au_pro(maps, masks) == pytest.approx(0.25, abs=1e-12)


def test_au_pro_errors():
    maps = np.random.default_rng(6).random((2, 8, 8))
    with pytest.raises(DataError):
        au_pro(maps, np.zeros((2, 8, 8), bool))
    with pytest.raises(DataError):
        au_pro(maps, np.ones((2, 8, 8), bool))
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 1, 1] = True
    for bad in (0.0, 1.5, "x"):
        with pytest.raises(ConfigError):
            au_pro(maps, masks, fpr_limit=bad)


# --------------------------------------------------------------------------------------------------
# evaluate_predictions
# --------------------------------------------------------------------------------------------------


def test_evaluate_predictions_tiny_case():
    rng = np.random.default_rng(7)
    masks = np.zeros((4, 12, 12), bool)
    masks[2, 3:6, 3:6] = True
    masks[3, 7:9, 1:4] = True
    maps = rng.random(masks.shape) + 0.6 * masks
    scores = maps.reshape(4, -1).max(axis=1)
    labels = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    r = evaluate_predictions(scores, labels, maps, masks, pred)
    assert set(r) == {"image_auroc", "pixel_auroc", "au_pro", "f1", "precision", "recall",
                      "num_images", "num_defective"}
    assert r["num_images"] == 4 and r["num_defective"] == 2
    assert r["image_auroc"] == pytest.approx(pairwise_auroc(scores, labels))
    assert r["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert r["au_pro"] == pytest.approx(brute_au_pro(maps, masks, 0.3), abs=1e-9)
    assert r["au_pro"] == pytest.approx(au_pro(maps, masks), abs=1e-12)
    assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))

    r = evaluate_predictions(scores, labels)
    assert r["pixel_auroc"] is None and r["au_pro"] is None and r["f1"] is None
    r = evaluate_predictions(scores, labels, maps, np.zeros_like(masks))
    assert r["pixel_auroc"] is None and r["au_pro"] is None
    r = evaluate_predictions(scores[:2], labels[:2])
    assert r["image_auroc"] is None and r["num_defective"] == 0
    with pytest.raises(DataError):
        evaluate_predictions(scores[:3], labels[:3], maps, masks)
