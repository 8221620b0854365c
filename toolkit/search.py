"""Nearest rows of a memory bank, the building block every bank method shares (PatchCore, KNN, LDKNN, SoftCore,
Labeled PatchCore): exact search at fit time (faiss), and the search the exported heads run (torch, traced into
the artefact).

Fit time (numpy in, numpy out; faiss IndexFlatL2, squared L2 distances):
    nearest_neighbours(bank, queries, k) -> (squared distances [Q, k], indices [Q, k])
    bank_neighbours(bank, k)             -> [M, k] each row's k nearest rows, itself first (PatchCore's N_b;
                                            approximate=True: IVF-Flat for big banks)
    approximate_nearest_neighbours(bank, queries, k) -> the same as nearest_neighbours, through faiss IVF-Flat
                                            (PatchCore's big-bank N_b, LDKNN's densities)
    patch_rows(maps, rows)               -> rows of the patch matrix of feature maps [N, D, h, w], gathered

In a head (torch; what the compiler exports and the graph passes find by structure, export/passes/graph.py):
    register_search_bank(head, bank)     the bank stored as -2 * bank^T [D, M] and |m|^2 [M] buffers
    partial_sq_distances(q, ...)         |m|^2 - 2 q.m: one GEMM with a bias
    nearest_bank_rows(q, ...)            (squared distance to the nearest row, its index)
    squared_distances(q, bank, norms)    the full [B, P, M] matrix, for heads that read more than the nearest row
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from adtk.export.passes.chunk_bank import CPU_CACHE_CHUNK_ELEMENTS


def nearest_neighbours(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """bank [M, D], queries [Q, D] -> (squared distances [Q, k], indices [Q, k]), nearest first."""
    import faiss  # imported here: only fitting needs it

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    k = min(int(k), bank.shape[0])
    sq_dists, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return sq_dists, indices.astype(np.int64)


def bank_neighbours(memory_bank: np.ndarray, num_neighbors: int, approximate: bool = False) -> np.ndarray:
    """[M, k] nearest bank rows of every bank row, the row itself first (PatchCore's N_b(m*)); k = 0 when
    num_neighbors <= 1 (no re-weighting).

    approximate=True, for banks of >= APPROXIMATE_MIN_ROWS rows: a faiss IVF-Flat index (IVF_LIST_ROWS rows per list,
    IVF_NPROBE lists probed) instead of the exact M x M search, which at a 70k-row bank is ~1.5 TFLOP, a large part
    of PatchCore's fit. Rows the approximate search gives fewer than k + 1 candidates are searched exactly."""
    rows = memory_bank.shape[0]
    if num_neighbors <= 1:
        return np.zeros((rows, 0), dtype=np.int64)
    if approximate and rows >= APPROXIMATE_MIN_ROWS:
        found = approximate_self_neighbours(memory_bank, num_neighbors + 1)
    else:
        _, found = nearest_neighbours(memory_bank, memory_bank, num_neighbors + 1)
    own_row = np.arange(rows)[:, None]
    # Duplicate rows can push a row's own index out of first place: drop it wherever it is, put it first.
    others_first = np.argsort(found == own_row, axis=1, kind="stable")
    others = np.take_along_axis(found, others_first, axis=1)[:, : num_neighbors - 1]
    return np.concatenate([own_row, others], axis=1)


# Below this many rows the exact search is cheap (16k rows: ~4e10 multiply-adds, well under a second) and a bank's
# neighbours stay exact (small builds and the golden builds unchanged).
APPROXIMATE_MIN_ROWS = 16384
# A bank's neighbours among its own rows (M queries): the lists' k-means (~10 x M x M / IVF_LIST_ROWS pairs) costs more
# than the search (M x IVF_NPROBE x IVF_LIST_ROWS), so lists are long and few are probed. On the default 70k-row
# magnetic-tile bank (k = 10): 128 rows per list, 12 probed, found 93.7% of the exact neighbours in 1.75 s; the
# former 64 and 16 found 93.9% in 2.3-2.6 s (2 x86 cores; bench/results/bank_neighbours_ivf.md). LDKNN's density
# search, with ten times fewer queries than rows, sets its own (methods/ldknn.py).
IVF_LIST_ROWS = 128  # bank rows per IVF list (faiss asks for >= 39 training rows per list)
IVF_NPROBE = 12  # lists searched per row


def approximate_nearest_neighbours(bank: np.ndarray, queries: np.ndarray, k: int, seed: int = 0,
                                   nlist: int | None = None, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """bank [M, D], queries [Q, D] -> approximate (squared distances [Q, k], indices [Q, k]), nearest first: a faiss
    IVF-Flat index of `nlist` lists (default M // IVF_LIST_ROWS), `nprobe` of them searched (default IVF_NPROBE).

    The lists' k-means is seeded (the same bank gives the same neighbours); with more than IVF_MAX_TRAIN_PER_LIST
    rows per list it trains on a seeded sample of that many per list (faiss would take 256 per list: on LDKNN's
    700k-row pre-coreset bank that k-means alone costs about as much as the search it saves). Queries whose probed
    lists held fewer than k rows are searched exactly."""
    import faiss  # imported here: only fitting needs it

    bank = np.ascontiguousarray(bank, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(int(k), bank.shape[0])
    nlist = max(1, len(bank) // IVF_LIST_ROWS if nlist is None else min(int(nlist), len(bank)))
    training = bank
    if len(bank) > IVF_MAX_TRAIN_PER_LIST * nlist:
        sample = np.random.default_rng(seed).choice(len(bank), IVF_MAX_TRAIN_PER_LIST * nlist, replace=False)
        training = bank[np.sort(sample)]
    quantizer = faiss.IndexFlatL2(bank.shape[1])
    index = faiss.IndexIVFFlat(quantizer, bank.shape[1], nlist)
    index.cp.seed = seed
    index.train(training)
    index.add(bank)
    index.nprobe = IVF_NPROBE if nprobe is None else int(nprobe)
    sq_dists, found = index.search(queries, k)
    short = np.flatnonzero((found < 0).any(axis=1))  # probed lists held fewer than k rows
    if len(short):
        sq_dists[short], found[short] = nearest_neighbours(bank, queries[short], k)
    return sq_dists, found.astype(np.int64)


# k-means training rows per list at most (default lists, M // IVF_LIST_ROWS, never reach it: PatchCore's bank
# neighbours train on every row, as before)
IVF_MAX_TRAIN_PER_LIST = 128


def approximate_self_neighbours(bank: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """bank [M, D] -> [M, k] approximate nearest rows of every row (itself included), faiss IVF-Flat."""
    return approximate_nearest_neighbours(bank, bank, k, seed)[1]


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


# The eager searches (the build's held-out scoring of ensembles, the recipe search's and REB's validation, every
# torch-reference score) take their minimum block by block, so the [N, M] distance matrix is never written whole:
# query blocks of EAGER_QUERY_BLOCK rows against bank blocks of CPU_CACHE_CHUNK_ELEMENTS / EAGER_QUERY_BLOCK rows,
# the budget the compiler's split uses for onnxruntime (export/passes/chunk_bank.py). Against one whole matrix:
# 0.47x the time at 1,024 patches x 70,144 rows, 0.51x at 16 frames' 16,384 patches x 9,800 rows (REB's
# validation batch), on 2 cores (bench/eager_bank_search.py); the former 8,192-row bank blocks wrote 32 MB per
# frame and up to 537 MB for 16 frames. Blocks of at least EAGER_MIN_BANK_BLOCK rows: narrower GEMMs took another
# kernel, whose sums differed from the whole matrix's in the last bit.
EAGER_QUERY_BLOCK = 1024
EAGER_MIN_BANK_BLOCK = 256


def exporting() -> bool:
    """True while torch.onnx / torch.export / jit tracing records a graph (the heads then take the exported form)."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def torchscript_tracing() -> bool:
    """True while the TorchScript tracer records a graph (export/split_export.py), not torch.export."""
    return torch.jit.is_tracing() and not torch.compiler.is_exporting()


# The TorchScript tracer runs the graph on real example frames while it records it. Recorded as written for export
# (one [N, M] matrix, then its min), tracing the default build's graph held that whole matrix: 574 MB at 2 frames x
# 1,024 patches x 70,144 rows, the build's peak RSS 1.57 -> 2.05 GB. These two searches run the eager blocked search
# instead and give the tracer the exported form through their symbolic(): the same ONNX nodes (MatMul, Add with
# |m|^2, ReduceMin / ArgMin on the last axis) that torch.export writes and the compiler's passes find.
def _partial_sq_distances_onnx(g, queries_2d, bank_t_neg2, bank_sq_norms):
    return g.op("Add", g.op("MatMul", queries_2d, bank_t_neg2), bank_sq_norms)


def _reduce_min_last_onnx(g, values):
    if g.opset >= 18:  # axes became an input in opset 18
        return g.op("ReduceMin", values, g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64)),
                    keepdims_i=0)
    return g.op("ReduceMin", values, axes_i=[-1], keepdims_i=0)


class TracedMinSearch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries_2d, bank_t_neg2, bank_sq_norms):
        return eager_min_partial_sq_distances(queries_2d, bank_t_neg2, bank_sq_norms)

    @staticmethod
    def symbolic(g, queries_2d, bank_t_neg2, bank_sq_norms):
        return _reduce_min_last_onnx(g, _partial_sq_distances_onnx(g, queries_2d, bank_t_neg2, bank_sq_norms))


class TracedNearestSearch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries_2d, bank_t_neg2, bank_sq_norms):
        return eager_nearest_partial_sq_distances(queries_2d, bank_t_neg2, bank_sq_norms)

    @staticmethod
    def symbolic(g, queries_2d, bank_t_neg2, bank_sq_norms):
        partial = _partial_sq_distances_onnx(g, queries_2d, bank_t_neg2, bank_sq_norms)
        return _reduce_min_last_onnx(g, partial), g.op("ArgMin", partial, axis_i=-1, keepdims_i=0)


def eager_blocks(num_queries: int, num_rows: int):
    """(query slice, bank slice) pairs covering an eager search, query blocks outermost."""
    bank_block = max(EAGER_MIN_BANK_BLOCK, CPU_CACHE_CHUNK_ELEMENTS // max(1, min(num_queries, EAGER_QUERY_BLOCK)))
    for q_start in range(0, num_queries, EAGER_QUERY_BLOCK):
        queries = slice(q_start, q_start + EAGER_QUERY_BLOCK)
        for b_start in range(0, num_rows, bank_block):
            yield queries, slice(b_start, b_start + bank_block)


def nearest_partial_sq_distances(queries_2d: torch.Tensor, bank_t_neg2: torch.Tensor, bank_sq_norms: torch.Tensor):
    """queries [N, D] -> (min over the bank of |m|^2 - 2 q.m [N], the index of that row [N]).

    Exported: partial_sq_distances and one min(dim) (ReduceMin + ArgMin). Run eagerly: block by block
    (eager_blocks), each block one fused addmm; the lowest index wins a tie, as min(dim) and ONNX ArgMin do."""
    if torchscript_tracing():
        return TracedNearestSearch.apply(queries_2d, bank_t_neg2, bank_sq_norms)
    if exporting() or queries_2d.requires_grad:  # (blocks are written in place: no autograd through them)
        return partial_sq_distances(queries_2d, bank_t_neg2, bank_sq_norms).min(dim=-1)
    return eager_nearest_partial_sq_distances(queries_2d, bank_t_neg2, bank_sq_norms)


def eager_nearest_partial_sq_distances(queries_2d: torch.Tensor, bank_t_neg2: torch.Tensor,
                                       bank_sq_norms: torch.Tensor):
    """nearest_partial_sq_distances run eagerly, block by block."""
    values = torch.empty(queries_2d.shape[0], dtype=queries_2d.dtype, device=queries_2d.device)
    indices = torch.empty(queries_2d.shape[0], dtype=torch.int64, device=queries_2d.device)
    for rows, bank in eager_blocks(queries_2d.shape[0], bank_t_neg2.shape[1]):
        value, index = torch.addmm(bank_sq_norms[bank], queries_2d[rows], bank_t_neg2[:, bank]).min(dim=-1)
        if bank.start == 0:
            values[rows], indices[rows] = value, index
        else:
            better = value < values[rows]  # strictly: an earlier block keeps its row on a tie
            values[rows] = torch.where(better, value, values[rows])
            indices[rows] = torch.where(better, index + bank.start, indices[rows])
    return values, indices


def min_partial_sq_distances(queries_2d: torch.Tensor, bank_t_neg2: torch.Tensor, bank_sq_norms: torch.Tensor):
    """queries [N, D] -> min over the bank of |m|^2 - 2 q.m [N].

    Exported: partial_sq_distances and one ReduceMin, the structure export/passes find (chunk_bank, int8). Run
    eagerly: the same minimum block by block (nearest_partial_sq_distances' blocks, without the index)."""
    if torchscript_tracing():
        return TracedMinSearch.apply(queries_2d, bank_t_neg2, bank_sq_norms)
    if exporting() or queries_2d.requires_grad:  # (blocks are written in place: no autograd through them)
        return partial_sq_distances(queries_2d, bank_t_neg2, bank_sq_norms).min(dim=-1).values
    return eager_min_partial_sq_distances(queries_2d, bank_t_neg2, bank_sq_norms)


def eager_min_partial_sq_distances(queries_2d: torch.Tensor, bank_t_neg2: torch.Tensor,
                                   bank_sq_norms: torch.Tensor):
    """min_partial_sq_distances run eagerly, block by block."""
    nearest = torch.empty(queries_2d.shape[0], dtype=queries_2d.dtype, device=queries_2d.device)
    for rows, bank in eager_blocks(queries_2d.shape[0], bank_t_neg2.shape[1]):
        block = torch.addmm(bank_sq_norms[bank], queries_2d[rows], bank_t_neg2[:, bank]).amin(dim=-1)
        nearest[rows] = block if bank.start == 0 else torch.minimum(nearest[rows], block)
    return nearest


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
    nearest_partial, nearest_index = nearest_partial_sq_distances(queries.reshape(-1, dims), bank_t_neg2,
                                                                  bank_sq_norms)
    nearest_sq = (nearest_partial + (queries * queries).sum(-1).reshape(-1)).clamp(min=0.0)
    return nearest_sq.view(batch, patches), nearest_index.view(batch, patches)


