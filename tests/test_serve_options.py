"""`adtk serve` refuses limit values that would switch a protection off (NaN, infinity, absurdly large), before
it starts, with click's usage error naming the option."""

from __future__ import annotations

import pytest

from adtk.toolkit.cli.main import cli


@pytest.mark.parametrize("option, value", [("--http-max-body-mb", "nan"), ("--http-max-body-mb", "inf"),
                                           ("--http-max-body-mb", "1e30"), ("--http-timeout", "nan"),
                                           ("--http-timeout", "inf"), ("--max-pixels", "99999999999999999999")])
def test_limits_that_would_switch_a_protection_off_are_refused(runner, tiny_build, option, value):
    result = runner.invoke(cli, ["serve", str(tiny_build.artefact), "--http", "127.0.0.1:0", option, value])
    assert result.exit_code == 2, result.output
    assert option in result.output and "internal error" not in result.output
