"""Errors a user can act on. The CLI prints them as one line, `error: <file>: <problem>`, and exits non-zero.

Exit codes (documented in the README):
  1  bad input (a model file, config, tokenizer or GGUF is missing, malformed or unsupported)
  2  usage error (click's own)
  3  output problem (destination not writable, disk full)
  4  runtime problem (the model could not be loaded or run)
  130 interrupted (Ctrl-C)
  143 terminated (SIGTERM)
"""
from __future__ import annotations


class GgufkitError(Exception):
    exit_code = 1

    def __init__(self, message: str, path=None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(GgufkitError):
    """A model file, config, tokenizer or GGUF is missing, malformed or unsupported."""
    exit_code = 1


class UsageError(GgufkitError, ValueError):
    """An argument the command or the Python API cannot take (an unknown scheme, --chunks 0). A ValueError too,
    for callers that catch that."""
    exit_code = 2


class OutputError(GgufkitError):
    """The destination cannot be written (permissions, full disk)."""
    exit_code = 3


class RuntimeFailure(GgufkitError):
    """A model could not be loaded or run."""
    exit_code = 4


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, systemd and CI send), raised by the CLI as an exception so that it unwinds like
    Ctrl-C: `with` blocks clean up (a conversion removes its temp file); the exit code is 143 (128 + 15)."""
