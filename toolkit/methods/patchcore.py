"""PatchCore (Roth et al. 2022; seed 000 baseline): nearest-neighbour distance to a coreset memory bank
of locally aware patch features.

fit:   all training patches [N*h*w, D] -> approximate greedy coreset (ratio, seeded) -> memory bank.
       sampler="grouped" (default): the greedy runs within groups of `group_rows` patches (whole images,
       toolkit/coreset.py), ~num_groups times less work than sampler="exact", the paper's one greedy over all
       patches (bench/coreset_speed.py measures both: time and AUROC).
       sampler="online": seed 003's online coreset instead (toolkit/online_coreset.py), fed
       `online_batch_images` images at a time as the build extracts them (fit_stream), so a large training
       set is fitted without ever holding all of its features.
score: patch score = L2 distance to the nearest bank row; image score = max patch score, optionally
       re-weighted as in the paper (Eq. 7) and anomalib: s * (1 - softmax(distances to the nearest
       row's `num_neighbors` bank neighbours)[0]). The neighbours of every bank row are found at fit
       time (faiss) and stored, so the graph only gathers them.
map:   patch scores -> bilinear upsample -> Gaussian blur sigma 4 (in the shared post-processing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.coreset import ApproximateGreedyCoreset
from adtk.toolkit.features import PatchEmbedding
from adtk.toolkit.methods.base import AnomalyMethod, HeadOutput, SizingKnob
from adtk.toolkit.methods.registry import register_method
from adtk.toolkit.online_coreset import OnlineGreedyCoreset
from adtk.toolkit.search import nearest_neighbours


SAMPLERS = ("grouped", "exact", "greedy", "online")  # "greedy": the name "exact" had before grouping existed
# Patches per coreset group (32 images of a 32 x 32 grid): see bench/coreset_speed.py for the choice.
DEFAULT_GROUP_ROWS = 32768


@dataclass(frozen=True)
class PatchCoreState:
    memory_bank: np.ndarray  # float32 [M, D]
    bank_neighbours: np.ndarray  # int64 [M, k]: each row's k nearest bank rows (itself first); k = 0 if unused


def patch_rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of the patch matrix of feature maps [N, D, h, w] (row r = image r // (h*w), position r % (h*w)),
    gathered without building the matrix -> float32 [len(rows), D]."""
    height, width = features.shape[2:]
    image, position = np.divmod(np.asarray(rows), height * width)
    return np.ascontiguousarray(features[image, :, position // width, position % width], dtype=np.float32)


def squared_distances(queries: torch.Tensor, bank: torch.Tensor, bank_sq_norms: torch.Tensor) -> torch.Tensor:
    """queries [B, P, D], bank [M, D] -> squared L2 [B, P, M] as |q|^2 - 2 q.m + |m|^2 (one GEMM), >= 0."""
    query_sq_norms = (queries * queries).sum(-1, keepdim=True)
    return (query_sq_norms - 2.0 * torch.matmul(queries, bank.t()) + bank_sq_norms).clamp(min=0.0)


def register_search_bank(head: nn.Module, memory_bank: np.ndarray) -> None:
    """Store a bank on `head` as the searches below read it: buffers bank_t_neg2 = -2 * bank^T [D, M] (scaling by
    -2 is exact in fp32 and fp16, so rows are recovered exactly as -0.5 * bank_t_neg2.T) and bank_sq_norms [M]."""
    bank = torch.from_numpy(np.ascontiguousarray(memory_bank, dtype=np.float32))
    head.register_buffer("bank_t_neg2", (-2.0 * bank).t().contiguous())
    head.register_buffer("bank_sq_norms", (bank * bank).sum(1))


def partial_sq_distances(queries_2d: torch.Tensor, bank_t_neg2: torch.Tensor, bank_sq_norms: torch.Tensor):
    """queries [N, D] -> |m|^2 - 2 q.m [N, M]: one GEMM with a bias (onnxruntime fuses it into Gemm); add |q|^2
    to a minimum over the bank to get the squared distance."""
    return torch.matmul(queries_2d, bank_t_neg2) + bank_sq_norms


def nearest_bank_rows(queries: torch.Tensor, bank_t_neg2: torch.Tensor, bank_sq_norms: torch.Tensor):
    """queries [B, P, D], bank stored as -2 * bank^T [D, M] and |m|^2 [M] -> (squared L2 distance to the
    nearest row [B, P] (>= 0), that row's index [B, P]).

    One GEMM with a bias (partial_sq_distances), then the min and argmin over the bank: |q|^2 is constant
    along the bank, so it is added to the [B, P] minima, not to the [B, P, M] matrix, and no elementwise pass
    runs over that matrix (for the heads whose score needs the nearest row's index:
    LDKNN's density, SoftCore's soft weight). min(dim) keeps the first index among equal values in torch and
    in ONNX's ArgMin; torch.topk does not promise it, so a duplicated bank row could pick a different index
    than the artefact.
    """
    batch, patches, dims = queries.shape
    nearest_partial, nearest_index = partial_sq_distances(queries.reshape(-1, dims), bank_t_neg2,
                                                          bank_sq_norms).min(dim=-1)
    nearest_sq = (nearest_partial + (queries * queries).sum(-1).reshape(-1)).clamp(min=0.0)
    return nearest_sq.view(batch, patches), nearest_index.view(batch, patches)


class PatchCoreHead(nn.Module):
    """patch features [B, D, h, w] -> HeadOutput(patch_scores [B, h, w], image_score [B]).

    The bank is stored once, as -2 * bank^T [D, M] beside |m|^2 [M], so the nearest-row search is one GEMM
    with a bias (onnxruntime fuses MatMul + Add into Gemm) and a ReduceMin over the bank: |q|^2 is added
    after the min (it is constant along the bank) and no other pass runs over the [P, M] distance matrix.
    The nearest row index is needed only for the highest-scoring patch (the re-weighting), so the ArgMin
    runs over that one patch's row, recomputed as a [1, M] product, instead of over all P rows. Measured
    with onnxruntime on 1,024 patches x 1,843 rows x 152 dims: 2.9 ms against 4.4 ms for
    |q|^2 - 2 q.m + |m|^2 with a full min/argmin (bench/vs_anomalib.py times this head against faiss).
    """

    def __init__(self, state: PatchCoreState):
        super().__init__()
        register_search_bank(self, state.memory_bank)
        self.register_buffer("bank_neighbours", torch.from_numpy(state.bank_neighbours.astype(np.int64)))
        self.reweight = state.bank_neighbours.shape[1] > 1
        self.bank_rows = int(state.memory_bank.shape[0])  # declared as data for graph passes (e.g. TensorRT chunking)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        batch, dims, height, width = features.shape
        queries = features.flatten(2).transpose(1, 2)  # [B, P, D]
        query_sq_norms = (queries * queries).sum(-1)  # [B, P]
        # |m|^2 - 2 q.m for every (patch, row), as one 2-D GEMM + bias, then the min over the bank rows.
        partial = partial_sq_distances(queries.reshape(-1, dims), self.bank_t_neg2, self.bank_sq_norms)
        nearest_partial = partial.min(dim=-1).values.view(batch, -1)
        patch_scores = (nearest_partial + query_sq_norms).clamp(min=0.0).sqrt()
        max_score, max_patch = patch_scores.max(dim=1)  # [B]
        if self.reweight:
            max_patch_feature = torch.gather(queries, 1, max_patch.view(-1, 1, 1).expand(-1, 1, dims)).squeeze(1)
            nearest_row = partial_sq_distances(max_patch_feature, self.bank_t_neg2, self.bank_sq_norms).argmin(dim=-1)
            support = self.bank_t_neg2[:, self.bank_neighbours[nearest_row]].permute(1, 2, 0) * -0.5  # [B, k, D]
            support_dists = torch.linalg.vector_norm(max_patch_feature.unsqueeze(1) - support, dim=-1)  # [B, k]
            weight = 1.0 - torch.softmax(support_dists, dim=1)[:, 0]
            image_score = weight * max_score
        else:
            image_score = max_score
        return HeadOutput(patch_scores.view(batch, height, width), image_score)


@register_method("patchcore")
class PatchCore(AnomalyMethod):
    """Nearest-neighbour distance to a coreset memory bank (spec: PatchCore, seed 000)."""

    def __init__(self, coreset_ratio: float = 0.1, num_neighbors: int = 9, embed_dim: int | None = None,
                 projection_dim: int = 128, seed: int = 0, sampler: str = "grouped", online_batch_images: int = 8,
                 group_rows: int = DEFAULT_GROUP_ROWS):
        if num_neighbors < 1:
            raise ConfigError(f"patchcore: num_neighbors must be >= 1, got {num_neighbors}")
        if sampler not in SAMPLERS:
            raise ConfigError(f"patchcore: sampler must be 'grouped' (greedy within groups of images, default), "
                              f"'exact' (the paper's greedy over all patches; 'greedy' is the same) or "
                              f"'online' (seed 003's bounded-memory coreset), got {sampler!r}")
        if int(online_batch_images) < 1:
            raise ConfigError(f"patchcore: online_batch_images must be >= 1, got {online_batch_images}")
        self.sampler, self.online_batch_images = sampler, int(online_batch_images)
        self.coreset = ApproximateGreedyCoreset(coreset_ratio, projection_dim=projection_dim, seed=seed,
                                                group_rows=int(group_rows) if sampler == "grouped" else None)
        self.num_neighbors = int(num_neighbors)
        self.embed_dim = embed_dim
        self._params = dict(coreset_ratio=float(coreset_ratio), num_neighbors=self.num_neighbors,
                            embed_dim=embed_dim, projection_dim=int(projection_dim), seed=int(seed),
                            sampler=sampler, online_batch_images=self.online_batch_images,
                            group_rows=int(group_rows))

    def embedding(self, channels: tuple[int, ...]) -> nn.Module:
        return PatchEmbedding(channels, embed_dim=self.embed_dim)

    def fit(self, features: np.ndarray, progress=None) -> PatchCoreState:
        """features [N, D, h, w] float32 -> PatchCoreState. progress(done, total) follows the coreset."""
        if self.sampler == "online":  # the same sampler as the streaming build, on features already held
            step = self.online_batch_images
            return self.fit_stream((features[i:i + step] for i in range(0, len(features), step)), len(features),
                                   progress)
        # The coreset reads the maps as patch rows in (image, y, x) order without a patch-major copy of them.
        selected = self.coreset.select(features, progress=progress)
        memory_bank = patch_rows(features, selected)
        return PatchCoreState(memory_bank=memory_bank, bank_neighbours=self._bank_neighbours(memory_bank))

    def fits_streaming(self) -> bool:
        return self.sampler == "online"

    def fit_stream(self, batches: Iterable[np.ndarray], num_images: int, progress=None) -> PatchCoreState:
        """Feature batches [b, D, h, w] of any sizes -> PatchCoreState, holding one group of images at a time.

        The batches are regrouped into `online_batch_images` images per sampler step (the released code's
        8, spec B.5), whatever batch size the backbone ran at, so the bank does not depend on it.
        progress(done_images, num_images) after each step."""
        sampler = OnlineGreedyCoreset(self.coreset.ratio, seed=self._params["seed"])
        pending: list[np.ndarray] = []
        held = done = 0

        def add_group(group: np.ndarray) -> None:
            nonlocal done
            # patch rows in (image, y, x) order, as the offline coreset reads them
            sampler.add(np.ascontiguousarray(group.transpose(0, 2, 3, 1).reshape(-1, group.shape[1])))
            done += len(group)
            if progress is not None:
                progress(done, max(num_images, done))

        for batch in batches:
            pending.append(batch)
            held += len(batch)
            while held >= self.online_batch_images:
                joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                add_group(joined[:self.online_batch_images])
                rest = joined[self.online_batch_images:]
                pending, held = ([rest] if len(rest) else []), len(rest)
        if held:
            add_group(np.concatenate(pending))
        if done == 0:
            raise DataError("patchcore: no training features to fit (the image stream was empty)")
        memory_bank = sampler.bank()
        return PatchCoreState(memory_bank=memory_bank, bank_neighbours=self._bank_neighbours(memory_bank))

    def _bank_neighbours(self, memory_bank: np.ndarray) -> np.ndarray:
        """[M, k] nearest bank rows of every bank row, the row itself first (the paper's N_b(m*))."""
        rows = memory_bank.shape[0]
        if self.num_neighbors <= 1:
            return np.zeros((rows, 0), dtype=np.int64)
        _, found = nearest_neighbours(memory_bank, memory_bank, self.num_neighbors + 1)
        own_row = np.arange(rows)[:, None]
        # Duplicate rows can push a row's own index out of first place: drop it wherever it is, put it first.
        others_first = np.argsort(found == own_row, axis=1, kind="stable")
        others = np.take_along_axis(found, others_first, axis=1)[:, : self.num_neighbors - 1]
        return np.concatenate([own_row, others], axis=1)

    def sizing_knobs(self) -> tuple[SizingKnob, ...]:
        # The head's cost (one GEMM against the bank, then a min over its rows) is linear in the bank rows.
        return (SizingKnob("coreset_ratio", minimum=0.001, cost_exponent=1.0),)

    def head(self, state: PatchCoreState) -> PatchCoreHead:
        return PatchCoreHead(state)

    def fit_report(self, state: PatchCoreState) -> dict:
        rows, dims = state.memory_bank.shape
        return {"memory_bank_rows": int(rows), "memory_bank_dims": int(dims)}
