"""Make a deployment bundle for a device: the model, an install script, a systemd unit and a README.

The bundle (written to a temporary directory beside DIR, then renamed into place) holds:
  MODEL.gguf       a hard link to the model (a copy when DIR is on another file system)
  install.sh       run on the board: checks the CPU, creates PREFIX/venv, installs ggufkit[run] with the
                   llama-cpp-python build flags for that CPU (CMAKE_ARGS), copies the model and the unit
  ggufkit.service  systemd unit running `ggufkit serve` on the model with the device's threads
  README.md        the steps, the predicted memory use and notes for the board
--dry-run prints the files and the memory prediction and writes nothing.

\b
Example:
  ggufkit deploy SmolLM2-135M-Instruct-Q4_K_M.gguf --device rpi5-8gb -o ./bundle-rpi5
  ggufkit deploy model.gguf --devices rpi5-8gb,rpi4-4gb --workers 10.0.0.12 -o ./group
"""
from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path

import click

from ggufkit import __version__
from ggufkit.edge import memory
from ggufkit.edge.devices import DEVICES, Device, get_device
from ggufkit.errors import InputError, OutputError

UNIT_NAME = "ggufkit.service"


def pip_spec() -> str:
    return f"ggufkit[run]=={__version__}"


def install_script(dev: Device, model_name: str, prefix: str) -> str:
    q = shlex.quote
    return f"""#!/usr/bin/env bash
# Installs ggufkit and {model_name} on a {dev.title}; made by `ggufkit deploy`.
# Run on the board from the bundle directory:  ./install.sh      (uses sudo for {prefix} and systemd)
# Environment: PREFIX (default {prefix}; the unit expects {prefix}), GGUFKIT_SPEC (what pip installs, default
# {pip_spec()}: a wheel path or a git URL also work).
set -euo pipefail
cd "$(dirname "$0")"
PREFIX="${{PREFIX:-{prefix}}}"
GGUFKIT_SPEC="${{GGUFKIT_SPEC:-{pip_spec()}}}"
MODEL={q(model_name)}

arch="$(uname -m)"
if [ "$arch" != {q(dev.isa)} ]; then
  echo "error: this bundle is for {dev.isa} ({dev.title}); this machine is $arch" >&2
  exit 1
fi
for tool in python3 cmake cc c++; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is missing; install the build tools first:" >&2
    echo "  sudo apt-get install -y python3-venv python3-dev build-essential cmake" >&2
    exit 1
  fi
done

sudo mkdir -p "$PREFIX"
sudo chown "$(id -u):$(id -g)" "$PREFIX"
python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --upgrade pip
# llama-cpp-python compiles llama.cpp here (10-30 minutes on a board); the flags pick this CPU's instructions.
CMAKE_ARGS={q(dev.cmake_args)} CMAKE_BUILD_PARALLEL_LEVEL={dev.cores} \\
  "$PREFIX/venv/bin/pip" install --no-cache-dir --no-binary llama-cpp-python "$GGUFKIT_SPEC"
cp "$MODEL" "$PREFIX/$MODEL"

sudo install -m 0644 {UNIT_NAME} /etc/systemd/system/{UNIT_NAME}
if [ ! -e /etc/ggufkit/env ]; then
  sudo install -d -m 0755 /etc/ggufkit
  # GGUFKIT_API_KEY=... here makes the server require that bearer key
  echo "# GGUFKIT_API_KEY=change-me" | sudo tee /etc/ggufkit/env >/dev/null
  sudo chmod 0600 /etc/ggufkit/env
fi
sudo systemctl daemon-reload
echo "installed. Start it with:  sudo systemctl enable --now {UNIT_NAME}"
"""


def unit_file(dev: Device, model_name: str, prefix: str, n_ctx: int, host: str, port: int) -> str:
    exec_start = " ".join([f"{prefix}/venv/bin/ggufkit", "serve", shlex.quote(f"{prefix}/{model_name}"),
                           "--host", host, "--port", str(port), "--ctx", str(n_ctx), "--threads", str(dev.threads)])
    return f"""[Unit]
Description=ggufkit serve {model_name} (OpenAI-compatible API) on {dev.title}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
EnvironmentFile=-/etc/ggufkit/env
Environment=HF_HUB_OFFLINE=1
DynamicUser=yes
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def readme(dev: Device, model_name: str, prefix: str, n_ctx: int, host: str, port: int,
           est: memory.MemoryEstimate) -> str:
    budget = dev.usable_mib
    fits = "fits" if est.needed / memory.MIB <= budget else "does NOT fit"
    return f"""# {model_name} on {dev.title}

