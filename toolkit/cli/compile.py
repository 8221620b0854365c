from __future__ import annotations

from pathlib import Path

import click


@click.command("compile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", required=True, help="A TensorRT target (see `adtk targets`).")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Engine path (default MODEL_STEM.TARGET.engine beside the artefact).")
@click.option("--workspace-gb", type=float, default=1.0, show_default=True)
def command(model, target, out, workspace_gb):
    """Build a TensorRT engine from a verified artefact (checks first; needs the tensorrt package)."""
    from adtk.export.tensorrt import build_engine

    path = build_engine(model, target, out=out, workspace_gb=workspace_gb, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {path} and {path}.json")
    click.echo(f"next:\n  adtk predict {model} --backend tensorrt IMAGE...")
