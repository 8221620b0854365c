"""Every bank method's artefact with its bank search split into chunks (export/passes/chunk_bank.py, as the
compiler splits it for onnxruntime at real bank sizes) against the torch reference: the split finds each head's
search by its shape (a MatMul by the bank, elementwise ops, a min / arg-min / top-k over the bank rows), so each
head's own structure is checked here, not only the synthetic graph of test_chunk_bank.py."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from tests.conftest import assert_parity  # noqa: E402

# A tiny build's search is [64 patches x a few hundred bank rows]: 2,048 values per chunk splits it in several
# chunks of ~32 rows, more than any head's k.
TINY_CHUNK_ELEMENTS = 2048

# (KNN's bank holds one row per training image and is searched once per frame: [1 x images] never needs a split.)
BANK_METHODS = {"patchcore": {"coreset_ratio": 0.25}, "softcore": {"coreset_ratio": 0.25},
                "ldknn": {"coreset_ratio": 0.25}}


@pytest.mark.parametrize("method", sorted(BANK_METHODS))
def test_split_bank_search_matches_the_torch_reference(tiny_dataset, tmp_path, monkeypatch, method):
    import adtk.export.compiler as compiler
    from adtk.toolkit.build import BuildConfig, build

    monkeypatch.setattr(compiler, "CPU_CACHE_CHUNK_ELEMENTS", TINY_CHUNK_ELEMENTS)
    config = BuildConfig(data=tiny_dataset.root, out=tmp_path / f"{method}.onnx", method=method,
                         method_params=BANK_METHODS[method], backbone="tf_efficientnet_lite0", random_weights=True,
                         image_size_px=64, calib_fraction=0.25)
    result = build(config, log=lambda message: None, index=tiny_dataset)
    splits = result.manifest["target"]["precision_details"]["bank_chunks"]
    assert splits and all(split["chunks"] >= 2 for split in splits)
    assert_parity(result, tiny_dataset.test[::2])
