"""Exact nearest-neighbour search at fit time (faiss IndexFlatL2; squared L2 distances)."""

from __future__ import annotations

import numpy as np


def nearest_neighbours(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """bank [M, D], queries [Q, D] -> (squared distances [Q, k], indices [Q, k]), nearest first."""
    import faiss  # imported here: only fitting needs it

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    k = min(int(k), bank.shape[0])
    sq_dists, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return sq_dists, indices.astype(np.int64)
