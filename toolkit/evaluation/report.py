"""`adtk eval --report DIR`: one self-contained report.html plus metrics.json. Every picture is a base64 PNG
inside the page (it opens offline). Plots with matplotlib (Agg backend).

Sections: metrics table; score histogram of good vs defective images with the threshold; confusion matrix
and per-type counts at the artefact's threshold; ROC, PRO and per-threshold curves; the worst false positives
and false negatives, each as the ground truth beside the overlay that `adtk predict --overlays` draws
(runtime/overlay.py). Scores are shown on the 0..1 scale that predict and serve print (0.5 = threshold);
AUROC and AU-PRO come from the raw scores (clipping in the 0..1 scale would create ties)."""

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


def score_histogram(pred_scores: np.ndarray, labels: np.ndarray) -> str:
    """Histogram of pred_score (0..1) for good and defective images, the threshold (0.5) drawn; base64 PNG."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.4))
    bins = np.linspace(0.0, 1.0, 41)
    for wanted, name, colour in ((0, "good", "tab:green"), (1, "defective", "tab:red")):
        values = pred_scores[labels == wanted]
        if len(values):
            axis.hist(values, bins=bins, alpha=0.6, color=colour, label=f"{name} ({len(values)})")
    axis.axvline(0.5, color="k", ls="--", lw=1.2, label="threshold (0.5)")
    axis.set(xlabel="score (0..1, as adtk predict prints it)", ylabel="images", xlim=(0, 1),
             title="scores of good vs defective test images")
    axis.legend(fontsize=8)
    return _png(figure)


def curve_plots(scores: np.ndarray, pred_scores: np.ndarray, labels: np.ndarray) -> tuple[str, str]:
    """(ROC plot from the raw scores, precision/recall/F1 against the 0..1 score threshold) as base64 PNGs."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _pyplot()
    fpr, tpr, _ = roc_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(4.2, 4))
    axis.plot(fpr, tpr, lw=2)
    axis.plot([0, 1], [0, 1], "k--", lw=0.8)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="image ROC")
    roc = _png(figure)

    precision, recall, thresholds = precision_recall_curve(labels, pred_scores)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=precision + recall > 0)
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for values, name in ((precision[:-1], "precision"), (recall[:-1], "recall"), (f1[:-1], "F1")):
        axis.plot(thresholds, values, label=name)
    axis.axvline(0.5, color="k", ls="--", lw=0.8, label="artefact threshold (0.5)")
    axis.set(xlabel="score threshold (0..1)", ylabel="value", title="per-threshold metrics", ylim=(0, 1.02),
             xlim=(0, 1))
    axis.legend(loc="lower left", fontsize=8)
    return roc, _png(figure)


