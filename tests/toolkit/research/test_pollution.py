"""The two pollution protocols (spec A6 leak-free, B6 leaky) and the refinement metrics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from adtk.runtime.errors import ConfigError, DataError
from adtk.toolkit.data import Sample
from adtk.toolkit.research.pollution import pollute, refinement_quality


def samples():
    train = [Sample(Path(f"train/good/{i}.png"), 0, "good", None) for i in range(100)]
    test = [Sample(Path(f"test/good/{i}.png"), 0, "good", None) for i in range(30)]
    for kind, count in (("crack", 30), ("hole", 15), ("stain", 5)):
        test += [Sample(Path(f"test/{kind}/{i}.png"), 1, kind, Path(f"gt/{kind}/{i}_mask.png")) for i in range(count)]
    return train, test


def test_sroc_protocol_is_disjoint_stratified_fixed_size_and_nested():
    train, test = samples()
    splits = {rate: pollute(train, test, rate, "sroc", seed=4) for rate in (0.0, 0.1, 0.2)}
    pool_removed = len(test) - len(splits[0.0].test)
    assert pool_removed == 20  # round(0.2 * 100) defects leave the test set at every rate
    for rate, split in splits.items():
        assert split.protocol == "sroc_disjoint" and not split.leaky
        assert len(split.train) == 100  # N fixed: pollution replaces good images
        assert len(split.injected) == round(rate * 100)
        assert not {s.path for s in split.injected} & {s.path for s in split.test}
        assert [s.path for s in split.test] == [s.path for s in splits[0.0].test]  # same test set per seed
    removed = Counter(s.defect_type for s in test if s.label) - Counter(s.defect_type for s in splits[0.0].test if s.label)
    assert removed == Counter({"crack": 12, "hole": 6, "stain": 2})  # stratified: 60/30/10 % of 20
    assert {s.path for s in splits[0.1].injected} <= {s.path for s in splits[0.2].injected}
    other_seed = pollute(train, test, 0.2, "sroc", seed=5)
    assert {s.path for s in other_seed.injected} != {s.path for s in splits[0.2].injected}


def test_paire_protocol_leaves_the_test_set_unchanged():
    train, test = samples()
    split = pollute(train, test, 0.3, "paire", seed=0)
    assert split.protocol == "paire_leaky" and split.leaky
    assert list(split.test) == test
    assert len(split.train) == 100 and len(split.injected) == 30
    assert {s.path for s in split.injected} <= {s.path for s in test if s.label}


def test_protocol_errors():
    train, test = samples()
    with pytest.raises(ConfigError):
        pollute(train, test, 0.1, "mixed", seed=0)
    with pytest.raises(ConfigError):
        pollute(train, test, 1.5, "sroc", seed=0)
    with pytest.raises(DataError, match="lower --pollution"):
        pollute(train, test, 0.6, "sroc", seed=0)


def test_refinement_quality():
    quality = refinement_quality(["a", "b", "c", "d"], ["a", "b", "x"])
    assert quality["precision"] == 0.5 and quality["recall"] == pytest.approx(2 / 3)
    assert quality["f1"] == pytest.approx(2 * 2 / 7)
