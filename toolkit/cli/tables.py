"""Tables for people: the metrics table `adtk eval`, `adtk demo` and `adtk research pollution` print."""

from __future__ import annotations


def format_table(metrics: dict) -> str:
    rows = [("image AUROC", metrics.get("image_auroc")), ("pixel AUROC", metrics.get("pixel_auroc")),
            ("AU-PRO (FPR<=0.3)", metrics.get("au_pro")), ("F1 @ threshold", metrics.get("f1")),
            ("precision", metrics.get("precision")), ("recall", metrics.get("recall"))]
    rows += [(f"  image AUROC {t}", v) for t, v in metrics.get("image_auroc_per_type", {}).items()]
    lines = [f"{metrics['method']} on {metrics['data']} ({metrics['num_images']} images, "
             f"{metrics['num_defective']} defective)"]
    lines += [f"{name:<24} {'n/a' if value is None else f'{value:.4f}'}" for name, value in rows]
    return "\n".join(lines)
