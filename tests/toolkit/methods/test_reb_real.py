"""REB on real images: a small real build (24 magnetic-tile images, real tf_efficientnet_lite0 weights, the
default fine-tuning preset) whose artefact must match its torch reference (pred_score within 1e-4, fp32).
The full-size figures are in bench/reb_ablation.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtk.runtime.detector import Detector
from adtk.toolkit.data import index_dataset, read_image
from tests.conftest import require_magnetic_tile, require_offline_lite0_weights

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_reb_artefact_matches_torch_reference_on_real_images(tmp_path, monkeypatch):
    root = require_magnetic_tile()
    require_offline_lite0_weights()
    from dataclasses import replace

    from adtk.toolkit.build import BuildConfig, build
    from adtk.toolkit.training import finetune as finetune_module

    # the default preset with 8 updates instead of 24: parity does not depend on how long the fine-tune ran, and
    # the fine-tune is a fixed cost in the suite's slowest test (the preset's own length is bench/reb_ablation.py's job)
    monkeypatch.setitem(finetune_module.PRESETS, "fast", replace(finetune_module.PRESETS["fast"], updates=8, frozen_updates=2))

    config = BuildConfig(data=root, out=tmp_path / "reb.onnx", method="reb", method_params={"coreset_ratio": 0.1},
                         max_train_images=24, calib_fraction=0.2, seed=0)
    lines = []
    result = build(config, log=lines.append)
    finetune = result.manifest["method"]["fit"]["finetune"]
    assert finetune["updates"] == 8
    # the keep-or-revert check on held-out synthetic defects decides which weights the artefact carries, and
    # the build says which
    validation = finetune["validation"]
    assert validation["heldout_good_images"] >= 4 and validation["heldout_defect_images"] == 6 * validation["heldout_good_images"]
    assert any(line.startswith("reb: held-out synthetic defects") for line in lines)
    source = result.manifest["backbone"]["weights_source"]
    if validation["kept"] == "finetuned":
        assert source.startswith("finetuned(reb:fast) from ")
    else:
        from adtk.toolkit.backbones import create_backbone
        assert source.endswith("(reb:fast fine-tune not shipped: no clear gain on held-out synthetic defects)")
        assert result.manifest["backbone"]["weights_sha256"] == create_backbone("tf_efficientnet_lite0").weights_sha256
    # the fine-tuning runs on CUDA when present (issue 5); the artefact must match either way
    assert result.manifest["method"]["fit"]["finetune"]["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
    index = index_dataset(root)
    picks = np.random.default_rng(0).choice(len(index.test), 10, replace=False)
    detector = Detector.load(result.artefact, backend="cpu")
    worst = 0.0
    for i in picks:
        image = read_image(index.test[i].path)
        with torch.no_grad():
            reference = result.graph(torch.from_numpy(image)[None])
        worst = max(worst, abs(float(reference.pred_score[0]) - float(detector.predict(image[None]).pred_score[0])))
    assert worst <= 1e-4