def pro_plot(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> str:
    """The PRO curve up to fpr_limit (the AU-PRO integration range) as a base64 PNG."""
    from adtk.toolkit.evaluation.metrics import au_pro, pro_curve

    plt = _pyplot()
    fpr, pro = pro_curve(maps, masks, fpr_limit)
    figure, axis = plt.subplots(figsize=(4.2, 4))
    axis.plot(fpr, pro, lw=2)
    axis.set(xlabel="false positive rate (pixels)", ylabel="per-region overlap", xlim=(0, fpr_limit), ylim=(0, 1.02),
             title=f"PRO curve (AU-PRO {au_pro(maps, masks, fpr_limit):.3f})")
    return _png(figure)


def confusion_table(labels: np.ndarray, pred_labels: np.ndarray) -> str:
    """2x2 confusion matrix at the artefact's threshold, as an HTML table (rows: truth, columns: predicted)."""
    cells = {(t, p): int(((labels == t) & (pred_labels == p)).sum()) for t in (0, 1) for p in (False, True)}
    style = {True: "ok", False: "bad"}
    rows = []
    for truth, name in ((0, "good"), (1, "defective")):
        rows.append(f"<tr><th>{name}</th>" + "".join(
            f'<td class="{style[bool(predicted) == bool(truth)]}">{cells[(truth, predicted)]}</td>'
            for predicted in (False, True)) + "</tr>")
    return ('<table class="confusion"><tr><th>truth \\ predicted</th><th>good</th><th>anomalous</th></tr>'
            + "".join(rows) + "</table>")


def per_type_table(types: list[str], pred_scores: np.ndarray, pred_labels: np.ndarray) -> str:
    """Per defect type: images, flagged anomalous, missed (or false alarms for good), mean and max score."""
    rows = []
    for defect_type in sorted(set(types), key=lambda t: (t != "good", t)):
        keep = np.array([t == defect_type for t in types])
        flagged = int(pred_labels[keep].sum())
        wrong = flagged if defect_type == "good" else int(keep.sum()) - flagged
        rows.append(f"<tr><th>{html.escape(defect_type)}</th><td>{int(keep.sum())}</td><td>{flagged}</td>"
                    f"<td>{wrong}</td><td>{pred_scores[keep].mean():.3f}</td><td>{pred_scores[keep].max():.3f}</td></tr>")
    return ("<table><tr><th>type</th><th>images</th><th>flagged anomalous</th><th>wrong (missed / false alarm)</th>"
            "<th>mean score</th><th>max score</th></tr>" + "".join(rows) + "</table>")


def example_panel(image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray, pred_score: float,
                  pred_label: bool, caption: str) -> str:
    """ground truth (the image, its mask outlined in green) | the overlay adtk predict draws; base64 PNG."""
    from PIL import Image

    from adtk.runtime.overlay import banner, display_size_hw, outline, render_overlay

    overlay = render_overlay(image, anomaly_map, pred_score, pred_label, caption=caption)
    body_h, width = display_size_hw(image.shape[:2])
    truth = np.asarray(Image.fromarray(image).resize((width, body_h), Image.BILINEAR)).copy()
    big_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, body_h), Image.NEAREST)) > 127
    truth[outline(big_mask, width_px=2)] = (0, 230, 0)
    top = banner(width, overlay.shape[0] - body_h, "ground truth", (70, 70, 70))
    left = np.concatenate([top, truth])
    gap = np.full((overlay.shape[0], 8, 3), 255, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate([left, gap, overlay], axis=1)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


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
        if key == "threshold":  # metrics.json keeps the method's raw value; the page speaks the 0..1 scale
            key, value = "threshold", f"score 0.5 (raw score {value})"
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def write_report(out_dir: str | Path, metrics: dict, details: dict) -> Path:
    """Write out_dir/report.html and out_dir/metrics.json; `details` as filled by evaluate_artefact."""
    from adtk.toolkit.data import read_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    scores, labels, maps, masks = details["scores"], details["labels"], details["maps"], details["masks"]
    pred_scores, pred_labels = details["pred_scores"], details["pred_labels"]
    threshold = float(details["threshold"])
    sections = [f"<h2>Metrics</h2>{_metrics_table(metrics)}",
                f"<h2>Scores</h2>{_img(score_histogram(pred_scores, labels), 'score histogram')}",
                "<h2>At the artefact's threshold (score 0.5)</h2><div class='row'><div><h3>Confusion matrix</h3>"
                f"{confusion_table(labels, pred_labels)}</div><div><h3>Per type</h3>"
                f"{per_type_table(details['types'], pred_scores, pred_labels)}</div></div>"]
    if 0 < labels.sum() < len(labels):
        roc, per_threshold = curve_plots(scores, pred_scores, labels)
        curves = _img(roc, "ROC")
        if masks.any():
            curves += _img(pro_plot(maps, masks), "PRO curve")
        sections.append(f"<h2>Curves</h2>{curves}{_img(per_threshold, 'per-threshold metrics')}")
    fp, fn, fp_note, fn_note = worst_cases(scores, labels, threshold)
    detector = details["detector"]
    for heading, note, picks in (("Worst false positives", fp_note, fp), ("Worst false negatives", fn_note, fn)):
        panels = []
        for i in picks:
            sample = details["samples"][i]
            image = read_image(sample.path)
            prediction = detector.predict(image[None])  # the normalised map, at the image's own size
            mask = masks[i]
            caption = f"{Path(sample.path).name} ({sample.defect_type})"
            panels.append(_img(example_panel(image, mask, prediction.anomaly_map[0], float(pred_scores[i]),
                                             bool(pred_labels[i]), caption), caption))
        sections.append(f"<h2>{heading}</h2><p>{html.escape(note)}. Left: ground truth (green outline); right: "
                        "the overlay adtk predict --overlays writes.</p>" + "".join(panels))
    protocol = metrics.get("protocol") or {}
    banner = (f'<p class="warn">{html.escape(protocol["note"])}</p>' if protocol.get("leaky") else "")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>adtk eval: {html.escape(str(metrics.get('method')))}"
            "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}img{max-width:100%;margin:4px}"
            ".warn{background:#fee;border:1px solid #c00;padding:6px}.row{display:flex;gap:3em;flex-wrap:wrap}"
            ".confusion td{font-size:1.4em;text-align:center;min-width:4em}.ok{background:#dfd}.bad{background:#fdd}"
            "</style></head><body>"
            f"<h1>adtk eval report: {html.escape(str(metrics.get('method')))} on {html.escape(str(metrics.get('data')))}</h1>"
            f"{banner}{''.join(sections)}</body></html>")
    path = out_dir / "report.html"
    path.write_text(page)
    return path
