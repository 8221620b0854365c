"""REB's keep-or-revert check (training/proxy_validation.py): held-out split, the synthetic defect set, and that
the better of two backbones on held-out synthetic defects is the one kept. Tiny nets on 32 px frames (fast)."""

from __future__ import annotations

import numpy as np
import torch

from adtk.toolkit.methods.base import FitInputs
from adtk.toolkit.methods.registry import create_method
from adtk.toolkit.preprocess import FramePreprocess
from adtk.toolkit.training.finetune import freeze_through
from adtk.toolkit.training.proxy_validation import (MAX_HELDOUT, MIN_HELDOUT, split_heldout, synthetic_defect_set,
                                                    validate_finetune)

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
    assert better.kept == "finetuned" and "keeping the fine-tuned" in better.summary()
    assert better.as_dict()["heldout_good_images"] == 8 and better.as_dict()["heldout_defect_images"] == 48


def test_freeze_through_stops_gradients_up_to_and_inside_the_named_stage_only():
    net = TinyBackbone()
    frozen = freeze_through(net, "stage1")
    assert frozen == [n for n, _ in net.named_parameters() if n.startswith("stage1.")]
    assert all(p.requires_grad for n, p in net.named_parameters() if n.startswith("stage2."))
