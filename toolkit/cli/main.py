"""The `adtk` command: a click group with one module per command. A command parses its options, calls
one library function and prints; it holds no logic. Errors a user can cause print as one line and exit 2
(`--debug` shows the traceback)."""

from __future__ import annotations

import sys

import click

from adtk.runtime.errors import AdtkError


class AdtkGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AdtkError as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"{type(exc).__name__}: {exc}", err=True)
            sys.exit(2)


@click.group(cls=AdtkGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="adtk")
def cli(debug: bool) -> None:
    """adtk: fit anomaly detectors, compile them into one ONNX artefact, score frames on the edge."""


def _register() -> None:
    from adtk.toolkit.cli import build, compile, demo, evaluate, flash, inspect, predict, serve, sign, targets

    for module in (build, predict, evaluate, inspect, demo, serve, flash, targets, compile, sign):
        cli.add_command(module.command)
    from adtk.toolkit.cli import defects

    cli.add_command(defects.command)


_register()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
