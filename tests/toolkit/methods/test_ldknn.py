"""LDKNN (REB spec §7-8) against hand-computed answers and brute-force numpy, and LDKNN/REB artefacts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtk.toolkit.methods.base import FitInputs
from adtk.runtime.errors import ConfigError
from adtk.toolkit.methods.ldknn import local_densities
from adtk.toolkit.methods.registry import create_method

# A hand-made 2-D bank: a dense cluster (side 0.1) and a sparse one (side 6).
DENSE = [(0.0, 0.0), (0.1, 0.0), (0.0, 0.1), (0.1, 0.1)]
SPARSE = [(10.0, 0.0), (16.0, 0.0), (10.0, 6.0), (16.0, 6.0)]


def as_features(points) -> np.ndarray:
    """points [N, 2] -> features [N, 2, 1, 1] (one patch per 'image')."""
    return np.asarray(points, dtype=np.float32)[:, :, None, None]


def score(method, state, points) -> np.ndarray:
    with torch.no_grad():
        return method.head(state)(torch.from_numpy(as_features(points))).patch_scores.numpy().ravel()


@pytest.mark.parametrize("distance, alpha, expected", [
    # K = 2. Squared: every dense point has two neighbours at 0.1 (0.01 squared) -> d = 0.01; every sparse
    # point two at 6 (36) -> d = 36.  q1 = (-1, 0): nearest (0, 0) at 1 -> 1 - a*0.01.  q2 = (10, -1):
    # nearest (10, 0) at 1 -> 1 - a*36.  q3 = (4.5, 0): raw nearest is (0.1, 0) at 4.4 (19.36) -> 19.36 - a*0.01,
    # although (10, 0) at 5.5 (30.25) would win min(dist - a*d) = 30.25 - 36: the argmin comes first (spec §8).
    ("squared", 1.0, [1 - 0.01, 1 - 36, 19.36 - 0.01]),
    ("squared", 0.5, [1 - 0.005, 1 - 18, 19.36 - 0.005]),
    # Euclidean (the paper): d = 0.1 and 6; distances 1, 1, 4.4.
    ("euclidean", 1.0, [1 - 0.1, 1 - 6, 4.4 - 0.1]),
])
def test_density_term_on_a_hand_made_bank(distance, alpha, expected):
    method = create_method("ldknn", coreset_ratio=1.0, num_neighbors=2, alpha=alpha, distance=distance,
                           image_score="max")
    state = method.fit(FitInputs(as_features(DENSE + SPARSE)))
    want_density = [0.01] * 4 + [36.0] * 4 if distance == "squared" else [0.1] * 4 + [6.0] * 4
    np.testing.assert_allclose(state.densities, want_density, rtol=1e-4)
    scores = score(method, state, [(-1.0, 0.0), (10.0, -1.0), (4.5, 0.0)])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    # same distance to the nearest item, but the query beside the dense cluster is the more anomalous one
    assert scores[0] > scores[1]


def test_alpha_zero_is_plain_nearest_neighbour_distance():
    method = create_method("ldknn", coreset_ratio=1.0, num_neighbors=2, alpha=0.0, image_score="max")
    state = method.fit(FitInputs(as_features(DENSE + SPARSE)))
    np.testing.assert_allclose(score(method, state, [(-1.0, 0.0), (10.0, -1.0)]), [1.0, 1.0], rtol=1e-5)


def test_densities_of_coreset_rows_are_searched_in_the_full_bank():
    points = DENSE + SPARSE
    method = create_method("ldknn", coreset_ratio=0.5, num_neighbors=2, image_score="max", seed=0)
    state = method.fit(FitInputs(as_features(points)))
    assert state.memory_bank.shape == (4, 2)
    full = np.asarray(points)
    for row, density in zip(state.memory_bank, state.densities):
        own = int(np.argmin(np.abs(full - row).sum(1)))
        sq = ((full - full[own]) ** 2).sum(1)
        sq[own] = np.inf
        assert density == pytest.approx(np.sort(sq)[:2].mean(), rel=1e-4)


def test_self_is_excluded_by_index_so_a_duplicate_counts_as_a_neighbour():
    bank = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    densities = local_densities(bank, np.arange(3), num_neighbors=1, distance="squared")
    np.testing.assert_allclose(densities, [0.0, 0.0, 25.0], atol=1e-5)


def brute_force(features, bank, full_bank, num_neighbors, alpha, distance, image_score, selected):
    """float64 numpy reference: densities from all pairwise distances, argmin, gather, pooling."""
    full = full_bank.astype(np.float64)
    pair = ((full[:, None] - full[None]) ** 2).sum(-1)
    np.fill_diagonal(pair, np.inf)
    knn = np.sort(pair[selected], axis=1)[:, :num_neighbors]
    density = (knn if distance == "squared" else np.sqrt(knn)).mean(1)
    batch, dims, height, width = features.shape
    queries = features.astype(np.float64).transpose(0, 2, 3, 1).reshape(batch, -1, dims)
    sq = ((queries[:, :, None] - bank.astype(np.float64)[None, None]) ** 2).sum(-1)
    nearest = sq.argmin(-1)
    dist = np.take_along_axis(sq, nearest[..., None], -1)[..., 0]
    dist = dist if distance == "squared" else np.sqrt(dist)
    patch = (dist - alpha * density[nearest]).reshape(batch, height, width)
    if image_score == "max":
        image = patch.max((1, 2))
    elif image_score == "pooled":
        h3, w3 = height // 3, width // 3
        image = patch[:, : h3 * 3, : w3 * 3].reshape(batch, h3, 3, w3, 3).mean((2, 4)).max((1, 2))
    else:
        padded = np.pad(patch, ((0, 0), (1, 1), (1, 1)), constant_values=np.nan)
        windows = np.stack([padded[:, i: i + height, j: j + width] for i in range(3) for j in range(3)])
        image = np.nanmean(windows, axis=0).max((1, 2))
    return patch, image


@pytest.mark.parametrize("distance", ["squared", "euclidean"])
@pytest.mark.parametrize("image_score", ["pooled", "max", "pooled_overlapping"])
def test_head_matches_brute_force(distance, image_score):
    rng = np.random.default_rng(4)
    train = rng.normal(size=(4, 6, 7, 8)).astype(np.float32)
    method = create_method("ldknn", coreset_ratio=0.3, num_neighbors=3, alpha=0.7, distance=distance,
                           image_score=image_score, seed=2)
    state = method.fit(FitInputs(train))
    full_bank = train.transpose(0, 2, 3, 1).reshape(-1, 6)
    selected = np.array([int(np.argmin(np.abs(full_bank - row).sum(1))) for row in state.memory_bank])
    test = rng.normal(size=(3, 6, 7, 8)).astype(np.float32)
    with torch.no_grad():
        patch_scores, image_scores = method.head(state)(torch.from_numpy(test))
    ref_patch, ref_image = brute_force(test, state.memory_bank, full_bank, 3, 0.7, distance, image_score, selected)
    np.testing.assert_allclose(patch_scores.numpy(), ref_patch, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(image_scores.numpy(), ref_image, rtol=1e-4, atol=1e-4)


def test_config_errors():
    with pytest.raises(ConfigError):
        create_method("ldknn", distance="cosine")
    with pytest.raises(ConfigError):
        create_method("ldknn", image_score="mean")
    with pytest.raises(ConfigError):
        create_method("ldknn", num_neighbors=0)
    with pytest.raises(ConfigError):
        create_method("reb", preset="slow")


@pytest.fixture(scope="module")
def tiny_reb_build(tiny_dataset, tmp_path_factory):
    """REB on the tiny data set: random weights at 64 px, a 3-update fine-tune (monkeypatched preset), built for
    x86_cpu with one sizing round forced (the planner asks once for half the coreset), so the fine-tuning report
    must survive the method's refit."""
    from adtk.toolkit import build as build_module
    from adtk.toolkit.build import BuildConfig, build
    from adtk.toolkit.sizing import SizingPlan
    from adtk.toolkit.training import finetune

    mp = pytest.MonkeyPatch()
    mp.setitem(finetune.PRESETS, "tiny", finetune.FinetunePreset("tiny", updates=3, sources_per_pass=1,
                                                                 accumulation=1, frozen_updates=1))
    planned = []

    def plan_once_smaller(fp32_model, target, precision, method, precision_is_free):
        planned.append(method.params()["coreset_ratio"])
        if len(planned) == 1:
            return SizingPlan(False, precision, {"coreset_ratio": 0.125}, message="forced by the test")
        return SizingPlan(True, precision, message="fits")

    mp.setattr(build_module, "plan_for_target", plan_once_smaller)
    try:
        config = BuildConfig(data=tiny_dataset.root, out=tmp_path_factory.mktemp("reb") / "reb.onnx", method="reb",
                             # validate=False: this build checks the fine-tuned weights' artefact, whatever the
                             # keep-or-revert check would say (tested below)
                             method_params={"preset": "tiny", "coreset_ratio": 0.25, "validate": False},
                             random_weights=True, image_size_px=64, calib_fraction=0.25, target="x86_cpu",
                             precision="fp32")
        notes = []

        class RecordingBar:  # what the CLI's click bar receives
            def __init__(self, total, label):
                self.label = label

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, steps, note=None):
                notes.append((self.label, note))

        result = build(config, log=lambda message: None, index=tiny_dataset, progress_factory=RecordingBar)
        result.progress_notes, result.planned = notes, planned
        yield result
    finally:
        mp.undo()


