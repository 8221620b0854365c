"""The `adtk` command: a click group with one module per command. A command parses its options, calls
one library function and prints; it holds no logic.

Conventions every command follows:
- exit status 0 on success, 1 for a runtime error (bad data, a damaged artefact, a backend or target that
  fails, a missing optional dependency), 2 for a usage error (an unknown option or method, a bad value or
  combination: ConfigError, and click's own usage errors); each printed as one line (`--debug` shows the
  traceback); any other exception is a bug of ours: one line saying so, exit status 1, never a traceback;
- `--json` prints the result as one JSON document on stdout; logs and progress go to stderr;
- `-q` shows only warnings and errors, `-v` adds debug lines (`logging`, logger "adtk")."""

from __future__ import annotations

import atexit
import os
import sys

import click

from adtk.runtime.errors import AdtkError, ConfigError, one_line
from adtk.runtime.extras import MissingExtraError, missing_extra_message

RUNTIME_ERROR, USAGE_ERROR = 1, 2  # click exits 2 for its own usage errors


class AdtkGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MissingExtraError as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(str(exc), err=True)
            sys.exit(RUNTIME_ERROR)
        except AdtkError as exc:
            if ctx.params.get("debug"):
                raise
            # one line whatever the message holds: a file named "a.png\nDataError: ..." cannot forge a second line,
            # and no terminal control sequence (ESC) from a file name reaches the screen
            click.echo(one_line(f"{type(exc).__name__}: {exc}"), err=True)
            sys.exit(USAGE_ERROR if isinstance(exc, ConfigError) else RUNTIME_ERROR)
        except ModuleNotFoundError as exc:
            # An optional dependency that a command imports lazily: one line naming the extra, not a traceback.
            command = ctx.invoked_subcommand
            message = missing_extra_message(exc.name or "", f"adtk {command}", command)
            if message is None or ctx.params.get("debug"):
                raise
            click.echo(message, err=True)
            sys.exit(RUNTIME_ERROR)
        except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise  # click's own usage errors, Ctrl-C and exits: click prints and exits as it should
        except OSError as exc:
            # A path the user gave that cannot be written or read (a folder where a file is wanted, /proc, no
            # permission, a full disk): the environment's answer, named, not a bug of ours. Commands check their
            # main paths first with their own messages; this covers the rest (report, overlay and sink paths).
            if ctx.params.get("debug"):
                raise
            where = exc.filename if exc.filename is not None else "a path it was given"
            click.echo(one_line(f"adtk {ctx.invoked_subcommand}: cannot use {where}: {exc.strerror or exc}"), err=True)
            sys.exit(RUNTIME_ERROR)
        except Exception as exc:  # noqa: BLE001 - a bug of ours: one line that says so, not a traceback
            if ctx.params.get("debug"):
                raise
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(one_line(f"internal error in adtk {ctx.invoked_subcommand}: {type(exc).__name__}: {first_line} "
                                f"(an unexpected error inside adtk, a bug: rerun with `adtk --debug "
                                f"{ctx.invoked_subcommand} ...` for the traceback and report it)"), err=True)
            sys.exit(RUNTIME_ERROR)


# The offline stage (torch, timm) runs on Python >= 3.10; the runtime commands also run on 3.8 (JetPack 5).
OFFLINE_COMMANDS = frozenset({"build", "demo", "defects"})
OFFLINE_MIN_PYTHON = (3, 10)


@click.group(cls=AdtkGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", count=True, help="More log lines (debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.version_option(package_name="adtk")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """adtk: fit anomaly detectors, compile them into one ONNX artefact, score frames on the edge."""
    from adtk.toolkit.cli.progress import configure_logging

    configure_logging(-1 if quiet else verbose)
    if ctx.invoked_subcommand in OFFLINE_COMMANDS and sys.version_info[:2] < OFFLINE_MIN_PYTHON:
        click.echo(f"adtk {ctx.invoked_subcommand} needs Python >= {'.'.join(map(str, OFFLINE_MIN_PYTHON))} (this "
                   f"is {sys.version.split()[0]}); the device runtime (predict, serve, inspect, flash) runs here: "
                   "build on a workstation and copy the artefact", err=True)
        sys.exit(RUNTIME_ERROR)


def _register() -> None:
    from adtk.toolkit.cli import (build, compile, demo, evaluate, export, flash, inspect, predict, research, serve,
                                  sign, targets)

    for module in (build, predict, evaluate, inspect, export, demo, serve, flash, targets, compile, sign, research):
        cli.add_command(module.command)
    from adtk.toolkit.cli import defects

    cli.add_command(defects.command)


_register()


# Commands after which the process skips the interpreter's teardown (see main).
FAST_EXIT_COMMANDS = frozenset({"build", "eval", "demo", "research"})


def main() -> None:
    try:
        cli()
    except SystemExit as done:
        command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
        if "torch" not in sys.modules or command not in FAST_EXIT_COMMANDS:
            raise
        # With torch loaded, the interpreter's teardown runs torch's C++ destructors, which raised a build's
        # peak RSS by ~50 MB after the work was done (bench/vs_anomalib.py measures the process) and take
        # about a second. These commands have written and closed everything by now: run the atexit
        # handlers, flush, and leave without the teardown.
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
