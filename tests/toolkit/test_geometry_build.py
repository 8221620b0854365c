"""Builds with non-square input, --size auto and in-graph tiling (random tiny backbone, small tall frames): the
artefact agrees with the torch reference, maps come out at the model's H x W, and bad geometry is refused before
any feature is extracted, with nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from adtk.runtime.artefact import read_artefact
from adtk.runtime.detector import Detector
from adtk.runtime.errors import ConfigError
from adtk.toolkit.build import BuildConfig, FeatureExtractorPipeline, build
from adtk.toolkit.cli.main import cli
from adtk.toolkit.data import index_dataset
from tests.conftest import assert_parity


def _surface(rng, height, width):
    """A smooth random grayscale texture (a few octaves of upsampled noise), uint8 [H, W]."""
    image = np.zeros((height, width))
    for cells in (4, 8, 16):
        noise = rng.normal(0, 1, (cells * height // width + 1, cells))
        image += np.asarray(Image.fromarray(noise.astype(np.float32)).resize((width, height), Image.BILINEAR))
    return np.clip(128 + 20 * image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tall_dataset(tmp_path_factory):
    """Tall frames (about 160 x 64 px, H x W) with thin dark scratches and masks, MVTec layout."""
    root = tmp_path_factory.mktemp("tall")
    rng = np.random.default_rng(0)
    for split, count in (("train/good", 12), ("test/good", 4), ("test/scratch", 4)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            height, width = 160 + int(rng.integers(-8, 9)), 64 + int(rng.integers(-4, 5))
            image = _surface(rng, height, width)
            if split == "test/scratch":
                mask = np.zeros_like(image, dtype=bool)
                x = int(rng.integers(10, width - 10))
                mask[30:110, x:x + 2] = True
                image[mask] = image[mask] // 3
                (root / "ground_truth/scratch").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"ground_truth/scratch/{i:03d}_mask.png")
            Image.fromarray(image).convert("RGB").save(root / split / f"{i:03d}.png")
    return index_dataset(root)


def _config(tall_dataset, tmp_path, **overrides):
    base = dict(data=tall_dataset.root, out=tmp_path / "model.onnx", method="patchcore",
                method_params={"coreset_ratio": 0.5}, backbone="tf_efficientnet_lite0", random_weights=True,
                calib_fraction=0.25)
    return BuildConfig(**{**base, **overrides})


def test_tiled_build_scores_tiles_in_the_graph_and_matches_the_torch_reference(tall_dataset, tmp_path):
    # the head's image score (PatchCore's default is the map's maximum: the tiled CLI build below checks that one)
    result = build(_config(tall_dataset, tmp_path, image_size_px="auto", tile="64:16", image_score_from="head"),
                   log=lambda m: None, index=tall_dataset)
    manifest = result.manifest
    assert manifest["input"]["model_size_px"] == [160, 64]  # aspect kept, short side = the tile
    assert manifest["input"]["tiling"]["grid"] == [3, 1]
    assert manifest["input"]["tiling"]["row_starts"] == [0, 48, 96]
    assert_parity(result, tall_dataset.test)
    prediction = Detector.load(result.artefact, backend="cpu").predict([tall_dataset.test[0].path] * 2)
    assert prediction.anomaly_map.shape == (2, 160, 64) and prediction.pred_score.shape == (2,)
    # the image score is the maximum of the tiles' scores (the torch reference, tile by tile)
    graph = result.graph
    frame = torch.from_numpy(np.array(Image.open(tall_dataset.test[5].path).convert("RGB")))[None]
    with torch.no_grad():
        tiles = graph.backbone_inputs(frame)
        tile_scores = graph.head(graph.embedding(graph.backbone(tiles))).image_score
        assert tiles.shape == (3, 3, 64, 64)
        torch.testing.assert_close(graph.raw_scores(frame)[0], tile_scores.max().reshape(1))


@pytest.mark.parametrize("method, params", [("padim", {"num_channels": 20}), ("patchcore", {"coreset_ratio": 0.5})])
def test_non_square_size_gives_an_h_by_w_grid_and_maps(tall_dataset, tmp_path, method, params):
    result = build(_config(tall_dataset, tmp_path, method=method, method_params=params, image_size_px="128x64"),
                   log=lambda m: None, index=tall_dataset)
    assert result.manifest["input"]["model_size_px"] == [128, 64]
    if method == "padim":
        assert result.manifest["method"]["fit"]["grid"] == [16, 8]  # stride 8: H x W positions
    prediction = Detector.load(result.artefact, backend="cpu").predict([tall_dataset.test[0].path])
    assert prediction.anomaly_map.shape == (1, 128, 64)
    assert_parity(result, tall_dataset.test[:4])


def test_size_auto_keeps_the_training_aspect_ratio(tall_dataset, tmp_path):
    result = build(_config(tall_dataset, tmp_path, image_size_px="auto:4096"), log=lambda m: None, index=tall_dataset)
    height, width = result.manifest["input"]["model_size_px"]
    assert (height, width) == (96, 48)  # median 2.5 : 1 at 4096 px, each side a multiple of the stride 16
    assert result.manifest["input"]["size_requested"] == "auto:4096"


def test_the_default_size_keeps_tall_frames_tall_and_says_so(tall_dataset, tmp_path):
    """No --size: tall training images (median 2.5 : 1) are not squashed into a square; the short side is 256 px."""
    from adtk.toolkit.build import build_geometry

    config = BuildConfig(data=tall_dataset.root, out=tmp_path / "model.onnx")
    logged = []
    geometry, finer = build_geometry(config, 16, tall_dataset.train, logged.append)
    height, width = geometry.model_hw
    assert width == 256 and height % 16 == 0 and 2.4 <= height / width <= 2.7 and geometry.tiles is None
    assert finer == 1.0  # frames 64 px wide are not enlarged past the 256-px short side either
    assert any(f"{height}x{width}" in line for line in logged)
    assert not (tmp_path / "model.onnx").exists()


def test_the_default_size_keeps_tall_frames_at_their_own_resolution_with_the_bank_of_256_px(tmp_path):
    """Tall training frames 400 px wide: plain auto keeps their resolution (1008 x 400, not 640 x 256), and a
    default PatchCore's coreset ratio shrinks by the pixel ratio so its bank holds the rows it would at 256 px; a
    ratio the user gave, a --target build and a method without a bank knob are left alone."""
    from adtk.toolkit.build import bank_rows_as_at_256, build_geometry
    from adtk.toolkit.data import Sample
    from adtk.toolkit.geometry import resolve_geometry
    from adtk.toolkit.methods.registry import create_method

    samples = []
    for i in range(3):
        Image.new("RGB", (400, 1000 + 8 * i)).save(tmp_path / f"{i}.png")  # headers are all that is read
        samples.append(Sample(tmp_path / f"{i}.png", 0, "good", None))
    logged = []
    config = BuildConfig(data=tmp_path, out=tmp_path / "model.onnx")
    geometry, finer = build_geometry(config, 16, samples, logged.append)
    assert geometry.model_hw == (1008, 400) and finer == pytest.approx(1008 * 400 / (640 * 256))
    method = bank_rows_as_at_256(config, create_method("patchcore"), finer, logged.append)
    assert method.params()["coreset_ratio"] == pytest.approx(0.1 / finer)
    assert any("coreset_ratio 0.1 -> " in line for line in logged)
    given = BuildConfig(data=tmp_path, out=tmp_path / "model.onnx", method_params={"coreset_ratio": 0.1})
    assert bank_rows_as_at_256(given, create_method("patchcore", coreset_ratio=0.1), finer,
                               logged.append).params()["coreset_ratio"] == 0.1
    for bank_method in ("ldknn", "reb"):  # LDKNN declared no knob: its bank kept 10% of 3.8x the patches
        assert bank_rows_as_at_256(config, create_method(bank_method), finer,
                                   logged.append).params()["coreset_ratio"] == pytest.approx(0.1 / finer)
    assert bank_rows_as_at_256(config, create_method("padim"), finer, logged.append).params() == \
        create_method("padim").params()
    targeted = BuildConfig(data=tmp_path, out=tmp_path / "model.onnx", target="x86_cpu")
    assert build_geometry(targeted, 16, samples, logged.append) == (resolve_geometry("auto", None, 16, 1008 / 400), 1.0)


@pytest.mark.parametrize("size, tile, message", [
    ("0", None, "positive"), ("-64", None, "positive"), ("100", None, "multiple of the backbone's deepest stride"),
    ("64", "128", "larger than the frame"), ("auto", "40", "multiple of the backbone's deepest stride"),
    ("64x64", "64:64", "smaller than the tile"),
])
def test_bad_geometry_is_refused_before_any_feature_and_writes_nothing(tall_dataset, tmp_path, monkeypatch, size,
                                                                       tile, message):
    def no_features(*args, **kwargs):
        raise AssertionError("features were extracted before the geometry was checked")

    monkeypatch.setattr(FeatureExtractorPipeline, "feature_batches", no_features)
    with pytest.raises(ConfigError, match=message):
        build(_config(tall_dataset, tmp_path, image_size_px=size, tile=tile), log=lambda m: None, index=tall_dataset)
    assert list(tmp_path.iterdir()) == []


def test_cli_size_and_tile_errors_are_one_line_and_write_nothing(tall_dataset, tmp_path):
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(cli, ["build", "--data", str(tall_dataset.root), "-o", str(out), "--random-weights",
                                      "--size", "64", "--tile", "0"])
    assert result.exit_code == 2
    assert "--tile" in result.output and "positive" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_inspect_shows_the_geometry(tall_dataset, tmp_path):
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(cli, ["build", "--data", str(tall_dataset.root), "-o", str(out), "--random-weights",
                                      "--tile", "64", "--coreset-ratio", "0.5", "--max-train-images", "6",
                                      "--image-score-from", "map_max"])
    assert result.exit_code == 0, result.output
    shown = CliRunner().invoke(cli, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "160x64 px" in shown.output and "3 tiles" in shown.output
    assert "image score from map_max" in shown.output
    manifest = read_artefact(out).manifest
    assert manifest["input"]["tile_requested"] == "64"
    assert manifest["postprocess"]["image_score_from"] == manifest["build_config"]["image_score_from"] == "map_max"
    # tiled: the image score is the maximum of the stitched frame map, not of any one tile's scores
    outputs = Detector.load(out, backend="cpu").backend.run(
        {"frames": np.array(Image.open(tall_dataset.test[5].path).convert("RGB"))[None]})
    assert outputs["raw_anomaly_map"].shape[1:] == (160, 64)
    assert float(outputs["raw_score"][0]) == float(outputs["raw_anomaly_map"][0].max())


@pytest.mark.parametrize("via", ["api", "cli"])
def test_unknown_image_score_source_is_refused_before_any_feature(tall_dataset, tmp_path, monkeypatch, via):
    def no_features(*args, **kwargs):
        raise AssertionError("features were extracted before --image-score-from was checked")

    monkeypatch.setattr(FeatureExtractorPipeline, "feature_batches", no_features)
    if via == "api":
        with pytest.raises(ConfigError, match="'mapmax'.*expected one of head, map_max"):
            build(_config(tall_dataset, tmp_path, image_score_from="mapmax"), log=lambda m: None, index=tall_dataset)
    else:
        result = CliRunner().invoke(cli, ["build", "--data", str(tall_dataset.root), "-o", str(tmp_path / "m.onnx"),
                                          "--random-weights", "--image-score-from", "mapmax"])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "--image-score-from" in result.output and "map_max" in result.output
    assert list(tmp_path.iterdir()) == []


def test_ensemble_of_two_backbones_standardises_members_and_matches_the_torch_reference(tall_dataset, tmp_path):
    """Two members (a fine stride-4 stage set and the default stages), non-square: one artefact, parity with torch.
    Its image score is the averaged map's maximum (--image-score-from map_max: that path's ensemble parity)."""
    config = _config(tall_dataset, tmp_path, image_size_px="128x64", backbone="tf_efficientnet_lite0",
                     stages=("blocks.1", "blocks.2"), ensemble=("mobilenetv2_100",), image_score_from="map_max",
                     records={"chosen_by": "a caller's record"})
    result = build(config, log=lambda m: None, index=tall_dataset)
    # the caller's facts reach the manifest's training section (--method auto records its search there)
    assert result.manifest["training"]["chosen_by"] == "a caller's record"
    members = result.manifest["ensemble"]["members"]
    assert [m["backbone"]["name"] for m in members] == ["tf_efficientnet_lite0", "mobilenetv2_100"]
    assert members[0]["backbone"]["strides"] == [4, 8]
    assert_parity(result, tall_dataset.test[:4])
    frame = torch.from_numpy(np.array(Image.open(tall_dataset.test[6].path).convert("RGB")))[None]
    outputs = Detector.load(result.artefact, backend="cpu").backend.run({"frames": frame.numpy()})
    assert float(outputs["raw_score"][0]) == float(outputs["raw_anomaly_map"][0].max())  # the averaged map's max
    with torch.no_grad():
        raw_score, raw_map = result.graph.raw_scores(frame)
        assert float(raw_score[0]) == float(raw_map[0].max())
        # with the head's score, the raw score is the mean of the members' standardised raw scores
        result.graph.image_score_from = "head"
        expected = np.mean([(float(member.raw_scores(frame)[0][0]) - m["standardisation"]["score_mean"])
                            / m["standardisation"]["score_std"] for member, m in zip(result.graph.members, members)])
        assert float(result.graph.raw_scores(frame)[0][0]) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # held-out good images: each member standardised to mean 0, std 1
    for m in members:
        assert m["standardisation"]["score_std"] > 0


@pytest.mark.parametrize("overrides, message", [
    (dict(ensemble=("tf_efficientnet_lite0",)), "twice"),
    (dict(ensemble=("mobilenetv2_100:blocks.3",)), "unknown stage 'blocks.3'"),
    (dict(ensemble=("mobilenetv2_100",), refine="sroc:0.1"), "does not support --refine"),
    (dict(stages=("blocks.9",)), "unknown stage"),
])
def test_bad_backbone_choices_are_refused_before_any_feature(tall_dataset, tmp_path, monkeypatch, overrides, message):
    monkeypatch.setattr(FeatureExtractorPipeline, "feature_batches", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("features were extracted before the backbone choice was checked")))
    with pytest.raises(ConfigError, match=message):
        build(_config(tall_dataset, tmp_path, **overrides), log=lambda m: None, index=tall_dataset)
    assert list(tmp_path.iterdir()) == []