def test_reb_artefact_matches_its_torch_reference(tiny_reb_build, tiny_dataset):
    import onnx

    from adtk.runtime.detector import Detector
    from adtk.toolkit.backbones import create_backbone
    from adtk.toolkit.data import read_image

    manifest = tiny_reb_build.manifest
    untouched = create_backbone("tf_efficientnet_lite0", random_weights=True, seed=0)
    assert manifest["backbone"]["weights_source"] == "finetuned(reb:tiny) from random(seed=0)"
    assert manifest["backbone"]["weights_sha256"] != untouched.weights_sha256  # the fine-tuned weights
    finetune_report = manifest["method"]["fit"]["finetune"]
    assert finetune_report["preset"] == "tiny" and np.isfinite(finetune_report["final_loss"])
    # refitted once with the planner's smaller coreset (the same features), the fine-tuning report kept
    assert tiny_reb_build.planned == [0.25, 0.125]
    assert manifest["method"]["params"]["coreset_ratio"] == 0.125 and manifest["method"]["params"]["preset"] == "tiny"
    assert manifest["target"]["name"] == "x86_cpu"
    loss_notes = [note for label, note in tiny_reb_build.progress_notes if label == "finetune"]
    assert len(loss_notes) == 3 and all(note.startswith("loss ") for note in loss_notes)  # bar shows the loss
    ops = {node.op_type for node in onnx.load(str(tiny_reb_build.artefact)).graph.node}
    assert {"MatMul", "Gather"} <= ops and ops & {"ArgMin", "TopK"}  # the search is inside the graph
    detector = Detector.load(tiny_reb_build.artefact, backend="cpu")
    for sample in tiny_dataset.test[::3]:  # good and defective images
        image = read_image(sample.path)
        with torch.no_grad():
            reference = tiny_reb_build.graph(torch.from_numpy(image)[None])
        prediction = detector.predict(image[None])
        assert abs(float(reference.pred_score[0]) - float(prediction.pred_score[0])) <= 1e-4


