from __future__ import annotations

import json
from pathlib import Path

import click

from adtk.toolkit.cli.progress import progress_factory


def format_table(metrics: dict) -> str:
    rows = [("image AUROC", metrics.get("image_auroc")), ("pixel AUROC", metrics.get("pixel_auroc")),
            ("AU-PRO (FPR<=0.3)", metrics.get("au_pro")), ("F1 @ threshold", metrics.get("f1")),
            ("precision", metrics.get("precision")), ("recall", metrics.get("recall"))]
    rows += [(f"  image AUROC {t}", v) for t, v in metrics.get("image_auroc_per_type", {}).items()]
    lines = [f"{metrics['method']} on {metrics['data']} ({metrics['num_images']} images, "
             f"{metrics['num_defective']} defective)"]
    lines += [f"{name:<24} {'n/a' if value is None else f'{value:.4f}'}" for name, value in rows]
    return "\n".join(lines)


@click.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True, help="MVTec-style folder with test/.")
@click.option("--backend", default="auto", show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write the metrics as JSON to this file ('-' for stdout only).")
@click.option("--skip-bad", is_flag=True)
def command(model, data, backend, json_out, skip_bad):
    """Evaluate MODEL on DATA's test split: image/pixel AUROC, AU-PRO, F1 at the stored threshold.

    \b
    JSON keys: model, data, method, threshold, image_auroc, pixel_auroc, au_pro, f1, precision,
    recall, num_images, num_defective, image_auroc_per_type {type: auroc}; null where not computable.
    """
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.evaluate import evaluate_artefact

    total = len(index_dataset(data).test)
    with progress_factory(total, "eval") as bar:
        metrics = evaluate_artefact(model, data, backend=backend, skip_bad=skip_bad, progress=bar.update)
    if json_out is not None and str(json_out) == "-":
        click.echo(json.dumps(metrics, indent=2))
        return
    click.echo(format_table(metrics))
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2))
        click.echo(f"metrics written to {json_out}")
