"""SEMLP, the spatial-embedding MLP (seed 003; spec softcore_semlp_labeled_patchcore.md B.3): a per-patch
classifier on frozen patch embeddings, trained on good patches and labelled defective patches.

embedding: anomalib's PatchCore embedding (3x3 average pooling, nearest upsampling of the deeper stage,
           concatenation; B.2). The paper's 1536 inputs are WRN-50-2's layer2 + layer3 channels (512 + 1024);
           here D = the sum of the backbone's stage channels, e.g. 40 + 112 = 152 for tf_efficientnet_lite0
           (stride 8 and 16), so the MLP is D -> hidden (32) -> LeakyReLU(0.01) -> 1 with D*32 + 32 + 32 + 1
           parameters (49,217 at D = 1536; 4,929 at D = 152). Nothing is projected: the dims follow the backbone.
fit:       negatives = every patch of the good images; positives = patches >= 10% masked in the labelled
           defect images; other patches of defect images are dropped (B.2.4, B.9.4). BCE-with-logits with
           pos_weight = #neg / #pos (B.9.3: without it the MLP collapses to "always good"), Adam lr 1e-4,
           batch 8, 1 epoch, shuffled, seeded (the code's config).
score:     per-patch logit; image score = max over patches. The paper takes max of sigmoid(logit); the
           logit ranks identically, and does not saturate to 1.0 in fp32 (ties would corrupt AUROC);
           score="probability" gives the sigmoid. The artefact holds the backbone and the MLP, no bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.features import PatchEmbedding
from adtk.toolkit.methods.base import AnomalyMethod, FitInputs, HeadOutput, register_method

LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class SEMLPState:
    hidden_weight: np.ndarray  # float32 [H, D]
    hidden_bias: np.ndarray  # float32 [H]
    out_weight: np.ndarray  # float32 [1, H]
    out_bias: np.ndarray  # float32 [1]


def make_mlp(dims: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dims, hidden), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(hidden, 1))


class SEMLPHead(nn.Module):
    """patch features [B, D, h, w] -> the MLP as two 1x1 convolutions -> per-patch logits (or sigmoids)."""

    def __init__(self, state: SEMLPState, probability: bool):
        super().__init__()
        for name in ("hidden_weight", "hidden_bias", "out_weight", "out_bias"):
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(getattr(state, name), np.float32)))
        self.probability = bool(probability)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        hidden = F.conv2d(features, self.hidden_weight[:, :, None, None], self.hidden_bias)
        logits = F.conv2d(F.leaky_relu(hidden, LEAKY_SLOPE), self.out_weight[:, :, None, None], self.out_bias)
        patch_scores = logits[:, 0]
        if self.probability:
            patch_scores = torch.sigmoid(patch_scores)
        return HeadOutput(patch_scores, patch_scores.flatten(1).max(dim=1).values)


@register_method("semlp")
class SEMLP(AnomalyMethod):
    """Per-patch MLP classifier on frozen embeddings (spec B.3, seed 003)."""

    uses_labelled_defects = True

    def __init__(self, hidden: int = 32, learning_rate: float = 1e-4, batch_size: int = 8, epochs: int = 1,
                 score: str = "logit", upsample: str = "nearest", seed: int = 42):
        if score not in ("logit", "probability"):
            raise ConfigError(f"semlp: score must be 'logit' or 'probability', got {score!r}")
        if hidden < 1 or batch_size < 1 or epochs < 1 or learning_rate <= 0:
            raise ConfigError("semlp: hidden, batch_size and epochs must be >= 1 and learning_rate > 0")
        if upsample not in ("nearest", "bilinear"):
            raise ConfigError(f"semlp: upsample must be 'nearest' (anomalib, spec B.2) or 'bilinear', got {upsample!r}")
        self.hidden, self.learning_rate, self.batch_size, self.epochs = int(hidden), float(learning_rate), \
            int(batch_size), int(epochs)
        self.score, self.upsample, self.seed = score, upsample, int(seed)

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        return PatchEmbedding(channels, upsample=self.upsample)

    @staticmethod
    def training_patches(features: np.ndarray, defects) -> tuple[np.ndarray, np.ndarray]:
        """-> (patches [P, D] float32, labels [P] float32): all good patches, then the defective ones."""
        good = features.transpose(0, 2, 3, 1).reshape(-1, features.shape[1])
        positives = defects.defective_patches()
        rows = np.concatenate([good, positives]).astype(np.float32, copy=False)
        labels = np.concatenate([np.zeros(len(good), np.float32), np.ones(len(positives), np.float32)])
        return rows, labels

    def fit(self, inputs: FitInputs) -> SEMLPState:
        """inputs.features [N, D, h, w] of good images, inputs.defects: LabelledFeatures -> SEMLPState."""
        features, defects, progress = inputs.features, inputs.defects, inputs.progress
        if defects is None or defects.num_defective_patches == 0:
            raise DataError("semlp learns from labelled defects and found no defective patch (see `adtk build "
                            "--help`: DATA/defects/<type>/ with masks, or --defects-from-test)")
        rows, labels = self.training_patches(features, defects)
        num_pos = float(labels.sum())
        pos_weight = torch.tensor([(len(labels) - num_pos) / num_pos])  # B.9.3
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)  # nn.Linear's init draws from the global generator
        mlp = make_mlp(rows.shape[1], self.hidden)
        optimiser = torch.optim.Adam(mlp.parameters(), lr=self.learning_rate)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        rows_t, labels_t = torch.from_numpy(rows), torch.from_numpy(labels)
        steps_per_epoch = -(-len(rows) // self.batch_size)
        total, running = steps_per_epoch * self.epochs, 0.0
        with torch.enable_grad():
            for epoch in range(self.epochs):
                order = torch.randperm(len(rows), generator=generator)
                for step in range(steps_per_epoch):
                    batch = order[step * self.batch_size:(step + 1) * self.batch_size]
                    loss = loss_fn(mlp(rows_t[batch])[:, 0], labels_t[batch])
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    running = 0.99 * running + 0.01 * float(loss.detach())
                    done = epoch * steps_per_epoch + step + 1
                    if progress is not None and (done % 2000 == 0 or done == total):
                        progress(done, total, f"loss {running:.3f}")
        self.last_fit = {"negative_patches": int(len(labels) - num_pos), "positive_patches": int(num_pos),
                         "pos_weight": float(pos_weight), "steps": total}
        hidden_layer, out_layer = mlp[0], mlp[2]
        return SEMLPState(*(t.detach().numpy().copy() for t in (hidden_layer.weight, hidden_layer.bias,
                                                                 out_layer.weight, out_layer.bias)))

    def head(self, state: SEMLPState) -> SEMLPHead:
        return SEMLPHead(state, probability=self.score == "probability")

    def fit_report(self, state: SEMLPState) -> dict:
        hidden, dims = state.hidden_weight.shape
        report = {"mlp": f"{dims}->{hidden}->1", "parameters": int(dims * hidden + 2 * hidden + 1)}
        return {**report, **self.last_fit}