@pytest.mark.parametrize("seed", [0, 1])
def test_reb_keeps_the_fine_tuned_weights_only_when_held_out_synthetic_defects_say_so(seed):
    """prepare_backbone with the keep-or-revert check: whichever weights it returns, the report, the log line,
    the weights source and hash agree with the decision."""
    import functools

    from adtk.toolkit.backbones import create_backbone
    from adtk.toolkit.preprocess import FramePreprocess
    from adtk.toolkit.training import finetune

    mp = pytest.MonkeyPatch()
    mp.setitem(finetune.PRESETS, "tiny", finetune.FinetunePreset("tiny", updates=2, sources_per_pass=1,
                                                                 accumulation=1, frozen_updates=1))
    try:
        method = create_method("reb", preset="tiny", coreset_ratio=0.5, seed=seed)
        lines = []
        method.log = lines.append
        make = functools.partial(create_backbone, "tf_efficientnet_lite0", random_weights=True, seed=0)
        backbone = make()
        start_sha = backbone.weights_sha256
        frames = np.random.default_rng(seed).integers(100, 140, size=(12, 48, 48, 3), dtype=np.uint8)
        chosen = method.prepare_backbone(backbone, FramePreprocess(48, backbone.mean, backbone.std), iter(frames),
                                         make).backbone
    finally:
        mp.undo()
    validation = method.finetune_report["validation"]
    assert validation["heldout_good_images"] == 4 and validation["bank_images"] == 8
    assert len(lines) == 1 and lines[0].startswith("reb: held-out synthetic defects")
    if validation["kept"] == "finetuned":
        assert chosen is method.finetuned_backbone and chosen.weights_sha256 != start_sha
        assert chosen.weights_source == "finetuned(reb:tiny) from random(seed=0)"
    else:
        assert chosen is backbone and chosen.weights_sha256 == start_sha
        assert "(reb:tiny fine-tune not shipped" in chosen.weights_source
    clear = validation["image_gain_lower_bound"] > 0 and validation["pixel_gain"] >= 0
    assert (validation["kept"] == "finetuned") == clear
    assert method.finetune_report["shipped"] == validation["kept"]
    assert method.finetune_report["shipped_reason"] == validation["reason"] and validation["reason"] in lines[0]


def clustered_rows(rows: int, dims: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(30, dims))
    return (centres[rng.integers(0, 30, rows)] + rng.normal(size=(rows, dims))).astype(np.float32)


