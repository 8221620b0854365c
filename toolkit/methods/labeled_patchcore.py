"""Labeled PatchCore (seed 003; spec softcore_semlp_labeled_patchcore.md B.4): a good bank and a defect bank.

fit:   good bank M_0 = greedy coreset of the good images' patches (ratio); defect bank M_1 = the defective
       patches (>= 10% masked, B.2.4) of the labelled defect images, all of them by default (the code's
       ratio 1; `defect_coreset_ratio` subsamples). Good patches of defect images are dropped (B.9.4).
score: per patch and bank i: d_i = L2 distance to the nearest entry m_i*, and
       s_i = (1 - softmax(distances to m_i*'s b = 9 bank neighbours)[m_i*]) * d_i (PatchCore's weighting,
       applied to every patch here; where two rows tie for nearest within float32 noise the two rows' weights
       are blended, WeightedBankDistance). Patch score = s_0 / (s_0 + s_1): near 1 when the patch is far from
       good and close to a known defect. Image score = max over patches (B.4.5, corrected direction).
       paper_compat=True reproduces the released code's s_1 / (s_0 + s_1) (which measures goodness, B.9.6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.coreset import ApproximateGreedyCoreset
from adtk.toolkit.features import PatchEmbedding
from adtk.toolkit.methods.base import AnomalyMethod, FitInputs, HeadOutput, register_method
from adtk.toolkit.online_coreset import online_coreset_bank
from adtk.toolkit.search import bank_neighbours, patch_rows, squared_distances

RATIO_EPSILON = 1e-12  # s_0 = s_1 = 0 (a patch equal to an entry of both banks) must not give NaN
# Two bank rows whose squared distances to a patch differ by less than TIE_RTOL * (|q|^2 + |m*|^2) are treated as
# (partly) tied for nearest (WeightedBankDistance says why). float32 rounding of the squared distance and the
# torch / onnxruntime feature differences are ~1e-6 of that scale, so noise moves the blend by ~1% of the two
# rows' weight difference. Measured on magnetic-tile (the real-data parity test's build, 2026-12-03): 257 of 24,576
# bank lookups (12 test images x 1,024 patches x 2 banks) fell in the band; the patch scores moved by at most
# 5.8e-3 from the hard nearest row's, image / pixel AUROC on 494 test images 0.6163 / 0.6397 -> 0.6161 / 0.6397.
TIE_RTOL = 1e-4


@dataclass(frozen=True)
class LabeledPatchCoreState:
    good_bank: np.ndarray  # float32 [M0, D]
    good_neighbours: np.ndarray  # int64 [M0, b]: each row's b nearest good rows, itself first
    defect_bank: np.ndarray  # float32 [M1, D]
    defect_neighbours: np.ndarray  # int64 [M1, b]


class WeightedBankDistance(nn.Module):
    """PatchCore's re-weighted nearest distance s = (1 - softmax(support distances)[0]) * d, per patch.

    Why the nearest row is blended with the second one inside a tie band: the weight depends on WHICH row is
    nearest (its neighbour set), so s jumps where two rows are equally near. In float32 the squared distances
    |q|^2 - 2 q.m + |m|^2 carry rounding of ~1e-6 of |q|^2 + |m|^2, and the features themselves differ by ~1e-6
    between torch and onnxruntime, so for a patch whose two nearest rows are that close, torch and the artefact
    pick different rows and the patch score jumps by the difference of the two rows' weights. Measured on
    magnetic-tile (labeled_patchcore, 89 defect images, 7,074 defect rows): one patch of 12,288 had its two
    nearest defect rows 1e-5 apart at a distance of 24.3 (squared: 5e-4 apart, the size of the feature noise); the
    weights 0.990 / 0.987 differed, the patch score by 7.5e-4 and the smoothed map by 5.5e-4 of its maximum.
    So within a band of TIE_RTOL * (|q|^2 + |m*|^2) the second row's weight is mixed in, linearly from nothing
    at the band's edge to half at an exact tie: s is continuous, two rows at the same distance give the same s
    whichever is found first, and outside the band (almost every patch) s is exactly the spec's (B.4.3).
    """

    def __init__(self, bank: np.ndarray, neighbours: np.ndarray):
        super().__init__()
        rows = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
        self.register_buffer("bank", rows)
        self.register_buffer("sq_norms", (rows * rows).sum(1))
        self.register_buffer("neighbours", torch.from_numpy(neighbours.astype(np.int64)))
        self.reweight = neighbours.shape[1] > 1  # one neighbour: softmax over one is 1, so s would be 0

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        """[B, P, D] -> [B, P]."""
        sq_dists = squared_distances(queries, self.bank, self.sq_norms)  # [B, P, M]
        if not self.reweight:
            return sq_dists.min(dim=-1).values.sqrt()
        # the two nearest rows (reweight implies >= 2 rows); topk's order among equal values does not matter:
        # an exact tie gives both rows half
        two_sq, two_index = torch.topk(sq_dists, 2, dim=-1, largest=False, sorted=True)  # [B, P, 2]
        support = self.neighbours[two_index]  # [B, P, 2, b], each candidate's own row first
        support_dists = torch.gather(sq_dists, 2, support.flatten(2)).view(support.shape).sqrt()
        weights = 1.0 - torch.softmax(support_dists, dim=-1)[..., 0]  # [B, P, 2]: the weight if that row is m*
        tie_band = TIE_RTOL * ((queries * queries).sum(-1) + self.sq_norms[two_index[..., 0]])
        second_share = (1.0 - (two_sq[..., 1] - two_sq[..., 0]) / tie_band).clamp(0.0, 1.0)  # 1 at a tie
        weight = (weights[..., 0] + second_share * weights[..., 1]) / (1.0 + second_share)
        return weight * two_sq[..., 0].sqrt()


class LabeledPatchCoreHead(nn.Module):
    def __init__(self, state: LabeledPatchCoreState, paper_compat: bool):
        super().__init__()
        self.good = WeightedBankDistance(state.good_bank, state.good_neighbours)
        self.defect = WeightedBankDistance(state.defect_bank, state.defect_neighbours)
        self.paper_compat = bool(paper_compat)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        batch, _, height, width = features.shape
        queries = features.flatten(2).transpose(1, 2)
        good, defect = self.good(queries), self.defect(queries)
        numerator = defect if self.paper_compat else good
        patch_scores = numerator / (good + defect + RATIO_EPSILON)
        return HeadOutput(patch_scores.view(batch, height, width), patch_scores.max(dim=1).values)


@register_method("labeled_patchcore")
class LabeledPatchCore(AnomalyMethod):
    """Nearest of a good and a defect memory bank (spec B.4, seed 003)."""

    uses_labelled_defects = True

    def __init__(self, coreset_ratio: float = 0.1, defect_coreset_ratio: float = 1.0, num_neighbors: int = 9,
                 paper_compat: bool = False, upsample: str = "nearest", good_sampler: str = "greedy",
                 online_batch_images: int = 8, embed_dim: int | None = None, projection_dim: int = 128,
                 seed: int = 0):
        if upsample not in ("nearest", "bilinear"):
            raise ConfigError(f"labeled_patchcore: upsample must be 'nearest' (anomalib, spec B.2) or 'bilinear', "
                              f"got {upsample!r}")
        if good_sampler not in ("greedy", "online"):
            raise ConfigError(f"labeled_patchcore: good_sampler must be 'greedy' or 'online' (seed 003's "
                              f"Algorithm 2), got {good_sampler!r}")
        self.good_sampler, self.online_batch_images = good_sampler, max(1, int(online_batch_images))
        self.good_coreset = ApproximateGreedyCoreset(coreset_ratio, projection_dim=projection_dim, seed=seed)
        self.defect_coreset = ApproximateGreedyCoreset(defect_coreset_ratio, projection_dim=projection_dim, seed=seed)
        self.num_neighbors, self.seed = int(num_neighbors), int(seed)
        self.paper_compat, self.upsample, self.embed_dim = bool(paper_compat), upsample, embed_dim

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        return PatchEmbedding(channels, embed_dim=self.embed_dim, upsample=self.upsample)

    def fit(self, inputs: FitInputs) -> LabeledPatchCoreState:
        """inputs.features [N, D, h, w] of good images, inputs.defects: LabelledFeatures -> LabeledPatchCoreState."""
        defects = inputs.defects
        if defects is None or defects.num_defective_patches == 0:
            raise DataError("labeled_patchcore needs labelled defect patches for its defect bank (see "
                            "`adtk build --help`: DATA/defects/<type>/ with masks, or --defects-from-test)")
        return self.with_defect_bank(*self.good_bank(inputs.features, inputs.progress), defects)

    def good_bank(self, features: np.ndarray, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """features [N, D, h, w] of good images -> (good bank [M0, D], each row's b nearest good rows [M0, b]):
        PatchCore's coreset, or seed 003's online coreset over groups of `online_batch_images` images (B.5)."""
        if self.good_sampler == "online":
            step = self.online_batch_images
            bank = online_coreset_bank((features[i:i + step] for i in range(0, len(features), step)),
                                       self.good_coreset.ratio, self.seed, step, len(features), progress)
        else:
            bank = patch_rows(features, self.good_coreset.select(features, progress=progress))
        return bank, bank_neighbours(bank, self.num_neighbors)

    def with_defect_bank(self, good_bank: np.ndarray, good_neighbours: np.ndarray, defects) -> LabeledPatchCoreState:
        """The state for a fitted good bank and these labelled defects (the good bank can be reused)."""
        defect_patches = defects.defective_patches()
        defect_bank = np.ascontiguousarray(defect_patches[self.defect_coreset.select(defect_patches)])
        # PatchCore's N_b(m*) rule, capped at the bank's size (a tiny defect bank has fewer than b rows)
        capped = max(1, min(self.num_neighbors, len(defect_bank) - 1))
        return LabeledPatchCoreState(good_bank, good_neighbours, defect_bank, bank_neighbours(defect_bank, capped))

    def head(self, state: LabeledPatchCoreState) -> LabeledPatchCoreHead:
        return LabeledPatchCoreHead(state, self.paper_compat)

    def fit_report(self, state: LabeledPatchCoreState) -> dict:
        return {"good_bank_rows": len(state.good_bank), "defect_bank_rows": len(state.defect_bank),
                "dims": int(state.good_bank.shape[1]),
                "score": "s1/(s0+s1) (paper_compat, inverted)" if self.paper_compat else "s0/(s0+s1)"}
