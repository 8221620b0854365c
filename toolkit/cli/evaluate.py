from __future__ import annotations

import json
from pathlib import Path

import click

from adtk.runtime.errors import one_line
from adtk.toolkit.cli.progress import progress_factory
from adtk.toolkit.cli.tables import format_table
from adtk.toolkit.data_layouts import data_layout_options


@click.command("eval")
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--data", type=click.Path(path_type=Path), required=True, help="MVTec-style folder with test/.")
@click.option("--backend", default="auto", show_default=True,
              help="auto, tensorrt (engine), onnxruntime, cpu, cuda or ort-tensorrt.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write the metrics as JSON to this file ('-' for stdout only).")
@click.option("--skip-bad", is_flag=True)
@data_layout_options
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Write DIR/report.html (metrics, ROC and per-threshold plots, worst false positives and "
                   "negatives as heatmap overlays) and DIR/metrics.json.")
# The research protocols moved to `adtk research` (toolkit/cli/research.py); these options still work here and
# forward to it, so existing scripts keep running.
@click.option("--pollution", type=float, default=None, help="Deprecated: `adtk research pollution --rate`.")
@click.option("--protocol", type=click.Choice(["sroc", "paire", "known-anomalies"]), default="sroc", show_default=True,
              help="Deprecated: `adtk research pollution --protocol` / `adtk research known-anomalies`.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --pollution / known-anomalies.")
@click.option("--method", default="patchcore", show_default=True, help="With --pollution / known-anomalies.")
@click.option("--param", "params", multiple=True, help="With --pollution / known-anomalies.")
@click.option("--refine", default=None, help="With --pollution.")
@click.option("--backbone", default="tf_efficientnet_lite0", show_default=True, help="With --pollution.")
@click.option("--size", "image_size_px", type=int, default=256, show_default=True, help="With --pollution.")
@click.option("--random-weights", is_flag=True, help="With --pollution: random backbone weights (tests only).")
@click.pass_context
def command(ctx, model, data, backend, json_out, skip_bad, report_dir=None, pollution=None, protocol="sroc", seed=0,
            method="patchcore", params=(), refine=None, backbone="tf_efficientnet_lite0", image_size_px=256,
            random_weights=False, **layout):
    """Evaluate MODEL on DATA's test split: image/pixel AUROC, AU-PRO, F1 at the stored threshold.

    \b
    JSON keys: model, data, method, threshold, image_auroc, pixel_auroc, au_pro, f1, precision,
    recall, num_images, num_defective, image_auroc_per_type {type: auroc}; null where not computable.
    Research protocols (polluted training sets, leave-one-type-out): `adtk research --help`.
    """
    from adtk.runtime.errors import ConfigError
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.evaluate import evaluate_artefact

    if pollution is not None or protocol == "known-anomalies":
        build_args = dict(data=data, model=model, seed=seed, method=method, params=params, backbone=backbone,
                          image_size_px=image_size_px, random_weights=random_weights, skip_bad=skip_bad,
                          json_out=json_out)
        return forward_to_research(ctx, pollution, protocol, refine, report_dir, build_args)
    if model is None:
        raise ConfigError("adtk eval: give the MODEL to evaluate (to fit one on a polluted training set first, "
                          "see `adtk research pollution --help`)")
    details = {} if report_dir is not None else None
    layout = {key: value for key, value in layout.items() if value is not None}
    index = index_dataset(data, **layout)
    for warning in index.warnings:  # allowed oddities (defect images without masks, ignored folders): said once
        click.echo(one_line(f"warning: {warning}"), err=True)
    test_samples = list(index.test)
    with progress_factory(len(test_samples), "eval") as bar:
        metrics = evaluate_artefact(model, data, backend=backend, skip_bad=skip_bad, progress=bar.update,
                                    details=details, samples=test_samples or None)
    if report_dir is not None:
        from adtk.toolkit.evaluation.report import write_report

        click.echo(f"report written to {write_report(report_dir, metrics, details)}", err=True)
    if json_out is not None and str(json_out) == "-":
        click.echo(json.dumps(metrics, indent=2))
        return
    click.echo(format_table(metrics))
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2))
        click.echo(f"metrics written to {json_out}")


def forward_to_research(ctx, pollution, protocol, refine, report_dir, build_args: dict):
    """`adtk eval --pollution/--protocol known-anomalies` -> the same run through `adtk research`."""
    from adtk.runtime.errors import ConfigError
    from adtk.toolkit.cli import research

    if protocol == "known-anomalies":
        if pollution is not None:
            raise ConfigError("--protocol known-anomalies does not take --pollution (it fits on train/good plus "
                              "labelled defects of the other types); drop one of the two")
        click.echo("note: `adtk eval --protocol known-anomalies` is now `adtk research known-anomalies`", err=True)
        return ctx.invoke(research.known_anomalies, **build_args)
    click.echo("note: `adtk eval --pollution` is now `adtk research pollution --rate`", err=True)
    return ctx.invoke(research.pollution, rate=pollution, protocol=protocol, refine=refine, report_dir=report_dir,
                      **build_args)
