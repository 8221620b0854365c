"""The README's first command: `adtk demo` builds, evaluates and predicts on the bundled example."""

from __future__ import annotations

import json

from click.testing import CliRunner

from adtk.runtime.artefact import read_artefact
from adtk.toolkit.cli.main import cli
from tests.conftest import require_offline_lite0_weights


def test_demo_runs_end_to_end_with_real_weights(tmp_path):
    require_offline_lite0_weights()
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    manifest = read_artefact(tmp_path / "demo" / "model.onnx").manifest
    assert manifest["backbone"]["weights_source"].startswith("package:")
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert len(lines) == 2  # one good and one defective example image scored
    table = {line.split()[0] + " " + line.split()[1]: line.split()[-1]
             for line in result.output.splitlines() if line.startswith(("image AUROC", "pixel AUROC"))}
    # The synthetic defects are plain to see; real weights must find them (a floor, not the figure).
    assert float(table["image AUROC"]) > 0.8, result.output
    assert float(table["pixel AUROC"]) > 0.8, result.output
