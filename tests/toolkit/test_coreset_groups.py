"""Grouped coreset selection (toolkit/coreset.py group_rows): each group of whole images runs the textbook greedy
on its own share of the coreset; one group is the global greedy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtk.runtime.errors import ConfigError
from adtk.toolkit.coreset import ApproximateGreedyCoreset
from adtk.toolkit.methods.patchcore import PatchCore
from adtk.toolkit.methods.registry import create_method
from tests.toolkit.methods.test_patchcore import reference_greedy


def test_groups_are_whole_images_with_their_share_and_the_textbook_picks_inside():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(10, 8, 4, 5)).astype(np.float32)  # 10 images x 20 patches, D <= 128: no projection
    # exact_max_macs=0: group however cheap the global greedy (tiny rows here)
    sampler = ApproximateGreedyCoreset(0.1, seed=2, group_rows=100, exact_max_macs=0)  # 200 rows -> 2 groups of 5 images
    selected = sampler.select(maps)
    assert len(selected) == 20
    rows = maps.transpose(0, 2, 3, 1).reshape(-1, 8).astype(np.float64)
    generator = torch.Generator().manual_seed(2)
    expected = []
    for start in (0, 100):  # the groups draw their start rows from one generator, in order
        starts = torch.randperm(100, generator=generator)[:10].numpy()
        expected.append(start + reference_greedy(rows[start:start + 100], 10, starts))
    np.testing.assert_array_equal(selected, np.sort(np.concatenate(expected)))


def test_one_group_is_the_global_greedy_and_shares_add_up():
    rows = np.random.default_rng(1).normal(size=(997, 16)).astype(np.float32)
    exact = ApproximateGreedyCoreset(0.05, seed=0).select(rows)
    np.testing.assert_array_equal(ApproximateGreedyCoreset(0.05, seed=0, group_rows=5000).select(rows), exact)
    grouped = ApproximateGreedyCoreset(0.05, seed=0, group_rows=130, exact_max_macs=0).select(rows)  # 8 uneven groups
    assert len(grouped) == len(exact) == 49 and len(np.unique(grouped)) == 49
    assert not np.array_equal(grouped, exact)  # the groups did change the picks here ...
    # ... and within the multiply-add budget (997 x 49 x 16 here) the global greedy runs though groups are asked for
    cheap = ApproximateGreedyCoreset(0.05, seed=0, group_rows=130, exact_max_macs=997 * 49 * 16)
    np.testing.assert_array_equal(cheap.select(rows), exact)
    assert not cheap.global_greedy_is_cheap(997, 50, 16)
    with pytest.raises(ConfigError):
        ApproximateGreedyCoreset(0.1, group_rows=0)


def test_patchcore_sampler_choice():
    assert PatchCore().coreset.group_rows == 32768  # grouped by default
    # below a 10% ratio the default groups grow so that each still picks ~3,277 rows; a size given is kept
    assert PatchCore(coreset_ratio=0.01).coreset.group_rows == 327680
    assert PatchCore(coreset_ratio=0.01, group_rows=32768).coreset.group_rows == 32768
    assert create_method("ldknn", coreset_ratio=0.01).coreset.group_rows == 327680
    assert create_method("reb", coreset_ratio=0.01).coreset.group_rows == 327680
    assert create_method("patchcore", coreset_ratio=0.2).coreset.group_rows == 32768
    # the online sampler's windows follow the same default size; 0 is the paper's single window
    assert PatchCore(sampler="online").online_window_rows == 32768
    assert PatchCore(coreset_ratio=0.01, sampler="online").online_window_rows == 327680
    assert PatchCore(sampler="online", online_window_rows=0).online_window_rows is None
    with pytest.raises(ConfigError, match="ratio"):
        PatchCore(coreset_ratio=0.0)
    assert PatchCore(sampler="exact").coreset.group_rows is None
    assert PatchCore(sampler="greedy").coreset.group_rows is None
    with pytest.raises(ConfigError):
        PatchCore(sampler="fastest")


def test_candidate_list_length_changes_the_speed_not_the_picks():
    rows = np.random.default_rng(3).normal(size=(3000, 16)).astype(np.float32)
    picks = [ApproximateGreedyCoreset(0.05, seed=0, num_candidates=count, block_size=block).select(rows)
             for count, block in ((None, 256), (16, 4), (3000, 64), (200, 1000))]
    for other in picks[1:]:
        np.testing.assert_array_equal(other, picks[0])
    sampler = ApproximateGreedyCoreset(0.1)
    assert [sampler.candidate_count(n) for n in (100, 32768, 10**6)] == [1024, 2048, 8192]


def test_eager_bank_minimum_in_blocks_equals_the_whole_matrix_and_exports_as_one_reduction(monkeypatch):
    import io

    import onnx

    from adtk.toolkit import search
    from adtk.toolkit.search import min_partial_sq_distances, nearest_bank_rows, partial_sq_distances

    # small blocks on both axes, so the queries and the bank both span several (the last ones partial)
    monkeypatch.setattr(search, "EAGER_QUERY_BLOCK", 16)
    monkeypatch.setattr(search, "EAGER_MIN_BANK_BLOCK", 8)
    monkeypatch.setattr(search, "CPU_CACHE_CHUNK_ELEMENTS", 16 * 40)
    generator = torch.Generator().manual_seed(0)
    bank_t_neg2 = torch.randn(8, 150, generator=generator)
    bank_t_neg2[:, 97] = bank_t_neg2[:, 3]  # a duplicate row in a later block: the lower index must still win
    norms, queries = torch.rand(bank_t_neg2.shape[1], generator=generator), torch.randn(50, 8, generator=generator)
    norms[97] = norms[3]
    queries[7] = -0.5 * bank_t_neg2[:, 3]  # a query on the duplicated row itself
    assert len(list(search.eager_blocks(50, 150))) == 4 * 4
    whole = partial_sq_distances(queries, bank_t_neg2, norms).min(dim=-1)
    torch.testing.assert_close(min_partial_sq_distances(queries, bank_t_neg2, norms), whole.values, rtol=1e-6,
                               atol=1e-5)
    _, index = nearest_bank_rows(queries[None], bank_t_neg2, norms)
    assert torch.equal(index[0], whole.indices) and int(index[0, 7]) == 3
    assert min_partial_sq_distances(queries[:0], bank_t_neg2, norms).shape == (0,)  # no frames: no blocks, no error

    class Search(torch.nn.Module):
        def forward(self, q):
            return min_partial_sq_distances(q, bank_t_neg2, norms)

    buffer = io.BytesIO()
    torch.onnx.export(Search(), (queries,), dynamo=True, verbose=False).save(buffer)
    ops = [node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node]
    assert ops.count("ReduceMin") == 1 and "Loop" not in ops  # the exported form: one GEMM, one reduction
