"""Class 4 of issue 14: a trust chain that holds. A manifest edited and re-sealed by someone with write
access is refused when it disagrees with the graph it describes (threshold, normalisation, model size)."""

from __future__ import annotations

import pytest

from adtk.runtime.artefact import verify_bytes
from adtk.runtime.errors import ArtefactError
from tests.conftest import reseal_with_manifest_edit


def _set(path: str, value):
    def edit(manifest):
        *parents, leaf = path.split(".")
        node = manifest
        for key in parents:
            node = node[key]
        node[leaf] = value
    return edit


@pytest.mark.parametrize(("path", "value", "named"), [
    ("calibration.threshold", 1e9, "normaliser.threshold"),
    ("calibration.threshold", -3.0, "normaliser.threshold"),
    ("calibration.score_max", 1e6, "normaliser.inv_span"),
    ("calibration.map_threshold", 0.0, "map_normaliser.threshold"),
    ("input.normalise.mean", [0.485, 0.456, 0.406], "preprocess.offset"),
    ("input.model_size_px", [256, 256], "model size"),
])
def test_a_resealed_manifest_that_disagrees_with_its_graph_is_refused(tiny_build, path, value, named):
    original = tiny_build.artefact.read_bytes()
    verify_bytes(original)  # the untouched build agrees with itself
    edited = reseal_with_manifest_edit(original, _set(path, value))
    with pytest.raises(ArtefactError, match=f"disagrees with the graph.*{named}"):
        verify_bytes(edited)


def test_a_resealed_manifest_edit_the_graph_does_not_hold_still_loads(tiny_build):
    # a renamed method is a label only the manifest holds: integrity cannot tell; a signature can (below)
    edited = reseal_with_manifest_edit(tiny_build.artefact.read_bytes(), _set("method.name", "renamed"))
    assert verify_bytes(edited).manifest["method"]["name"] == "renamed"
