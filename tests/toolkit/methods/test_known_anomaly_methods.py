"""Labeled PatchCore and SEMLP (seed 003) against brute-force numpy, and both built from a tiny data set
whose labelled defects live in a defects/ folder (artefact vs torch reference within 1e-4)."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch

from adtk.toolkit.methods.base import FitInputs
from adtk.runtime.errors import DataError
from adtk.toolkit.data import index_dataset
from adtk.toolkit.labelled_defects import LabelledFeatures
from adtk.toolkit.methods.registry import create_method
from adtk.toolkit.methods.semlp import make_mlp
from tests.conftest import assert_parity


def weighted_distance(patches: np.ndarray, bank: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """[P, D] -> [P]: PatchCore's (1 - softmax(support distances)[0]) * nearest distance, per patch."""
    dists = np.linalg.norm(patches[:, None] - bank[None], axis=2)
    nearest = dists.argmin(1)
    support = np.take_along_axis(dists, neighbours[nearest], axis=1)
    weight = 1.0 - np.exp(support[:, 0]) / np.exp(support).sum(1) if neighbours.shape[1] > 1 else 1.0
    return weight * dists.min(1)


def synthetic_defects(rng, count=3, dims=12, grid=(3, 3), shift=4.0) -> LabelledFeatures:
    features = rng.normal(size=(count, dims, *grid)).astype(np.float32)
    masks = rng.random((count, *grid)) < 0.3
    masks[0, 0, 0] = True
    features.transpose(0, 2, 3, 1)[masks] += shift  # defective patches sit away from the good cloud
    return LabelledFeatures(features, masks)


@pytest.mark.parametrize("paper_compat", [False, True])
def test_labeled_patchcore_head_matches_brute_force(paper_compat):
    rng = np.random.default_rng(0)
    good = rng.normal(size=(8, 12, 3, 3)).astype(np.float32)
    defects = synthetic_defects(rng)
    method = create_method("labeled-patchcore", coreset_ratio=0.5, num_neighbors=4, paper_compat=paper_compat)
    state = method.fit(FitInputs(good, defects=defects))
    np.testing.assert_array_equal(state.defect_bank, defects.defective_patches())  # ratio 1: all of them
    assert state.good_bank.shape == (36, 12) and state.good_neighbours.shape == (36, 4)
    # off the bank rows: a query equal to a bank row has a true distance of 0 that the fp32 GEMM form
    # |q|^2 - 2 q.m + |m|^2 only resolves to ~1e-3 (checked separately below)
    test = np.concatenate([rng.normal(size=(1, 12, 3, 3)), defects.features[:1] + 0.3]).astype(np.float32)
    with torch.no_grad():
        patch_scores, image_scores = method.head(state)(torch.from_numpy(test))
    patches = test.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, 12)
    s0 = weighted_distance(patches, state.good_bank.astype(np.float64), state.good_neighbours)
    s1 = weighted_distance(patches, state.defect_bank.astype(np.float64), state.defect_neighbours)
    expected = ((s1 if paper_compat else s0) / (s0 + s1)).reshape(2, 9)
    np.testing.assert_allclose(patch_scores.numpy().reshape(2, 9), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(image_scores.numpy(), expected.max(1), rtol=1e-4, atol=1e-6)
    if not paper_compat:  # a known defective patch is its own defect-bank entry: s1 = 0, score 1
        with torch.no_grad():
            known = method.head(state)(torch.from_numpy(defects.features[:1])).patch_scores
        assert known[0, 0, 0] == pytest.approx(1.0, abs=2e-3)


def test_labeled_patchcore_needs_defects():
    with pytest.raises(DataError):
        create_method("labeled_patchcore").fit(FitInputs(np.zeros((2, 4, 2, 2), np.float32)))


def test_labeled_patchcore_weight_is_continuous_where_two_bank_rows_tie():
    """A patch equidistant from two bank rows with different neighbours: the spec's weight jumps between the rows'
    weights (so torch and onnxruntime, whose float32 sums differ by ~1e-6, disagreed on real data); the head
    blends the two inside its tie band, is exact outside it, and the artefact's ONNX agrees at the tie."""
    import onnxruntime as ort

    from adtk.toolkit.methods.labeled_patchcore import WeightedBankDistance
    from adtk.toolkit.search import bank_neighbours

    # rows 0 and 1 are both sqrt(10) from (0, 3); row 0's neighbours are close to it, row 1's are far
    bank = np.array([[1, 0], [-1, 0], [1.1, -0.2], [1.2, -0.3], [-1.5, -1], [-2, -1.5]], np.float32)
    neighbours = bank_neighbours(bank, 3)
    assert neighbours[0].tolist() == [0, 2, 3] and neighbours[1].tolist() == [1, 4, 5]
    head = WeightedBankDistance(bank, neighbours)
    offsets = [-1e-2, -1e-6, 0.0, 1e-6, 1e-2]  # along x: +x moves the patch towards row 0
    queries = np.array([[[x, 3.0] for x in offsets]], np.float32)
    with torch.no_grad():
        blended = head(torch.from_numpy(queries))[0].numpy()
    spec = weighted_distance(queries[0].astype(np.float64), bank.astype(np.float64), neighbours)
    jump = abs(spec[3] - spec[1])  # the spec's step across the tie
    assert jump > 0.05
    # continuous across it: 1e-6 either side moves the squared distances 4e-6 apart, 0.4% of the tie band
    assert abs(blended[3] - blended[1]) < 1e-2 * jump
    np.testing.assert_allclose(blended[2], np.mean([spec[1], spec[3]]), rtol=1e-5)  # a tie: each row half
    np.testing.assert_allclose(blended[[0, 4]], spec[[0, 4]], rtol=1e-5)  # outside the band: the spec's value
    buffer = io.BytesIO()
    torch.onnx.export(head, (torch.from_numpy(queries),), buffer, input_names=["q"], opset_version=17, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"q": queries})[0][0], blended, rtol=1e-5)


