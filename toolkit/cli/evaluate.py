from __future__ import annotations

import json
from pathlib import Path

import click

from adtk.toolkit.cli.progress import progress_factory
from adtk.toolkit.data_layouts import data_layout_options


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
@click.option("--pollution", type=float, default=None,
              help="Fit on a training set with this fraction of defective test images injected, then evaluate "
                   "(MODEL, if given, is where the artefact is written).")
@click.option("--protocol", type=click.Choice(["sroc", "paire", "known-anomalies"]), default="sroc", show_default=True,
              help="With --pollution: sroc: injected defects leave the test set; paire: they stay in it (leaky, "
                   "labelled). known-anomalies: fit METHOD with labelled defects of all test types but one and "
                   "test on the held-out type, for every type (MODEL, if given, names the artefacts).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the pollution draw and the build.")
@click.option("--method", default="patchcore", show_default=True, help="Detector to fit (with --pollution).")
@click.option("--param", "params", multiple=True, help="Method parameter key=value (with --pollution).")
@click.option("--refine", default=None, help="Refinement of the polluted set, as `adtk build --refine`.")
@click.option("--backbone", default="tf_efficientnet_lite0", show_default=True, help="With --pollution.")
@click.option("--size", "image_size_px", type=int, default=256, show_default=True, help="With --pollution.")
@click.option("--random-weights", is_flag=True, help="With --pollution: random backbone weights (tests only).")
def command(model, data, backend, json_out, skip_bad, report_dir=None, pollution=None, protocol="sroc", seed=0,
            method="patchcore", params=(), refine=None, backbone="tf_efficientnet_lite0", image_size_px=256,
            random_weights=False, **layout):
    """Evaluate MODEL on DATA's test split: image/pixel AUROC, AU-PRO, F1 at the stored threshold.

    \b
    JSON keys: model, data, method, threshold, image_auroc, pixel_auroc, au_pro, f1, precision,
    recall, num_images, num_defective, image_auroc_per_type {type: auroc}; null where not computable.
    With --pollution also: protocol {name, rate, seed, leaky, note, num_train, num_injected,
    injected_in_calibration, num_test}, refinement {spec, detector, dropped, injected, injected_dropped,
    precision, recall, f1} or null, build {artefact, method, params, refine}.
    """
    from adtk.toolkit.data import index_dataset
    from adtk.toolkit.evaluate import evaluate_artefact

    details = {} if report_dir is not None else None
    if protocol == "known-anomalies":
        if pollution is not None:
            from adtk.runtime.errors import ConfigError

            raise ConfigError("--protocol known-anomalies does not take --pollution (it fits on train/good plus "
                              "labelled defects of the other types); drop one of the two")
        metrics = _known_anomalies(model, data, seed, method, params, backbone, image_size_px, random_weights, skip_bad)
        text = "\n".join(_known_anomalies_lines(metrics))
        click.echo(json.dumps(metrics, indent=2) if json_out is not None and str(json_out) == "-" else text)
        if json_out is not None and str(json_out) != "-":
            json_out.write_text(json.dumps(metrics, indent=2))
        return
    if pollution is not None:
        metrics = _polluted(model, data, pollution, protocol, seed, method, params, refine, backbone, image_size_px,
                            random_weights, skip_bad, details)
    else:
        if model is None:
            from adtk.runtime.errors import ConfigError

            raise ConfigError("adtk eval: give the MODEL to evaluate, or --pollution RATE to fit one on a polluted "
                              "training set first")
        layout = {key: value for key, value in layout.items() if value is not None}
        test_samples = list(index_dataset(data, **layout).test)
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
    for line in _pollution_lines(metrics):
        click.echo(line)
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2))
        click.echo(f"metrics written to {json_out}")


def _polluted(model, data, rate, protocol, seed, method, params, refine, backbone, image_size_px, random_weights,
              skip_bad, details):
    import tempfile

    from adtk.toolkit.build import BuildConfig
    from adtk.toolkit.cli.build import parse_params
    from adtk.toolkit.evaluation.polluted import evaluate_polluted

    out = model if model is not None else Path(tempfile.mkdtemp(prefix="adtk_polluted_")) / f"{method}.onnx"
    config = BuildConfig(data=data, out=out, method=method, method_params=parse_params(params), backbone=backbone,
                         random_weights=random_weights, image_size_px=image_size_px, seed=seed, skip_bad=skip_bad,
                         refine=refine)
    return evaluate_polluted(config, rate, protocol, seed, details=details, log=lambda m: click.echo(m, err=True),
                             progress_factory=progress_factory)


def _known_anomalies(model, data, seed, method, params, backbone, image_size_px, random_weights, skip_bad):
    import tempfile

    from adtk.toolkit.build import BuildConfig
    from adtk.toolkit.cli.build import parse_params
    from adtk.toolkit.evaluation.known_anomalies import evaluate_known_anomalies

    out = model if model is not None else Path(tempfile.mkdtemp(prefix="adtk_known_")) / f"{method}.onnx"
    config = BuildConfig(data=data, out=out, method=method, method_params=parse_params(params), backbone=backbone,
                         random_weights=random_weights, image_size_px=image_size_px, seed=seed, skip_bad=skip_bad)
    return evaluate_known_anomalies(config, log=lambda m: click.echo(m, err=True), progress_factory=progress_factory)


def _known_anomalies_lines(metrics: dict) -> list[str]:
    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    lines = [f"{metrics['method']} on {metrics['data']}: {metrics['protocol']}",
             f"{'held-out type':<16} {'image AUROC':>11} {'pixel AUROC':>11} {'train defects':>13} {'test':>5}"]
    lines += [f"{t:<16} {fmt(m['image_auroc']):>11} {fmt(m['pixel_auroc']):>11} {m['num_train_defects']:>13} "
              f"{m['num_test']:>5}" for t, m in metrics["per_type"].items()]
    lines.append(f"{'mean':<16} {fmt(metrics['mean_image_auroc']):>11}")
    return lines


def _pollution_lines(metrics: dict) -> list[str]:
    protocol = metrics.get("protocol")
    if not protocol:
        return []
    lines = [f"protocol {protocol['name']}: {protocol['num_injected']} injected of {protocol['num_train']} training "
             f"images (seed {protocol['seed']}; {protocol['injected_in_calibration']} fell in the calibration split)"]
    if protocol["leaky"]:
        lines.append(f"WARNING: {protocol['note']}")
    refinement = metrics.get("refinement")
    if refinement:
        def pct(value):
            return "n/a" if value is None else f"{100 * value:.1f}%"

        lines.append(f"refinement {refinement['spec']} ({refinement['detector']}): dropped {refinement['dropped']}, "
                     f"{refinement['injected_dropped']} of {refinement['injected']} injected; precision "
                     f"{pct(refinement['precision'])}, recall {pct(refinement['recall'])}")
    return lines
