"""`adtk research pollution ... --refine ... --report DIR` end to end on the tiny data set (one build), and
`adtk eval --pollution`, the old spelling, forwarding to it."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
from click.testing import CliRunner

from adtk.toolkit.evaluation.report import worst_cases


def test_polluted_refined_eval_writes_a_self_contained_report(tiny_dataset, tmp_path):
    from adtk.toolkit.cli.main import cli

    report = tmp_path / "report"
    args = ["research", "pollution", "-o", str(tmp_path / "knn.onnx"), "--data", str(tiny_dataset.root), "--rate",
            "0.25", "--protocol", "sroc", "--seed", "1", "--method", "knn", "--refine", "sroc:0.25", "--random-weights",
            "--size", "64", "--report", str(report), "--json", str(tmp_path / "m.json")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "m.json").read_text())
    protocol = metrics["protocol"]
    assert protocol["name"] == "sroc_disjoint" and not protocol["leaky"]
    assert protocol["num_injected"] == 4 and protocol["num_train"] == 16
    assert metrics["num_images"] == 12 - 4  # the sroc pool (round(0.25 * 16) defects) left the test set
    refinement = metrics["refinement"]
    assert refinement["spec"] == "sroc:0.25" and refinement["detector"] == "knn"
    assert refinement["injected"] == 4 - protocol["injected_in_calibration"]
    assert 0 <= refinement["injected_dropped"] <= refinement["injected"]
    assert "refinement sroc:0.25" in result.output
    page = (report / "report.html").read_text()
    assert not re.search(r'src="(?!data:image/png;base64,)', page)  # nothing loaded from outside the page
    pictures = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pictures) >= 2 + 2  # ROC, per-threshold, and at least one example per worst-case list
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    assert "Worst false positives" in page and "Worst false negatives" in page
    for alt in ("score histogram", "ROC", "PRO curve", "per-threshold metrics"):
        assert f'alt="{alt}"' in page
    confusion = re.search(r'<table class="confusion">(.*?)</table>', page).group(1)
    cells = [int(v) for v in re.findall(r'<td class="(?:ok|bad)">(\d+)</td>', confusion)]
    assert len(cells) == 4 and sum(cells) == metrics["num_images"]
    assert cells[2] + cells[3] == metrics["num_defective"]  # second row: the defective images
    assert "flagged anomalous" in page and "<th>good</th>" in page  # the per-type counts


def test_worst_cases_pick_the_highest_good_and_lowest_defective_scores():
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.05])
    labels = np.array([0, 0, 0, 1, 1, 1])
    fp, fn, fp_note, fn_note = worst_cases(scores, labels, threshold=0.6)
    assert fp[:2] == [1, 2] and fn[:2] == [5, 3]
    assert fp_note.startswith("highest-scoring good images (1 of these")
    assert fn_note.startswith("lowest-scoring defective images (2 of these")


def test_eval_with_the_old_research_flags_forwards_to_adtk_research(tiny_dataset, tmp_path, monkeypatch):
    from adtk.toolkit.cli.main import cli
    from adtk.toolkit.research import known_anomalies, polluted

    calls = []
    fake_metrics = {"method": "knn", "data": "d", "num_images": 1, "num_defective": 0}
    monkeypatch.setattr(polluted, "evaluate_polluted",
                        lambda config, rate, protocol, seed, **kw: calls.append((config, rate, protocol, seed))
                        or fake_metrics)
    monkeypatch.setattr(known_anomalies, "evaluate_known_anomalies",
                        lambda config, **kw: calls.append((config,)) or {
                            "protocol": "p", "data": "d", "method": config.method, "per_type": {},
                            "mean_image_auroc": None})
    args = ["eval", str(tmp_path / "m.onnx"), "--data", str(tiny_dataset.root), "--pollution", "0.1", "--protocol",
            "paire", "--seed", "3", "--method", "knn", "--refine", "sroc:0.1", "--size", "64"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config, rate, protocol, seed = calls[0]
    assert (rate, protocol, seed) == (0.1, "paire", 3)
    assert (config.method, config.refine, config.image_size_px, config.out) == ("knn", "sroc:0.1", 64, tmp_path / "m.onnx")
    assert "is now `adtk research pollution --rate`" in result.output
    result = CliRunner().invoke(cli, ["eval", "--data", str(tiny_dataset.root), "--protocol", "known-anomalies",
                                      "--method", "semlp"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert calls[1][0].method == "semlp" and "semlp on d" in result.output
    result = CliRunner().invoke(cli, ["eval", "--data", str(tiny_dataset.root), "--protocol", "known-anomalies",
                                      "--pollution", "0.1"])
    assert result.exit_code == 2 and "does not take --pollution" in result.output
