"""The precision gate's images (toolkit/sizing.compile_check_data): never the test split.

Every build path that compiles a precision other than fp32 (plain --precision fp16/int8, --target sizing, an
ensemble) takes its CheckData from compile_check_data, so these cover them all; test_sizing checks the
manifest of a sized target build end to end.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from adtk.toolkit.data import iter_images
from adtk.toolkit.sizing import compile_check_data


def _frames(samples):
    return [image for _, image in iter_images(samples)]


def _split(index):
    train = list(index.train)
    return train[:12], train[12:]


def test_without_defects_the_gate_judges_synthetic_defects_in_held_out_goods(tiny_dataset):
    fit, held_out = _split(tiny_dataset)
    assert not tiny_dataset.defects and len(tiny_dataset.test) > 0  # a test split exists and must stay unused
    data = compile_check_data(tiny_dataset, fit, held_out, max_check_images=200, seed=0, skip_bad=False)
    labels = np.asarray(data.check_labels)
    assert 0 < labels.sum() < len(labels)  # both classes: the AUROC is measurable
    assert "synthetic" in data.check_description and "test split" not in data.check_description
    test_bytes = {frame.tobytes() for frame in _frames(tiny_dataset.test)}
    assert not any(frame.tobytes() in test_bytes for frame in data.check_frames)
    held_out_bytes = {frame.tobytes() for frame in _frames(held_out)}
    goods = [frame for frame, label in zip(data.check_frames, labels) if label == 0]
    assert goods and all(frame.tobytes() in held_out_bytes for frame in goods)  # the goods are the held-out ones
    fit_bytes = {frame.tobytes() for frame in _frames(fit)}
    assert data.calibration_frames and all(f.tobytes() in fit_bytes for f in data.calibration_frames)


def test_with_a_defects_folder_the_gate_judges_those_not_the_test_split(tiny_dataset):
    fit, held_out = _split(tiny_dataset)
    labelled = [s for s in tiny_dataset.test if s.label == 1][:3]  # stand-ins for a defects/ folder
    index = dataclasses.replace(tiny_dataset, defects=labelled)
    data = compile_check_data(index, fit, held_out, max_check_images=200, seed=0, skip_bad=False)
    assert int(np.asarray(data.check_labels).sum()) == len(labelled)
    assert "defects/" in data.check_description
    other_test = {f.tobytes() for f in _frames([s for s in tiny_dataset.test if s not in labelled])}
    assert not any(frame.tobytes() in other_test for frame in data.check_frames)
