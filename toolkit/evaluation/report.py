"""`adtk eval --report DIR`: one self-contained report.html (metrics table, ROC and per-threshold plots,
the worst false positives and false negatives as heatmap overlays beside the image and its mask; every
picture a base64 PNG inside the page) plus metrics.json. Plots with matplotlib (Agg backend)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

WORST_SHOWN = 4


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(png_b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_b64}">'


def curve_plots(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[str, str]:
    """(ROC plot, precision/recall/F1-versus-threshold plot) as base64 PNGs."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _pyplot()
    fpr, tpr, _ = roc_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(4.2, 4))
    axis.plot(fpr, tpr, lw=2)
    axis.plot([0, 1], [0, 1], "k--", lw=0.8)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="image ROC")
    roc = _png(figure)

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=precision + recall > 0)
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for values, name in ((precision[:-1], "precision"), (recall[:-1], "recall"), (f1[:-1], "F1")):
        axis.plot(thresholds, values, label=name)
    axis.axvline(threshold, color="k", ls="--", lw=0.8, label="artefact threshold")
    axis.set(xlabel="raw image score threshold", ylabel="value", title="per-threshold metrics", ylim=(0, 1.02))
    axis.legend(loc="lower left", fontsize=8)
    return roc, _png(figure)


def example_panel(image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray, value_range, title: str) -> str:
    """image | ground-truth mask | heatmap overlay, one row, as a base64 PNG."""
    plt = _pyplot()

    figure, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(mask, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("ground truth", fontsize=9)
    axes[2].imshow(image)
    shown = axes[2].imshow(anomaly_map, cmap="jet", alpha=0.45, vmin=value_range[0], vmax=value_range[1])
    axes[2].set_title("anomaly map (raw)", fontsize=9)
    figure.colorbar(shown, ax=axes[2], fraction=0.046)
    for axis in axes:
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    return _png(figure)


def worst_cases(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[list[int], list[int], str, str]:
    """Indices of the worst false positives (good, highest scores) and false negatives (defective, lowest
    scores), and how each list was chosen (when no image is misclassified, the closest calls are shown)."""
    good, defective = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    good = good[np.argsort(-scores[good], kind="stable")][:WORST_SHOWN]
    defective = defective[np.argsort(scores[defective], kind="stable")][:WORST_SHOWN]
    false_pos = int((scores[good] > threshold).sum()) if len(good) else 0
    false_neg = int((scores[defective] <= threshold).sum()) if len(defective) else 0
    return (good.tolist(), defective.tolist(),
            f"highest-scoring good images ({false_pos} of these are false positives at the artefact threshold)",
            f"lowest-scoring defective images ({false_neg} of these are false negatives at the artefact threshold)")


def _metrics_table(metrics: dict) -> str:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4f}"
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def write_report(out_dir: str | Path, metrics: dict, details: dict) -> Path:
    """Write out_dir/report.html and out_dir/metrics.json; `details` as filled by evaluate_artefact."""
    from PIL import Image

    from adtk.toolkit.data import read_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    scores, labels, maps, masks = details["scores"], details["labels"], details["maps"], details["masks"]
    threshold = float(details["threshold"])
    sections = [f"<h2>Metrics</h2>{_metrics_table(metrics)}"]
    if 0 < labels.sum() < len(labels):
        roc, per_threshold = curve_plots(scores, labels, threshold)
        sections.append(f"<h2>Curves</h2>{_img(roc, 'ROC')}{_img(per_threshold, 'per-threshold metrics')}")
    value_range = (float(np.percentile(maps, 1)), float(maps.max()))
    fp, fn, fp_note, fn_note = worst_cases(scores, labels, threshold)
    for heading, note, picks in (("Worst false positives", fp_note, fp), ("Worst false negatives", fn_note, fn)):
        panels = []
        for i in picks:
            sample = details["samples"][i]
            image = np.asarray(Image.fromarray(read_image(sample.path)).resize(maps.shape[2:0:-1], Image.BILINEAR))
            title = f"{Path(sample.path).name} ({sample.defect_type}): score {scores[i]:.4f}, threshold {threshold:.4f}"
            panels.append(_img(example_panel(image, masks[i], maps[i], value_range, title), title))
        sections.append(f"<h2>{heading}</h2><p>{html.escape(note)}</p>" + "".join(panels))
    protocol = metrics.get("protocol") or {}
    banner = (f'<p class="warn">{html.escape(protocol["note"])}</p>' if protocol.get("leaky") else "")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>adtk eval: {html.escape(str(metrics.get('method')))}"
            "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}img{max-width:100%;margin:4px}"
            ".warn{background:#fee;border:1px solid #c00;padding:6px}</style></head><body>"
            f"<h1>adtk eval report: {html.escape(str(metrics.get('method')))} on {html.escape(str(metrics.get('data')))}</h1>"
            f"{banner}{''.join(sections)}</body></html>")
    path = out_dir / "report.html"
    path.write_text(page)
    return path
