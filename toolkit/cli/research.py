"""`adtk research pollution|known-anomalies`: the research protocols (toolkit/research/), each an ordinary build
on a protocol's training set followed by an ordinary evaluation. `adtk eval` only evaluates an artefact."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from adtk.toolkit.cli.progress import progress_factory


def build_options(command):
    """The build options both protocols take (as `adtk build`'s)."""
    for option in reversed([
        click.option("--data", type=click.Path(path_type=Path), required=True, help="MVTec-style folder with test/."),
        click.option("-o", "--out", "model", type=click.Path(path_type=Path), default=None,
                     help="Where the artefact is written (default: a temporary folder)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the protocol and the build."),
        click.option("--method", default="patchcore", show_default=True, help="Detector to fit."),
        click.option("--param", "params", multiple=True, help="Method parameter key=value."),
        click.option("--backbone", default="tf_efficientnet_lite0", show_default=True),
        click.option("--size", "image_size_px", type=int, default=256, show_default=True),
        click.option("--random-weights", is_flag=True, help="Random backbone weights (tests only)."),
        click.option("--skip-bad", is_flag=True),
        click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
                     help="Also write the metrics as JSON to this file ('-' for stdout only)."),
    ]):
        command = option(command)
    return command


def build_config(model, data, seed, method, params, backbone, image_size_px, random_weights, skip_bad, prefix,
                 refine=None):
    from adtk.toolkit.build import BuildConfig
    from adtk.toolkit.cli.build import parse_params

    out = model if model is not None else Path(tempfile.mkdtemp(prefix=prefix)) / f"{method}.onnx"
    return BuildConfig(data=data, out=out, method=method, method_params=parse_params(params), backbone=backbone,
                       random_weights=random_weights, image_size_px=image_size_px, seed=seed, skip_bad=skip_bad,
                       refine=refine)


def echo_metrics(metrics: dict, lines: list[str], json_out) -> None:
    if json_out is not None and str(json_out) == "-":
        click.echo(json.dumps(metrics, indent=2))
        return
    for line in lines:
        click.echo(line)
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2))
        click.echo(f"metrics written to {json_out}")


@click.group("research")
def command() -> None:
    """Research protocols: polluted training sets, leave-one-defect-type-out."""


@command.command("pollution")
@click.option("--rate", type=float, required=True,
              help="Fraction of the training set replaced by injected defective test images, e.g. 0.1.")
@click.option("--protocol", type=click.Choice(["sroc", "paire"]), default="sroc", show_default=True,
              help="sroc: injected defects leave the test set; paire: they stay in it (leaky, labelled).")
@click.option("--refine", default=None, help="Refinement of the polluted set, as `adtk build --refine`.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Write DIR/report.html and DIR/metrics.json.")
@build_options
def pollution(rate, protocol, refine, report_dir, data, model, seed, method, params, backbone, image_size_px,
              random_weights, skip_bad, json_out):
    """Fit METHOD on a training set polluted with defective images, evaluate, and score the refinement.

    \b
    JSON keys: those of `adtk eval`, plus protocol {name, rate, seed, leaky, note, num_train, num_injected,
    injected_in_calibration, num_test}, refinement {spec, detector, dropped, injected, injected_dropped,
    precision, recall, f1} or null, build {artefact, method, params, refine}.
    """
    from adtk.toolkit.cli.tables import format_table
    from adtk.toolkit.research.polluted import evaluate_polluted

    config = build_config(model, data, seed, method, params, backbone, image_size_px, random_weights, skip_bad,
                          "adtk_polluted_", refine)
    details = {} if report_dir is not None else None
    metrics = evaluate_polluted(config, rate, protocol, seed, details=details, log=lambda m: click.echo(m, err=True),
                                progress_factory=progress_factory)
    if report_dir is not None:
        from adtk.toolkit.evaluation.report import write_report

        click.echo(f"report written to {write_report(report_dir, metrics, details)}", err=True)
    echo_metrics(metrics, [format_table(metrics), *pollution_lines(metrics)], json_out)


@command.command("known-anomalies")
@build_options
def known_anomalies(data, model, seed, method, params, backbone, image_size_px, random_weights, skip_bad, json_out):
    """Leave one defect type out: fit METHOD with labelled defects of all test types but one, test on the
    held-out type, for every type (OUT, if given, names the artefacts: OUT stem + '.<type>.onnx').

    \b
    JSON keys: protocol, data, method, params, per_type {type: {image_auroc, pixel_auroc, f1,
    num_train_defects, num_test, artefact}}, mean_image_auroc.
    """
    from adtk.toolkit.research.known_anomalies import evaluate_known_anomalies

    config = build_config(model, data, seed, method, params, backbone, image_size_px, random_weights, skip_bad,
                          "adtk_known_")
    metrics = evaluate_known_anomalies(config, log=lambda m: click.echo(m, err=True), progress_factory=progress_factory)
    echo_metrics(metrics, known_anomalies_lines(metrics), json_out)


def known_anomalies_lines(metrics: dict) -> list[str]:
    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    lines = [f"{metrics['method']} on {metrics['data']}: {metrics['protocol']}",
             f"{'held-out type':<16} {'image AUROC':>11} {'pixel AUROC':>11} {'train defects':>13} {'test':>5}"]
    lines += [f"{t:<16} {fmt(m['image_auroc']):>11} {fmt(m['pixel_auroc']):>11} {m['num_train_defects']:>13} "
              f"{m['num_test']:>5}" for t, m in metrics["per_type"].items()]
    lines.append(f"{'mean':<16} {fmt(metrics['mean_image_auroc']):>11}")
    return lines


def pollution_lines(metrics: dict) -> list[str]:
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
