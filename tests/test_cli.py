"""The CLI's shape: --version, --help listing every command, and --help with an example on each command."""
from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from ggufkit import __version__
from ggufkit.cli import cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


EXPECTED = {"bench", "cache", "chat", "compare", "convert", "deploy", "eval", "fit", "imatrix", "inspect", "quantize",
            "run", "serve", "worker"}


def test_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == EXPECTED


def test_every_command_has_help_with_an_example():
    for name in sorted(EXPECTED):
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Example" in result.output and "ggufkit " + name in result.output, (name, result.output)


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "ggufkit.cli", "--help"], check=False, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "Usage" in out.stdout
