"""Online greedy coreset (seed 003, Algorithm 2) against a textbook farthest-first reference."""

from __future__ import annotations

import numpy as np
import pytest

from adtk.runtime.errors import ConfigError
from adtk.toolkit.online_coreset import OnlineGreedyCoreset


def reference_online(batches, ratio, seed):
    """Farthest-first per batch against everything stored, in float64 (spec B.5, Algorithm 2)."""
    stored, order = np.zeros((0, batches[0].shape[1])), []
    rng = np.random.default_rng(seed)
    for batch in batches:
        if len(stored) == 0:
            dist = np.linalg.norm(batch - batch[rng.integers(len(batch))], axis=1)
        else:
            dist = np.linalg.norm(batch[:, None] - stored[None], axis=2).min(1)
        for _ in range(max(1, int(len(batch) * ratio))):
            index = int(np.argmax(dist))
            order.append(batch[index])
            stored = np.vstack([stored, batch[index]])
            dist = np.minimum(dist, np.linalg.norm(batch - batch[index], axis=1))
    return np.array(order)


def test_farthest_first_order_on_a_toy_2d_stream():
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(50, 2)).astype(np.float32) + shift for shift in (0.0, 3.0, 0.5)]
    sampler = OnlineGreedyCoreset(0.1, seed=4)
    for batch in batches:
        sampler.add(batch)
    np.testing.assert_allclose(sampler.bank(), reference_online(batches, 0.1, 4), atol=1e-6)
    assert sampler.bank().shape == (15, 2)


def test_each_batch_adds_max_1_floor_n_ratio_rows():
    sampler = OnlineGreedyCoreset(0.1, seed=0)
    rng = np.random.default_rng(2)
    sizes = [len(sampler.add(rng.normal(size=(n, 3)).astype(np.float32))) for n in (5, 10, 39, 40)]
    assert sizes == [1, 1, 3, 4] and len(sampler.bank()) == 9


def test_high_dimensional_rows_are_projected_but_stored_in_full():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(64, 400)).astype(np.float32)
    sampler = OnlineGreedyCoreset(0.05, seed=0)
    picks = sampler.add(rows)
    assert sampler.projection_dims < 400 and sampler.bank().shape == (3, 400)
    np.testing.assert_array_equal(sampler.bank(), rows[picks])
    with pytest.raises(ConfigError):
        OnlineGreedyCoreset(0.0)