def test_semlp_parameter_count_follows_the_backbone_channels():
    count = lambda dims: sum(p.numel() for p in make_mlp(dims, 32).parameters())
    assert count(1536) == 49_217  # the paper's WRN-50-2 layer2 + layer3 (spec B.3)
    assert count(40 + 112) == 4_929  # tf_efficientnet_lite0 blocks.2 + blocks.4


def test_semlp_training_and_head():
    rng = np.random.default_rng(1)
    good = rng.normal(size=(20, 12, 3, 3)).astype(np.float32)
    defects = synthetic_defects(rng, count=6)
    method = create_method("semlp", epochs=3, learning_rate=1e-2, batch_size=16)
    state = method.fit(FitInputs(good, defects=defects))
    num_pos = defects.num_defective_patches
    assert method.last_fit["positive_patches"] == num_pos
    assert method.last_fit["pos_weight"] == pytest.approx(20 * 9 / num_pos)  # negatives / positives
    # the head is the MLP: compare with a numpy forward pass
    test = defects.features
    with torch.no_grad():
        patch_scores, image_scores = method.head(state)(torch.from_numpy(test))
    rows = test.astype(np.float64).transpose(0, 2, 3, 1)
    hidden = rows @ state.hidden_weight.T.astype(np.float64) + state.hidden_bias
    hidden = np.where(hidden > 0, hidden, 0.01 * hidden)
    logits = (hidden @ state.out_weight.T.astype(np.float64) + state.out_bias)[..., 0]
    np.testing.assert_allclose(patch_scores.numpy(), logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(image_scores.numpy(), logits.reshape(6, -1).max(1), rtol=1e-4, atol=1e-5)
    # it has learnt the planted separation: defective patches score above the good ones
    assert logits[defects.patch_masks].min() > np.median(logits[~defects.patch_masks])
    probability = create_method("semlp", score="probability").head(state)
    with torch.no_grad():
        np.testing.assert_allclose(probability(torch.from_numpy(test)).patch_scores.numpy(), 1 / (1 + np.exp(-logits)),
                                   rtol=1e-4)


@pytest.fixture(scope="module")
def labelled_dataset(tiny_dataset, tmp_path_factory):
    """The tiny data set with the first image of every test defect type moved to defects/<type>/."""
    root = tmp_path_factory.mktemp("labelled") / "data"
    shutil.copytree(tiny_dataset.root, root)
    for defect_type in ("hole", "scratch", "stain"):
        (root / "defects" / defect_type / "masks").mkdir(parents=True)
        shutil.move(root / "test" / defect_type / "000.png", root / "defects" / defect_type / "000.png")
        shutil.move(root / "ground_truth" / defect_type / "000_mask.png",
                    root / "defects" / defect_type / "masks" / "000_mask.png")
    return index_dataset(root)


def test_labeled_patchcore_builds_from_a_defects_folder(labelled_dataset, tmp_path):
    from adtk.toolkit.build import BuildConfig, build

    assert len(labelled_dataset.defects) == 3 and all(s.mask_path for s in labelled_dataset.defects)
    config = BuildConfig(data=labelled_dataset.root, out=tmp_path / "model.onnx", method="labeled-patchcore",
                         method_params={"coreset_ratio": 0.25}, random_weights=True, image_size_px=64,
                         calib_fraction=0.25)
    logs = []
    result = build(config, log=logs.append, index=labelled_dataset)
    assert any("3 labelled defect images" in line for line in logs)
    assert result.manifest["method"]["name"] == "labeled_patchcore"
    assert result.manifest["method"]["fit"]["defect_bank_rows"] > 0
    assert result.manifest["training"]["labelled_defects"]["types"] == ["hole", "scratch", "stain"]
    assert_parity(result, labelled_dataset.test[::2], check_map=False)


def test_semlp_refuses_no_defects_and_builds_from_test_folders(tiny_dataset, tmp_path):
    from adtk.toolkit.build import BuildConfig, build

    config = BuildConfig(data=tiny_dataset.root, out=tmp_path / "m.onnx", method="semlp", random_weights=True,
                         image_size_px=64, calib_fraction=0.25)
    with pytest.raises(DataError, match="--defects-from-test"):
        build(config, log=lambda m: None, index=tiny_dataset)
    config.defects_from_test = ("hole",)  # the same data set, learning from test/hole
    result = build(config, log=lambda m: None, index=tiny_dataset)
    assert result.manifest["method"]["fit"]["positive_patches"] > 0
    assert_parity(result, [s for s in tiny_dataset.test if s.defect_type != "hole"][::2], check_map=False)


def test_labeled_patchcore_online_good_bank_is_the_online_sampler_over_image_batches():
    from adtk.toolkit.online_coreset import OnlineGreedyCoreset

    rng = np.random.default_rng(4)
    good = rng.normal(size=(10, 6, 4, 4)).astype(np.float32)
    method = create_method("labeled_patchcore", coreset_ratio=0.1, good_sampler="online", online_batch_images=4,
                           num_neighbors=3)
    state = method.fit(FitInputs(good, defects=synthetic_defects(rng, dims=6)))
    sampler = OnlineGreedyCoreset(0.1, seed=0)
    for start in (0, 4, 8):
        sampler.add(good[start:start + 4].transpose(0, 2, 3, 1).reshape(-1, 6))
    np.testing.assert_array_equal(state.good_bank, sampler.bank())
    assert len(state.good_bank) == 6 + 6 + 3  # floor(64 * 0.1), floor(64 * 0.1), floor(32 * 0.1)