def test_approximate_densities_agree_with_exact_ones_on_a_big_enough_bank(monkeypatch):
    from adtk.toolkit.methods import ldknn
    from adtk.toolkit.search import APPROXIMATE_MIN_ROWS

    full = clustered_rows(APPROXIMATE_MIN_ROWS)  # the smallest full bank that takes the IVF path
    rows = np.sort(np.random.default_rng(1).choice(len(full), 1600, replace=False))
    calls, ivf = [], ldknn.approximate_nearest_neighbours
    monkeypatch.setattr(ldknn, "approximate_nearest_neighbours", lambda *a, **kw: calls.append(kw) or ivf(*a, **kw))
    exact = local_densities(full, rows, num_neighbors=5, distance="squared")
    fast = local_densities(full, rows, num_neighbors=5, distance="squared", approximate=True)
    assert len(calls) == 1  # the IVF search ran once, for every query
    # a missed neighbour can only raise a density; most are found exactly, the rest barely above
    assert (fast >= exact * (1 - 1e-5)).all()
    assert np.mean(np.isclose(fast, exact, rtol=1e-5)) >= 0.9
    assert np.mean(fast / exact - 1) < 0.01
    small, small_rows = full[:4000], rows[rows < 4000]
    np.testing.assert_array_equal(local_densities(small, small_rows, 5, "squared", approximate=True),
                                  local_densities(small, small_rows, 5, "squared"))
    assert len(calls) == 1  # below APPROXIMATE_MIN_ROWS rows the search stays exact


def test_exact_sampler_and_density_search_stay_reachable(monkeypatch):
    from adtk.toolkit import coreset
    from adtk.toolkit.coreset import ApproximateGreedyCoreset

    monkeypatch.setattr(coreset, "DEFAULT_EXACT_MAX_MACS", 0)  # group these tiny rows (cheap to do globally)

    train = clustered_rows(600, seed=3).reshape(6, 10, 10, 8).transpose(0, 3, 1, 2)  # 6 images of 10 x 10
    patches = train.transpose(0, 2, 3, 1).reshape(-1, 8)
    fast = create_method("ldknn", coreset_ratio=0.1, num_neighbors=3, group_rows=200, sampler="grouped",
                         density_search="approximate").fit(FitInputs(train))
    exact_method = create_method("ldknn", coreset_ratio=0.1, num_neighbors=3, group_rows=200, sampler="exact",
                                 density_search="exact")
    exact = exact_method.fit(FitInputs(train))
    selected = ApproximateGreedyCoreset(0.1, seed=0).select(patches)  # one greedy over all 600 patches
    np.testing.assert_array_equal(exact.memory_bank, patches[selected])
    np.testing.assert_allclose(exact.densities, local_densities(patches, selected, 3, "squared"), rtol=1e-6)
    assert not np.array_equal(fast.memory_bank, exact.memory_bank)  # 3 groups of 200 rows pick other rows
    with pytest.raises(ConfigError):
        create_method("ldknn", sampler="online")
    with pytest.raises(ConfigError):
        create_method("reb", density_search="hnsw")


def test_reb_fine_tunes_a_large_model_size_on_frames_scaled_to_the_presets_budget(monkeypatch):
    """A model size over FINETUNE_MAX_PIXELS (tall frames kept at their own resolution) fine-tunes on the frames
    scaled down to it, so the fine-tune's cost does not grow with the scoring size; smaller sizes are unchanged."""
    import functools

    from adtk.toolkit.backbones import create_backbone
    from adtk.toolkit.methods import reb
    from adtk.toolkit.preprocess import FramePreprocess

    assert reb.finetune_size((256, 256)) == (256, 256) and reb.finetune_size((640, 256)) == (640, 256)
    height, width = reb.finetune_size((1248, 496))
    assert height * width <= reb.FINETUNE_MAX_PIXELS and height % 8 == 0 and width % 8 == 0
    assert abs(height / width - 1248 / 496) < 0.15
    monkeypatch.setattr(reb, "FINETUNE_MAX_PIXELS", 32 * 64)  # 96 x 48 frames -> 64 x 32
    seen = []

    def record(deep, channels, frames, normalise, preset, **kwargs):
        seen.append((frames.shape[1:3], normalise.image_size_px))
        raise RuntimeError("stop after the fine-tune's inputs")

    monkeypatch.setattr("adtk.toolkit.training.finetune.finetune_backbone", record)
    method = create_method("reb", coreset_ratio=0.5)
    make = functools.partial(create_backbone, "tf_efficientnet_lite0", random_weights=True, seed=0)
    backbone = make()
    frames = np.random.default_rng(0).integers(100, 140, size=(12, 96, 48, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError, match="stop after"):
        method.prepare_backbone(backbone, FramePreprocess((96, 48), backbone.mean, backbone.std), iter(frames), make)
    assert seen == [((64, 32), (64, 32))]
