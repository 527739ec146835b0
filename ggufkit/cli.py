"""The `ggufkit` command: a click group that only routes to ggufkit/commands/*.py.

Each module in ggufkit.commands defines `command`, a click.Command whose docstring is its help text and ends with
an example. Adding a command is adding a module; this file does not change.
"""
from __future__ import annotations

import importlib
import pkgutil
import signal
import sys
import threading

import click

from ggufkit import __version__, commands
from ggufkit.errors import GgufkitError, Terminated


class CommandsGroup(click.Group):
    """Finds commands as modules of ggufkit.commands and imports one only when it runs (or --help lists them):
    start-up stays fast, and a Ctrl-C during an import is caught by main() like any other."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))

    def get_command(self, ctx, name: str):
        if name not in self.list_commands(ctx):
            return None
        return getattr(importlib.import_module(f"{commands.__name__}.{name}"), "command", None)


@click.group(cls=CommandsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ggufkit")
def cli():
    """ggufkit: Hugging Face checkpoints to llama.cpp GGUF files, and a runtime for them.

    \b
    Example:
      ggufkit convert ./SmolLM2-135M-Instruct --scheme q4_k_m
    """


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    """Entry point: GgufkitError becomes a one-line `error: ...` on stderr and its exit code."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv) -> int:
    try:
        cli.main(args=argv, prog_name="ggufkit", standalone_mode=False)
    except GgufkitError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort as e:
        if isinstance(e.__cause__, Terminated):  # click turns every KeyboardInterrupt into Abort
            click.echo("error: terminated", err=True)
            return 143
        click.echo("error: interrupted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except Terminated:
        click.echo("error: terminated", err=True)
        return 143
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
