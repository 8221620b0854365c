"""bank_neighbours' approximate search (faiss IVF-Flat, for big PatchCore banks): each row first, mostly the exact
neighbours, the same on every call, exact for small banks, and exact for rows whose probed lists were too short."""

from __future__ import annotations

import numpy as np

from adtk.toolkit import search
from adtk.toolkit.search import bank_neighbours


def clustered_bank(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(20, 16))
    return (centres[rng.integers(0, 20, rows)] + rng.normal(size=(rows, 16))).astype(np.float32)


def test_approximate_neighbours_are_mostly_exact_and_repeatable(monkeypatch):
    monkeypatch.setattr(search, "APPROXIMATE_MIN_ROWS", 1000)
    monkeypatch.setattr(search, "IVF_NPROBE", 8)  # of 62 lists: approximate enough to miss some neighbours
    bank = np.random.default_rng(0).normal(size=(4000, 16)).astype(np.float32)
    exact = bank_neighbours(bank, 10)
    approximate = bank_neighbours(bank, 10, approximate=True)
    assert approximate.shape == exact.shape == (4000, 10)
    np.testing.assert_array_equal(approximate[:, 0], np.arange(4000))  # each row itself first
    recall = np.mean([len(set(a[1:]) & set(e[1:])) / 9 for a, e in zip(approximate, exact)])
    assert 0.5 <= recall < 1.0  # approximate (the IVF path ran), yet mostly the true neighbours
    np.testing.assert_array_equal(bank_neighbours(bank, 10, approximate=True), approximate)
    monkeypatch.setattr(search, "APPROXIMATE_MIN_ROWS", 4001)  # a smaller bank than this stays exact
    np.testing.assert_array_equal(bank_neighbours(bank, 10, approximate=True), exact)


def test_rows_with_too_few_candidates_are_searched_exactly(monkeypatch):
    monkeypatch.setattr(search, "APPROXIMATE_MIN_ROWS", 100)
    monkeypatch.setattr(search, "IVF_LIST_ROWS", 4)  # lists of ~4 rows, one probed: often fewer than k + 1 = 12
    monkeypatch.setattr(search, "IVF_NPROBE", 1)
    bank = clustered_bank(400, seed=1)
    exact = bank_neighbours(bank, 11)
    searched, nearest = [], search.nearest_neighbours

    def recording(bank_rows, queries, k):
        searched.append(queries.copy())
        return nearest(bank_rows, queries, k)

    monkeypatch.setattr(search, "nearest_neighbours", recording)
    found = bank_neighbours(bank, 11, approximate=True)
    assert len(searched) == 1 and 0 < len(searched[0]) < 400 and (found >= 0).all()
    short = [int(np.flatnonzero((bank == row).all(axis=1))[0]) for row in searched[0]]
    np.testing.assert_array_equal(found[short], exact[short])


def test_approximate_nearest_neighbours_of_other_queries_on_a_sampled_k_means(monkeypatch):
    # LDKNN's density search: queries apart from the bank, fewer lists than rows // IVF_LIST_ROWS, and k-means trained
    # on a sample (lowered here so the sampling runs on a small bank)
    monkeypatch.setattr(search, "IVF_MAX_TRAIN_PER_LIST", 40)
    bank, queries = clustered_bank(6000, seed=2), clustered_bank(300, seed=3)
    exact_sq, exact = search.nearest_neighbours(bank, queries, 6)
    sq, found = search.approximate_nearest_neighbours(bank, queries, 6, nlist=50, nprobe=4)
    assert sq.shape == found.shape == (300, 6) and (found >= 0).all()
    # the distances are those of the rows returned, nearest first, never below the exact k-th nearest
    true_sq = ((queries[:, None].astype(np.float64) - bank[found]) ** 2).sum(-1)
    np.testing.assert_allclose(sq, true_sq, rtol=1e-4, atol=1e-3)
    assert (np.diff(sq, axis=1) >= 0).all() and (sq >= exact_sq - 1e-3).all()
    recall = np.mean([len(set(a) & set(e)) / 6 for a, e in zip(found, exact)])
    assert recall >= 0.8
    again = search.approximate_nearest_neighbours(bank, queries, 6, nlist=50, nprobe=4)
    np.testing.assert_array_equal(again[1], found)  # seeded sample and k-means: repeatable
