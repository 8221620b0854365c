"""REB's keep-or-revert check (training/proxy_validation.py): held-out split, the synthetic defect set, and that
the better of two backbones on held-out synthetic defects is the one kept. Tiny nets on 32 px frames (fast)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from adtk.toolkit.methods.base import FitInputs
from adtk.toolkit.methods.registry import create_method
from adtk.toolkit.preprocess import FramePreprocess
from adtk.toolkit.training.finetune import freeze_through
from adtk.toolkit.training.proxy_validation import (BOOTSTRAP_RESAMPLES, MAX_HELDOUT, MIN_HELDOUT, keep_or_revert,
                                                    paired_bootstrap_auroc_gain, split_heldout,
                                                    synthetic_defect_set, validate_finetune)

from .test_finetune import TinyBackbone


def test_heldout_split_is_disjoint_bounded_and_seeded():
    tuned, heldout = split_heldout(100, seed=3)
    assert len(heldout) == 15 and not set(tuned) & set(heldout) and len(tuned) + len(heldout) == 100
    assert np.array_equal(heldout, split_heldout(100, seed=3)[1])
    assert not np.array_equal(heldout, split_heldout(100, seed=4)[1])
    assert len(split_heldout(1000, 0)[1]) == MAX_HELDOUT and len(split_heldout(10, 0)[1]) == MIN_HELDOUT
    assert len(split_heldout(2 * MIN_HELDOUT - 1, 0)[1]) == 0  # too few to hold any out


def test_synthetic_set_has_each_frame_once_good_and_six_times_defective():
    frames = np.random.default_rng(0).integers(90, 110, size=(3, 32, 32, 3), dtype=np.uint8)
    defects = synthetic_defect_set(frames, seed=0)
    assert defects.images.shape == (21, 32, 32, 3) and defects.labels.sum() == 18
    assert np.array_equal(defects.images[0], frames[0]) and not defects.masks[defects.labels == 0].any()
    assert all(m.any() for m in defects.masks[defects.labels == 1])
    assert np.array_equal(defects.groups, np.repeat(np.arange(3), 7))  # each frame's 7 images form one group


def _grouped_scores(rng, groups: int, separation: float):
    """7 images per group (1 good, 6 defective); defective scores shifted up by `separation`."""
    labels = np.tile([0, 1, 1, 1, 1, 1, 1], groups)
    return rng.normal(size=labels.size) + separation * labels, labels, np.repeat(np.arange(groups), 7)


def test_paired_bootstrap_gain_is_exact_per_resample():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    before, labels, groups = _grouped_scores(rng, 6, 0.5)
    after = before + rng.normal(scale=0.5, size=before.size)
    gains = paired_bootstrap_auroc_gain(before, after, labels, groups, resamples=5, seed=3)
    counts = np.random.default_rng(3).multinomial(6, np.full(6, 1 / 6), size=5)  # the function's own draws
    for gain, count in zip(gains, counts):
        pick = np.concatenate([np.flatnonzero(groups == g).repeat(c) for g, c in enumerate(count) if c])
        want = roc_auc_score(labels[pick], after[pick]) - roc_auc_score(labels[pick], before[pick])
        assert gain == pytest.approx(want)


def test_the_rule_reverts_without_a_clear_image_gain_or_with_a_pixel_loss():
    rng = np.random.default_rng(1)
    before, labels, groups = _grouped_scores(rng, 16, 1.0)
    same = paired_bootstrap_auroc_gain(before, before.copy(), labels, groups)
    assert len(same) == BOOTSTRAP_RESAMPLES and not same.any()
    point = {"image_auroc": 0.9, "pixel_auroc": 0.8}
    assert keep_or_revert(point, point, same).kept == "imagenet"  # equal: no gain
    noisy = before + rng.normal(scale=0.3, size=before.size)  # a different backbone, no better on average
    decision = keep_or_revert(point, {"image_auroc": 0.905, "pixel_auroc": 0.81},
                              paired_bootstrap_auroc_gain(before, noisy, labels, groups))
    assert decision.kept == "imagenet" and "not clear of the validation noise" in decision.reason
    clear = paired_bootstrap_auroc_gain(before, before + 3.0 * labels, labels, groups)  # separates every pair
    assert np.quantile(clear, 0.05) > 0
    assert keep_or_revert(point, {"image_auroc": 0.99, "pixel_auroc": 0.8}, clear).kept == "finetuned"
    worse_pixels = keep_or_revert(point, {"image_auroc": 0.99, "pixel_auroc": 0.79}, clear)
    assert worse_pixels.kept == "imagenet" and "pixel AUROC is worse" in worse_pixels.reason


class Blind(torch.nn.Module):
    """Stage maps that do not depend on the image: a backbone that cannot see defects."""

    def __init__(self, source: TinyBackbone):
        super().__init__()
        self.source = source

    def forward(self, x):
        return [torch.ones_like(m) for m in self.source(x)]


def test_the_backbone_that_detects_the_held_out_defects_better_is_kept():
    rng = np.random.default_rng(0)
    frames = np.clip(rng.normal(128, 4, size=(24, 32, 32, 3)), 0, 255).astype(np.uint8)  # plain texture
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        seeing = TinyBackbone().eval()
    blind = Blind(seeing).eval()
    method = create_method("ldknn", coreset_ratio=0.5)
    embedding = method.embedding((8, 16)).eval()
    normalise = FramePreprocess(32, (0.5,) * 3, (0.5,) * 3)
    fit_head = lambda features: method.head(method.fit(FitInputs(features, (8, 16))))  # noqa: E731
    worse = validate_finetune(seeing, blind, embedding, normalise, fit_head, frames[:16], frames[16:], seed=0)
    assert worse.kept == "imagenet" and worse.finetuned["image_auroc"] <= 0.5 < worse.imagenet["image_auroc"]
    better = validate_finetune(blind, seeing, embedding, normalise, fit_head, frames[:16], frames[16:], seed=0)
    assert better.kept == "finetuned" and "shipping the fine-tuned" in better.summary()
    assert better.as_dict()["heldout_good_images"] == 8 and better.as_dict()["heldout_defect_images"] == 48
    assert better.as_dict()["image_gain_lower_bound"] > 0 and better.as_dict()["reason"] in better.summary()
    # a fine-tune that barely moved the weights: no clear gain, so the starting weights ship
    nudged = copy.deepcopy(seeing)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for parameter in nudged.parameters():
            parameter.add_(1e-4 * torch.randn_like(parameter))
    same = validate_finetune(seeing, nudged, embedding, normalise, fit_head, frames[:16], frames[16:], seed=0)
    assert same.kept == "imagenet" and "shipping the starting (ImageNet) weights" in same.summary()


def test_freeze_through_stops_gradients_up_to_and_inside_the_named_stage_only():
    net = TinyBackbone()
    frozen = freeze_through(net, "stage1")
    assert frozen == [n for n, _ in net.named_parameters() if n.startswith("stage1.")]
    assert all(p.requires_grad for n, p in net.named_parameters() if n.startswith("stage2."))
