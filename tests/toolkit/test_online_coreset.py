"""Online greedy coreset (seed 003, Algorithm 2) against a textbook farthest-first reference."""

from __future__ import annotations

import numpy as np
import pytest

from adtk.runtime.errors import ConfigError
from adtk.toolkit.online_coreset import OnlineGreedyCoreset


def reference_online(batches, ratio, seed, window_rows=None):
    """Farthest-first per batch against everything stored, in float64 (spec B.5, Algorithm 2); with window_rows,
    against what was stored since the current window of >= window_rows input rows began."""
    stored, order = np.zeros((0, batches[0].shape[1])), []
    rng = np.random.default_rng(seed)
    window_seen = 0
    for batch in batches:
        if window_rows is not None and window_seen >= window_rows:
            stored, window_seen = np.zeros((0, batch.shape[1])), 0
        window_seen += len(batch)
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


def test_windows_compare_a_batch_only_with_its_own_windows_rows():
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(40, 2)).astype(np.float32) + shift for shift in (0.0, 2.0, 0.5, 3.0, 1.0)]
    windowed = OnlineGreedyCoreset(0.1, seed=5, window_rows=80)  # windows: batches 0-1, 2-3, 4
    for batch in batches:
        windowed.add(batch)
    np.testing.assert_allclose(windowed.bank(), reference_online(batches, 0.1, 5, window_rows=80), atol=1e-6)
    # what a window keeps does not depend on the rows of earlier windows
    changed = [batches[0] * 3.0 - 1.0, batches[1][::-1].copy()] + batches[2:]
    again = OnlineGreedyCoreset(0.1, seed=5, window_rows=80)
    for batch in changed:
        again.add(batch)
    np.testing.assert_array_equal(again.bank()[8:], windowed.bank()[8:])
    assert not np.array_equal(again.bank()[:8], windowed.bank()[:8])
    # a window as long as the stream is the paper's sampler
    whole = OnlineGreedyCoreset(0.1, seed=5, window_rows=200)
    for batch in batches:
        whole.add(batch)
    np.testing.assert_allclose(whole.bank(), reference_online(batches, 0.1, 5), atol=1e-6)
    with pytest.raises(ConfigError, match="window_rows"):
        OnlineGreedyCoreset(0.1, window_rows=0)
