"""PatchCore's online sampler (seed 003, B.5) and the build's streaming fit: the same bank as the online
sampler fed the same image groups by hand, a bank bounded by the ratio, and a build that never holds all
the training features (FeatureExtractorPipeline.features is never called)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from adtk.toolkit.methods.base import FitInputs
from adtk.runtime.errors import ConfigError
from adtk.toolkit.methods.registry import create_method
from adtk.toolkit.online_coreset import OnlineGreedyCoreset


def online_reference_bank(features: np.ndarray, ratio: float, group_images: int, seed: int,
                          window_rows: int | None = None) -> np.ndarray:
    """OnlineGreedyCoreset fed groups of `group_images` images' patch rows in (image, y, x) order."""
    sampler = OnlineGreedyCoreset(ratio, seed=seed, window_rows=window_rows)
    dims = features.shape[1]
    for start in range(0, len(features), group_images):
        group = features[start:start + group_images]
        rows = np.stack([group[i, :, y, x] for i in range(len(group))
                         for y in range(group.shape[2]) for x in range(group.shape[3])]).reshape(-1, dims)
        sampler.add(rows)
    return sampler.bank()


def test_fit_stream_gives_the_online_samplers_bank_whatever_the_batch_sizes():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(10, 6, 4, 4)).astype(np.float32)
    method = create_method("patchcore", coreset_ratio=0.1, num_neighbors=3, sampler="online",
                           online_batch_images=4, seed=2)
    assert method.fits_streaming()
    sizes = (3, 3, 3, 1)  # backbone batches that do not line up with the sampler's 4-image groups
    starts = np.cumsum((0,) + sizes[:-1])
    reports = []
    state = method.fit_stream((features[s:s + n] for s, n in zip(starts, sizes)), len(features),
                              progress=lambda done, total: reports.append((done, total)))
    reference = online_reference_bank(features, 0.1, 4, seed=2)
    np.testing.assert_array_equal(state.memory_bank, reference)
    # each 4-image group adds max(1, floor(64 * 0.1)) = 6 rows, the last 2-image group floor(32 * 0.1) = 3
    assert state.memory_bank.shape == (6 + 6 + 3, 6) <= (int(0.1 * 160), 6)
    assert reports == [(4, 10), (8, 10), (10, 10)]
    assert state.bank_neighbours.shape == (15, 3)
    np.testing.assert_array_equal(state.bank_neighbours[:, 0], np.arange(15))
    # fit on features already held uses the same sampler and groups
    np.testing.assert_array_equal(method.fit(FitInputs(features)).memory_bank, reference)


def test_online_window_rows_reaches_the_sampler_and_0_is_the_papers_single_window():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(12, 6, 4, 4)).astype(np.float32)
    windowed = create_method("patchcore", coreset_ratio=0.1, sampler="online", online_batch_images=2,
                             online_window_rows=64, seed=1)  # windows of 4 images (2 groups of 2 x 16 rows)
    state = windowed.fit_stream(iter(np.array_split(features, 5)), len(features))
    np.testing.assert_array_equal(state.memory_bank, online_reference_bank(features, 0.1, 2, seed=1, window_rows=64))
    paper = create_method("patchcore", coreset_ratio=0.1, sampler="online", online_batch_images=2,
                          online_window_rows=0, seed=1)
    paper_bank = paper.fit_stream(iter(np.array_split(features, 5)), len(features)).memory_bank
    np.testing.assert_array_equal(paper_bank, online_reference_bank(features, 0.1, 2, seed=1))
    assert not np.array_equal(paper_bank, state.memory_bank)
    with pytest.raises(ConfigError, match="online_window_rows"):
        create_method("patchcore", sampler="online", online_window_rows=-1)


def test_online_bank_is_bounded_by_the_ratio_and_keeps_far_outliers():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(32, 5, 3, 3)).astype(np.float32)
    features[13, :, 1, 2] += 40.0  # a far outlier: a k-center sampler must keep it
    method = create_method("patchcore", coreset_ratio=0.05, sampler="online", online_batch_images=8)
    state = method.fit_stream(iter(np.array_split(features, 7)), len(features))
    patches = 32 * 9
    assert len(state.memory_bank) == 4 * max(1, int(8 * 9 * 0.05)) <= max(4, 0.05 * patches)
    assert np.any(np.all(state.memory_bank == features[13, :, 1, 2], axis=1))


