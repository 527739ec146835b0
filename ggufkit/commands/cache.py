"""List or remove the models `run`, `chat`, `serve` and `bench` converted into the cache.

An HF checkpoint or hub id given to those commands is converted once to
$GGUFKIT_CACHE/models/<model>-<SCHEME>-<key>.gguf (default ~/.cache/ggufkit) and reused; `ls` shows those files,
`rm` deletes them: by model name (every scheme), by model and scheme, by file name, or --all. Temp files left
by a killed conversion go with --all. Nothing outside the cache's models/ folder is touched (the llama-cpp-python
wheel cache next to it stays).

\b
Example:
  ggufkit cache ls
  ggufkit cache rm SmolLM2-135M-Instruct --scheme q4_k_m
  ggufkit cache rm --all
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from ggufkit import runtime
from ggufkit.errors import InputError, OutputError


@dataclass
class Entry:
    model: str
    scheme: str
    key: str
    bytes: int
    last_used: float  # the file's access time, else its modification time (seconds since the epoch)
    path: str


def models_dir() -> Path:
    return runtime.cache_root() / "models"


def entries() -> list[Entry]:
    """Every cached model, newest use first. Names are <model>-<scheme>-<16 hex key>.gguf (runtime.cached_gguf_path);
    other files are not listed."""
    out = []
    folder = models_dir()
    if not folder.is_dir():
        return out
    for path in folder.glob("*.gguf"):
        parts = path.stem.rsplit("-", 2)
        if len(parts) != 3 or path.name.startswith(".") or len(parts[2]) != 16:
            continue
        st = path.stat()
        out.append(Entry(parts[0], parts[1].upper(), parts[2], st.st_size, max(st.st_atime, st.st_mtime),
                         str(path)))
    return sorted(out, key=lambda e: (-e.last_used, e.model, e.scheme))


def _table(rows: list[Entry]) -> str:
    header = ["model", "scheme", "size MiB", "last used", "file"]
    lines = [[e.model, e.scheme, f"{e.bytes / 2**20:.1f}", time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used)),
              Path(e.path).name] for e in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:>{w}}}" if i == 2 else f"{{:<{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row).rstrip() for row in [header, *lines])


@click.group("cache", help=__doc__)
def command():
    pass


@command.command("ls", help="List the cached models (model, scheme, file size, last use, file).\n\n"
                            "\b\nExample:\n  ggufkit cache ls --json")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def ls(as_json):
    rows = entries()
    if as_json:
        click.echo(json.dumps({"cache": str(models_dir()), "models": [asdict(e) for e in rows]}, indent=1))
    elif not rows:
        click.echo(f"no cached models in {models_dir()}")
    else:
        click.echo(_table(rows))
        click.echo(f"{len(rows)} model(s), {sum(e.bytes for e in rows) / 2**20:.1f} MiB in {models_dir()}")


@command.command("rm", help="Remove cached models: NAME is a model name (every scheme, or --scheme's) or a file "
                            "name from `ggufkit cache ls`.\n\n"
                            "\b\nExample:\n  ggufkit cache rm SmolLM2-135M-Instruct --scheme q8_0")
@click.argument("names", nargs=-1)
@click.option("--scheme", default=None, help="Only this scheme of the named models.")
@click.option("--all", "remove_all", is_flag=True, help="Remove every cached model (and leftover temp files).")
def rm(names, scheme, remove_all):
    if remove_all == bool(names):
        raise click.UsageError("name the models to remove, or give --all")
    rows = entries()
    if remove_all:
        chosen = [e for e in rows if scheme is None or e.scheme == scheme.upper()]
    else:
        chosen = [e for e in rows if (e.model in names or Path(e.path).name in names)
                  and (scheme is None or e.scheme == scheme.upper())]
        missing = [n for n in names if not any(n in (e.model, Path(e.path).name) for e in chosen)]
        if missing:
            raise InputError("not in the cache (see `ggufkit cache ls`)"
                             + (f" at scheme {scheme.upper()}" if scheme else ""), ", ".join(missing))
    removed = 0
    for e in chosen:
        path = Path(e.path)
        try:
            path.unlink()
            path.with_suffix(".lock").unlink(missing_ok=True)
        except OSError as err:
            raise OutputError(f"cannot remove: {err.strerror}", path) from None
        removed += e.bytes
    if remove_all and scheme is None and models_dir().is_dir():  # what killed conversions left behind
        for stale in list(models_dir().glob(".*.tmp")) + list(models_dir().glob("*.lock")):
            removed += stale.stat().st_size
            stale.unlink(missing_ok=True)
    click.echo(f"removed {len(chosen)} model(s), {removed / 2**20:.1f} MiB")