Made by `ggufkit deploy` (ggufkit {__version__}).

| | |
| --- | --- |
| CPU | {dev.cpu} ({', '.join(sorted(dev.features))}) |
| threads | {dev.threads} |
| llama.cpp build flags | `CMAKE_ARGS="{dev.cmake_args}"` |
| context | {n_ctx} tokens |
| predicted RAM | {est.needed / memory.MIB:.0f} MiB needed, {est.total / memory.MIB:.0f} MiB peak RSS \
(weights {est.weights / memory.MIB:.0f}, KV cache {est.kv_cache / memory.MIB:.0f}, \
compute {est.compute / memory.MIB:.0f}, runtime {est.overhead / memory.MIB:.0f}) |
| RAM for the model | {budget} MiB of {dev.ram_mib} MiB after the OS: the model {fits} |

{dev.notes}

## Install

1. Copy this directory to the board: `scp -r {Path(model_name).stem}-bundle pi@board:` (any name works).
2. On the board, with the build tools (`sudo apt-get install -y python3-venv python3-dev build-essential cmake`):
   `./install.sh` - creates `{prefix}/venv`, builds llama-cpp-python for this CPU, copies the model.
3. Optional: put `GGUFKIT_API_KEY=...` in `/etc/ggufkit/env` to require a bearer key.
4. `sudo systemctl enable --now {UNIT_NAME}`; logs: `journalctl -u {UNIT_NAME} -f`.
5. Test: `curl http://{'localhost' if host in ('0.0.0.0', '::') else host}:{port}/v1/models`, or open the page
   at that address in a browser.
"""


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "hard link"
    except OSError:
        shutil.copy2(src, dst)
        return "copy"


def write_bundle(model: Path, out: Path, files: dict[str, str]) -> str:
    """Everything into a temp dir beside `out`, fsynced, then one rename. Returns how the model got there."""
    if out.exists():
        raise OutputError("already exists (remove it or choose another -o)", out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot create the bundle: {e.strerror}", out) from None
    try:
        how = _link_or_copy(model, tmp / model.name)
        for name, text in files.items():
            path = tmp / name
            with open(path, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if name.endswith(".sh"):
                path.chmod(0o755)
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write the bundle: {e.strerror or e}", out) from None
    return how


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
@click.option("--host", default="0.0.0.0", show_default=True, help="Address the server binds on the board.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--prefix", default="/opt/ggufkit", show_default=True, help="Install directory on the board.")
@click.option("--dry-run", is_flag=True, help="Show what would be written; write nothing.")
def command(model, device, out, ctx, host, port, prefix, dry_run, devices=None, workers=None):
    if not model.is_file():
        raise InputError("no such file", model)
    if devices or not device:
        from ggufkit.commands._deploy_group import deploy_command

        return deploy_command(model, device, devices, workers, out, ctx, host, port, prefix, dry_run)
    dev = get_device(device)
    est = memory.estimate(memory.shape_from_gguf(model), ctx, dev.features)
    files = {"install.sh": install_script(dev, model.name, prefix),
             UNIT_NAME: unit_file(dev, model.name, prefix, ctx, host, port),
             "README.md": readme(dev, model.name, prefix, ctx, host, port, est)}
    needed = est.needed / memory.MIB
    click.echo(f"{dev.name}: predicted {needed:.0f} MiB needed of {dev.usable_mib} MiB available"
               f"{'' if needed <= dev.usable_mib else '  (does NOT fit: see ggufkit fit)'}")
    if dry_run:
        click.echo(f"would write {out}/: {model.name}, " + ", ".join(files))
        return
    how = write_bundle(model, out, files)
    click.echo(f"wrote {out}/: {model.name} ({how}), " + ", ".join(files))