def test_sampler_options_are_checked_and_an_offline_greedy_stays_the_default():
    # issue 17: the default offline greedy is the grouped one; the paper's global greedy is sampler="exact"
    assert not create_method("patchcore").fits_streaming()
    assert create_method("patchcore").params()["sampler"] == "grouped"
    assert not create_method("patchcore", sampler="exact").fits_streaming()
    with pytest.raises(ConfigError, match="sampler"):
        create_method("patchcore", sampler="random")
    with pytest.raises(ConfigError, match="online_batch_images"):
        create_method("patchcore", sampler="online", online_batch_images=0)
    with pytest.raises(NotImplementedError):
        create_method("mahalanobis").fit_stream(iter(()), 0)


@pytest.fixture(scope="module")
def streamed_build(tiny_dataset, tmp_path_factory):
    """`adtk build --param sampler=online` on the tiny set, with the all-features extraction made to fail."""
    from adtk.toolkit import build as build_module
    from adtk.toolkit.cli.main import cli

    def refuse(*args, **kwargs):
        raise AssertionError("the streaming build called FeatureExtractorPipeline.features")

    out = tmp_path_factory.mktemp("streamed") / "model.onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build_module.FeatureExtractorPipeline, "features", refuse)
        result = CliRunner().invoke(cli, [
            "build", "--data", str(tiny_dataset.root), "-o", str(out), "--random-weights", "--size", "64",
            "--coreset-ratio", "0.05", "--param", "sampler=online", "--param", "online_batch_images=3",
            "--param", "num_neighbors=3", "--calib-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert "features_and_fit" in result.output
    return out


def test_streaming_build_writes_an_artefact_the_runtime_loads_and_records_the_sampler(streamed_build, tiny_dataset):
    from adtk.runtime.artefact import read_artefact
    from adtk.runtime.detector import Detector
    from adtk.runtime.images import read_image

    manifest = read_artefact(streamed_build).manifest
    assert manifest["method"]["params"]["sampler"] == "online"
    assert manifest["method"]["params"]["online_batch_images"] == 3
    fit_images = manifest["training"]["num_fit_images"]
    assert fit_images == 12  # 16 train images, 4 held out
    bank_rows = manifest["method"]["fit"]["memory_bank_rows"]
    patches_per_image = (64 // 8) ** 2  # lite0 blocks.2 is stride 8
    groups = -(-fit_images // 3)
    assert bank_rows == sum(max(1, int(min(3, fit_images - 3 * g) * patches_per_image * 0.05))
                            for g in range(groups))
    detector = Detector.load(streamed_build, backend="cpu")
    images = [read_image(s.path) for s in tiny_dataset.test[:4]]  # sizes differ: the artefact resizes
    prediction = detector.predict(images)
    assert prediction.pred_score.shape == (4,) and np.all((prediction.pred_score >= 0) & (prediction.pred_score <= 1))
    assert np.all(np.isfinite(prediction.raw_score)) and np.all(prediction.raw_score >= 0)


def test_streaming_build_bank_equals_the_in_memory_online_fit(tiny_dataset, tmp_path):
    """The bank of the streaming build == PatchCore(sampler=online).fit on all fit features extracted at once
    through the build's own modules (so the streaming extraction loses, reorders or changes nothing)."""
    from adtk.toolkit.build import BuildConfig, FeatureExtractorPipeline, build

    params = {"coreset_ratio": 0.05, "sampler": "online", "online_batch_images": 5, "num_neighbors": 1}
    config = BuildConfig(data=tiny_dataset.root, out=tmp_path / "model.onnx", method_params=params,
                         random_weights=True, image_size_px=64, calib_fraction=0.25)
    result = build(config, log=lambda message: None, index=tiny_dataset)
    graph = result.graph
    features, used = FeatureExtractorPipeline(graph.preprocess, graph.backbone, graph.embedding, 4).features(
        result.fit_samples, skip_bad=False)
    assert [s.path for s in used] == [s.path for s in result.fit_samples]
    expected = create_method("patchcore", **params).fit(FitInputs(features)).memory_bank
    streamed = (graph.head.bank_t_neg2 * -0.5).t().numpy()
    np.testing.assert_array_equal(streamed, expected)
    assert "fit" not in result.timings_s and "features_and_fit" in result.timings_s


def test_jl_dims_are_scikit_learns():
    from sklearn.random_projection import johnson_lindenstrauss_min_dim

    from adtk.toolkit.online_coreset import jl_min_dim

    for rows in (2, 50, 784, 6272, 8192, 100_000):
        for eps in (0.1, 0.5, 0.9):
            assert jl_min_dim(rows, eps) == int(johnson_lindenstrauss_min_dim(rows, eps=eps))
