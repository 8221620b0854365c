"""The Python build API (adtk.build): the same options, validation and artefact as `adtk build`."""

from __future__ import annotations

import pytest

import adtk
from adtk.runtime.errors import ConfigError


def test_adtk_build_returns_the_artefact_and_its_manifest(tiny_dataset, tmp_path):
    (tmp_path / "b.yaml").write_text("method: patchcore\nimage_size_px: 96\nrandom_weights: true\n")
    result = adtk.build(data=tiny_dataset.root, out=tmp_path / "m.onnx", config=tmp_path / "b.yaml",
                        image_size_px=64, method_params={"coreset_ratio": 0.2}, calib_fraction=0.25)
    assert result.artefact == tmp_path / "m.onnx" and result.artefact.is_file()
    recorded = result.manifest["build_config"]
    assert recorded["image_size_px"] == 64  # the keyword overrides the file
    assert recorded["random_weights"] is True and recorded["method_params"] == {"coreset_ratio": 0.2}
    prediction = adtk.Detector.load(result.artefact).predict([str(s.path) for s in tiny_dataset.test[:2]])
    assert prediction.pred_score.shape == (2,)


def test_adtk_build_refuses_unknown_options_before_reading_images(tmp_path):
    with pytest.raises(ConfigError, match="unknown build option 'image_size'; did you mean 'image_size_px'"):
        adtk.build(data=tmp_path, out=tmp_path / "m.onnx", image_size=64)
    with pytest.raises(ConfigError, match="no method 'padimm'"):
        adtk.build(data=tmp_path, out=tmp_path / "m.onnx", method="padimm")
    assert list(tmp_path.iterdir()) == []
