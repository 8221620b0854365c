"""Leave-one-defect-type-out splits (seed 003's protocol, spec B.1)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from adtk.runtime.errors import DataError
from adtk.toolkit.research.known_anomalies import (
    first_half,
    leave_one_type_out_splits,
)


def test_each_type_is_held_out_and_the_others_train_on_their_first_half(tiny_dataset):
    splits = leave_one_type_out_splits(tiny_dataset)
    assert sorted(splits) == ["hole", "scratch", "stain"]
    good = [s for s in tiny_dataset.test if s.label == 0]
    for held_out, (train, evaluation) in splits.items():
        assert {s.defect_type for s in train} == {"hole", "scratch", "stain"} - {held_out}
        assert all(s.path.name == "000.png" for s in train)  # first half by file name: 1 of 2
        assert list(evaluation) == good + [s for s in tiny_dataset.test if s.defect_type == held_out]
        assert not {s.path for s in train} & {s.path for s in evaluation}


def test_first_half_is_by_sorted_file_name_and_rounds_down(tiny_dataset):
    samples = [s for s in tiny_dataset.test if s.label == 0][::-1][:5]
    assert [s.path.name for s in first_half(samples)] == ["001.png", "002.png"]


def test_unmasked_defects_do_not_train_and_one_type_is_refused(tiny_dataset):
    unmasked = replace(tiny_dataset, test=tuple(replace(s, mask_path=None) if s.defect_type == "hole" else s
                                                for s in tiny_dataset.test))
    assert all(s.defect_type != "hole" for s in leave_one_type_out_splits(unmasked)["stain"][0])
    one_type = replace(tiny_dataset, test=tuple(s for s in tiny_dataset.test if s.defect_type in ("good", "hole")))
    with pytest.raises(DataError, match="at least 2 defect types"):
        leave_one_type_out_splits(one_type)
