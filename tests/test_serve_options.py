"""`adtk serve` refuses limit values that would switch a protection off (NaN, infinity, absurdly large), before
it starts, with click's usage error naming the option."""

from __future__ import annotations

import pytest

from adtk.toolkit.cli.main import cli


@pytest.mark.parametrize("option, value", [("--http-max-body-mb", "nan"), ("--http-max-body-mb", "inf"),
                                           ("--http-max-body-mb", "1e30"), ("--http-timeout", "nan"),
                                           ("--http-timeout", "inf"), ("--max-pixels", "99999999999999999999"),
                                           ("--warm-up-timeout", "nan"), ("--warm-up-timeout", "inf"),
                                           ("--warm-up-memory-mb", "99999999999999999999")])
def test_limits_that_would_switch_a_protection_off_are_refused(runner, tiny_build, option, value):
    result = runner.invoke(cli, ["serve", str(tiny_build.artefact), "--http", "127.0.0.1:0", option, value])
    assert result.exit_code == 2, result.output
    assert option in result.output and "internal error" not in result.output


def test_the_example_systemd_unit_starts_the_daemon_with_options_it_has():
    """deploy/systemd/adtk-serve.service's ExecStart is parsed by `adtk serve`'s own option parser (nothing runs):
    an option renamed or removed in the CLI would otherwise break every device that copied the unit."""
    import shlex
    from pathlib import Path

    unit = (Path(__file__).resolve().parents[1] / "deploy" / "systemd" / "adtk-serve.service").read_text()
    exec_start = unit.split("ExecStart=", 1)[1]
    lines = []
    for line in exec_start.splitlines():
        lines.append(line.rstrip("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    argv = shlex.split(" ".join(lines))
    assert argv[0].endswith("/adtk") and argv[1] == "serve"
    serve = cli.commands["serve"]
    context = serve.make_context("serve", argv[2:])  # raises click's usage error for an unknown option or value
    assert context.params["max_pixels"] == 12_000_000 and context.params["warm_up_memory_mb"] == 512
