"""Make a deployment bundle for a device: the model, ggufkit itself, an install script, a systemd unit, a README.

The bundle (written to a temporary directory beside DIR, then renamed into place) holds:
  MODEL.gguf              a hard link to the model (a copy when DIR is on another file system)
  ggufkit-VERSION.tar.gz  ggufkit's source distribution, built by `deploy` from this ggufkit (or --sdist FILE);
                          the board compiles its C core when installing it: nothing comes from a ggufkit release
  install.sh              run on the board: checks the CPU, creates PREFIX/venv, installs that sdist and
                          llama-cpp-python (built with the device's CMAKE_ARGS, or from --find-links wheels),
                          copies the model, writes PREFIX/bin/ggufkit-serve and the systemd unit
  ggufkit.service         systemd unit running `ggufkit serve` on the model with the device's threads
  README.md               the steps, the predicted memory use and notes for the board
Safe by default: the server binds 127.0.0.1. With --host set to a reachable address, install.sh generates a
random API key into PREFIX/ggufkit.env (mode 0600) and prints where it is; serving a reachable port without a key
takes --no-api-key. --dry-run prints the files and the memory prediction and writes nothing.

\b
Example:
  ggufkit deploy SmolLM2-135M-Instruct-Q4_K_M.gguf --device rpi5-8gb -o ./bundle-rpi5
  ggufkit deploy SmolLM2-135M-Instruct-Q4_K_M.gguf --device rpi5-8gb -o ./bundle-lan --host 0.0.0.0
  ggufkit deploy model-Q4_K_M.gguf --devices rpi5-8gb,rpi4-4gb --workers 10.0.0.12 -o ./group
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from ggufkit.edge import memory
from ggufkit.edge.bundle import (
    LOOPBACK,
    UNIT_NAME,
    build_sdist,
    install_script,
    link_or_copy,
    readme,
    sdist_name,
    serve_argv,
    serve_script,
    unit_file,
    write_atomically,
    write_files,
)
from ggufkit.edge.devices import DEVICES, get_device
from ggufkit.errors import InputError


def write_bundle(model: Path, out: Path, files: dict[str, str], extra: list[Path] = ()) -> str:
    """Everything into a temp dir beside `out`, fsynced, then one rename. Returns how the model got there."""

    def fill(tmp: Path) -> str:
        how = link_or_copy(model, tmp / model.name)
        for path in extra:
            shutil.copy2(path, tmp / path.name)
        write_files(tmp, files, executable=lambda name: name.endswith(".sh") or name == "ggufkit-serve")
        return how

    return write_atomically(out, fill)


@click.command("deploy", help=__doc__)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", default=None, type=click.Choice(sorted(DEVICES), case_sensitive=False),
              help="Target device profile.")
@click.option("--devices", default=None, metavar="HEAD,WORKER[,...]",
              help="A group sharing the model over RPC (head first): a bundle per board (see ggufkit fit --devices).")
@click.option("--workers", default=None, metavar="HOST[:PORT],...",
              help="With --devices: the address of each worker board, in order.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Bundle directory.")
@click.option("--ctx", type=click.IntRange(16), default=2048, show_default=True, help="Context size to serve.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the server binds on the board; any other than loopback gets a generated API key.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--no-api-key", is_flag=True, help="With a non-loopback --host: serve without an API key (anyone who "
                                                 "can reach the port can use the model).")
@click.option("--threads", type=click.IntRange(1), default=None, help="Threads to serve with [device profile's].")
@click.option("--prefix", default="/opt/ggufkit", show_default=True, help="Install directory on the board.")
@click.option("--sdist", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="ggufkit source distribution to bundle [default: built from this ggufkit's source tree].")
@click.option("--dry-run", is_flag=True, help="Show what would be written; write nothing.")
def command(model, device, out, ctx, host, port, no_api_key, threads, prefix, sdist, dry_run, devices=None,
            workers=None):
    if not model.is_file():
        raise InputError("no such file", model)
    if devices or not device:
        from ggufkit.commands._deploy_group import deploy_command

        return deploy_command(model, device, devices, workers, out, ctx, host, port, prefix, dry_run, sdist=sdist)
    dev = get_device(device)
    api_key = host not in LOOPBACK and not no_api_key
    est = memory.estimate(memory.shape_from_gguf(model), ctx, dev.features)
    sdist_file = sdist.name if sdist is not None else sdist_name()
    argv = serve_argv(dev, model.name, prefix, ctx, host, port, threads)
    files = {"install.sh": install_script(dev, model.name, prefix, sdist_file, host, port, api_key),
             "ggufkit-serve": serve_script(argv, prefix),
             UNIT_NAME: unit_file(dev, model.name, prefix, ctx, host, port, threads),
             "README.md": readme(dev, model.name, prefix, ctx, host, port, est, api_key, sdist_file, threads)}
    needed = est.needed / memory.MIB
    budget = round(dev.budget_mib())
    click.echo(f"{dev.name}: predicted {needed:.0f} MiB needed of {budget} MiB budget (as ggufkit fit)"
               f"{'' if needed <= budget else '  (does NOT fit: see ggufkit fit)'}")
    if host not in LOOPBACK and no_api_key:
        click.echo(f"warning: the bundle serves {host}:{port} without an API key", err=True)
    if dry_run:
        click.echo(f"would write {out}/: {model.name}, {sdist_file}, " + ", ".join(files))
        return
    with tempfile.TemporaryDirectory(prefix="ggufkit-deploy-") as work:
        built = sdist if sdist is not None else build_sdist(Path(work))
        how = write_bundle(model, out, files, extra=[built])
    click.echo(f"wrote {out}/: {model.name} ({how}), {sdist_file}, " + ", ".join(files))
