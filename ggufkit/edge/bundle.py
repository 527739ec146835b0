"""The files of a deployment bundle (`ggufkit deploy`), as text: install.sh, the serve script, the systemd unit,
the README; and ggufkit's own source distribution, which the bundle carries so that the board installs this
ggufkit (compiling its C core) without any ggufkit release on a package index.

The shell the bundle runs is generated here; commands/deploy.py writes the files.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ggufkit import __version__
from ggufkit.edge import memory
from ggufkit.edge.devices import Device
from ggufkit.errors import InputError, OutputError

UNIT_NAME = "ggufkit.service"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# what serving needs besides ggufkit's own dependencies (the [run] extra also has matplotlib, for plots)
RUNTIME_SPEC = "llama-cpp-python[server]==0.3.36"
SOURCE_FILES = ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in")
SOURCE_DIRS = ("ggufkit", "native")


def sdist_name() -> str:
    return f"ggufkit-{__version__}.tar.gz"


def source_root() -> Path | None:
    """The source tree this ggufkit runs from (a checkout or an editable install), if it has one."""
    root = Path(__file__).resolve().parent.parent.parent
    return root if all((root / f).is_file() for f in ("pyproject.toml", "setup.py")) and (root / "native").is_dir() \
        else None


def build_sdist(dest: Path) -> Path:
    """ggufkit's source distribution into dest, built by setuptools from a clean copy of the source tree (the
    tree itself is not written to). Returns the .tar.gz."""
    root = source_root()
    if root is None:
        raise InputError("this ggufkit has no source tree to build the bundle's sdist from; pass --sdist FILE "
                         "(a ggufkit-*.tar.gz)")
    with tempfile.TemporaryDirectory(prefix="ggufkit-sdist-") as work:
        tree = Path(work) / "src"
        tree.mkdir()
        skip = shutil.ignore_patterns("__pycache__", "*.so", "*.o", "*.gguf", "*.egg-info", "build")
        for name in SOURCE_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, tree / name)
        for name in SOURCE_DIRS:
            shutil.copytree(root / name, tree / name, ignore=skip)
        proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--formats=gztar", "--dist-dir", str(dest)],
                              cwd=tree, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise OutputError(f"building ggufkit's sdist failed: {tail[0]}", root)
    out = dest / sdist_name()
    if not out.is_file():
        raise OutputError(f"building ggufkit's sdist did not produce {out.name}", dest)
    return out


def install_script(dev: Device, model_name: str, prefix: str, sdist: str, host: str, port: int,
                   api_key: bool) -> str:
    q = shlex.quote
    key_step = """
if [ ! -e "$PREFIX/ggufkit.env" ]; then
  ( umask 077; printf 'GGUFKIT_API_KEY=%s\\n' "$("$PREFIX/venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))')" \\
      > "$PREFIX/ggufkit.env" )
  echo "API key generated: GGUFKIT_API_KEY in $PREFIX/ggufkit.env (send it as 'Authorization: Bearer KEY')"
else
  echo "API key kept: $PREFIX/ggufkit.env"
fi""" if api_key else """
if [ ! -e "$PREFIX/ggufkit.env" ]; then
  ( umask 077; echo "# GGUFKIT_API_KEY=... here makes the server require that bearer key" > "$PREFIX/ggufkit.env" )
fi"""
    return f"""#!/usr/bin/env bash
# Installs ggufkit and {model_name} on a {dev.title}; made by `ggufkit deploy` (ggufkit {__version__}).
# Run on the board from the bundle directory:
#   ./install.sh                      into {prefix}, with a systemd unit (uses sudo where needed)
#   ./install.sh --prefix DIR --no-systemd   into DIR, no root, no systemd: start DIR/bin/ggufkit-serve yourself
#   --find-links DIR                  take llama-cpp-python from wheels in DIR instead of compiling it here
# The server listens on {host}:{port}{' with a generated API key' if api_key else ''}.
set -euo pipefail
cd "$(dirname "$0")"
PREFIX={q(prefix)}
SYSTEMD=1
FIND_LINKS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --no-systemd) SYSTEMD=0; shift ;;
    --find-links) FIND_LINKS+=(--find-links "$(cd "$2" && pwd)"); shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$PREFIX" in /*) ;; *) PREFIX="$(pwd)/$PREFIX" ;; esac
MODEL={q(model_name)}
SDIST={q(sdist)}

arch="$(uname -m)"
if [ "$arch" != {q(dev.isa)} ]; then
  echo "error: this bundle is for {dev.isa} ({dev.title}); this machine is $arch" >&2
  exit 1
fi
tools="python3 cc"
[ ${{#FIND_LINKS[@]}} -eq 0 ] && tools="$tools cmake c++"   # compiling llama.cpp here
for tool in $tools; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is missing; install the build tools first:" >&2
    echo "  sudo apt-get install -y python3-venv python3-dev build-essential cmake" >&2
    exit 1
  fi
done
SUDO=""
if [ "$SYSTEMD" = 1 ] && [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

if ! mkdir -p "$PREFIX" 2>/dev/null || [ ! -w "$PREFIX" ]; then
  $SUDO mkdir -p "$PREFIX"
  $SUDO chown "$(id -u):$(id -g)" "$PREFIX"
fi
python3 -m venv "$PREFIX/venv"
if [ ${{#FIND_LINKS[@]}} -eq 0 ]; then
  # llama-cpp-python compiles llama.cpp here (10-30 minutes on a board); the flags pick this CPU's instructions.
  CMAKE_ARGS={q(dev.cmake_args)} CMAKE_BUILD_PARALLEL_LEVEL={dev.cores} \
    "$PREFIX/venv/bin/pip" install --no-binary llama-cpp-python "./$SDIST" {q(RUNTIME_SPEC)}
else
  "$PREFIX/venv/bin/pip" install "${{FIND_LINKS[@]}}" --only-binary llama-cpp-python "./$SDIST" {q(RUNTIME_SPEC)}
fi
cp "$MODEL" "$PREFIX/$MODEL"
{key_step}
mkdir -p "$PREFIX/bin"
sed "s#{prefix}#$PREFIX#g" ggufkit-serve > "$PREFIX/bin/ggufkit-serve"
chmod 0755 "$PREFIX/bin/ggufkit-serve"

if [ "$SYSTEMD" = 1 ]; then
  sed "s#{prefix}#$PREFIX#g" {UNIT_NAME} > "$PREFIX/{UNIT_NAME}"
  $SUDO install -m 0644 "$PREFIX/{UNIT_NAME}" /etc/systemd/system/{UNIT_NAME}
  $SUDO systemctl daemon-reload
  echo "installed in $PREFIX. Start it with:  sudo systemctl enable --now {UNIT_NAME}"
else
  echo "installed in $PREFIX. Start it with:  $PREFIX/bin/ggufkit-serve"
fi
"""


def serve_argv(dev: Device, model_name: str, prefix: str, n_ctx: int, host: str, port: int,
               threads: int | None) -> list[str]:
    return [f"{prefix}/venv/bin/ggufkit", "serve", f"{prefix}/{model_name}", "--host", host, "--port", str(port),
            "--ctx", str(n_ctx), "--threads", str(threads or dev.threads)]


def serve_script(argv: list[str], prefix: str) -> str:
    """PREFIX/bin/ggufkit-serve: the unit's command with PREFIX/ggufkit.env's settings, for a start by hand."""
    return f"""#!/bin/sh
# `ggufkit serve` as the systemd unit runs it, with the settings (API key) from {prefix}/ggufkit.env
set -a
[ -r {shlex.quote(prefix + "/ggufkit.env")} ] && . {shlex.quote(prefix + "/ggufkit.env")}
set +a
export HF_HUB_OFFLINE=1
exec {" ".join(shlex.quote(a) for a in argv)} "$@"
"""


def unit_file(dev: Device, model_name: str, prefix: str, n_ctx: int, host: str, port: int,
              threads: int | None = None) -> str:
    exec_start = " ".join(shlex.quote(a) for a in serve_argv(dev, model_name, prefix, n_ctx, host, port, threads))
    return f"""[Unit]
Description=ggufkit serve {model_name} (OpenAI-compatible API) on {dev.title}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
EnvironmentFile=-{prefix}/ggufkit.env
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
           est: memory.MemoryEstimate, api_key: bool, sdist: str, threads: int | None = None) -> str:
    budget = round(dev.budget_mib())
    fits = "fits" if est.needed / memory.MIB <= budget else "does NOT fit"
    address = "localhost" if host in ("0.0.0.0", "::") else host
    curl_key = ' -H "Authorization: Bearer $GGUFKIT_API_KEY"' if api_key else ""
    if host in LOOPBACK:
        access = (f"The server listens on {host} only: reachable from the board itself (an SSH tunnel works: "
                  f"`ssh -L {port}:localhost:{port} pi@board`). To serve the network, make the bundle with "
                  "`--host 0.0.0.0`: install.sh then generates an API key.")
    elif api_key:
        access = (f"The server listens on {host}:{port} and requires an API key: install.sh generates one into "
                  f"`{prefix}/ggufkit.env` (mode 0600) and prints where it is. Clients send "
                  "`Authorization: Bearer KEY`.")
    else:
        access = (f"**The server listens on {host}:{port} without an API key** (the bundle was made with "
                  f"--no-api-key): anyone who can reach the port can use the model. Put `GGUFKIT_API_KEY=...` in "
                  f"`{prefix}/ggufkit.env` to require one.")
    return f"""# {model_name} on {dev.title}

Made by `ggufkit deploy` (ggufkit {__version__}).

| | |
| --- | --- |
| CPU | {dev.cpu} ({', '.join(sorted(dev.features))}) |
| threads | {threads or dev.threads} |
| llama.cpp build flags | `CMAKE_ARGS="{dev.cmake_args}"` |
| context | {n_ctx} tokens |
| predicted RAM | {est.needed / memory.MIB:.0f} MiB needed, {est.total / memory.MIB:.0f} MiB peak RSS \
(weights {est.weights / memory.MIB:.0f}, KV cache {est.kv_cache / memory.MIB:.0f}, \
compute {est.compute / memory.MIB:.0f}, runtime {est.overhead / memory.MIB:.0f}) |
| RAM budget | {budget} MiB: {dev.ram_mib} MiB - {dev.os_reserve_mib} MiB for the OS, 15% headroom \
(as `ggufkit fit`): the model {fits} |
| access | {host}:{port}, {'API key generated at install' if api_key else 'no API key'} |

{dev.notes}

{access}

## What is in here

- `{model_name}`: the model.
- `{sdist}`: ggufkit itself, as source: install.sh installs it with pip, which compiles its C core on the board.
  Nothing is fetched from a ggufkit release; ggufkit's dependencies (numpy, gguf, transformers, ...) and
  llama-cpp-python come from the Python package index.
- `install.sh`, `ggufkit-serve` (the server command with the settings from `{prefix}/ggufkit.env`), `{UNIT_NAME}`.

## Install

1. Copy this directory to the board: `scp -r {Path(model_name).stem}-bundle pi@board:` (any name works).
2. On the board, with the build tools (`sudo apt-get install -y python3-venv python3-dev build-essential cmake`):
   `./install.sh` - creates `{prefix}/venv`, installs ggufkit from `{sdist}` and builds llama-cpp-python for this
   CPU (10-30 minutes), copies the model, installs the systemd unit.
   Without root or systemd: `./install.sh --prefix ~/ggufkit --no-systemd`, then start `~/ggufkit/bin/ggufkit-serve`.
   With llama-cpp-python wheels built elsewhere for this CPU: add `--find-links DIR`.
3. `sudo systemctl enable --now {UNIT_NAME}`; logs: `journalctl -u {UNIT_NAME} -f`.
4. Test: `curl{curl_key} http://{address}:{port}/v1/models`, or open the page at that address in a browser.
"""


# ---- writing a bundle directory: everything into a temp dir beside OUT, fsynced, then one rename

def link_or_copy(src: Path, dst: Path) -> str:
    """A hard link to src at dst (a copy when they are on different file systems); says which it made."""
    try:
        os.link(src, dst)
        return "hard link"
    except OSError:
        shutil.copy2(src, dst)
        return "copy"


def write_files(folder: Path, files: dict[str, str], executable=lambda name: name.endswith(".sh")) -> None:
    """Text files into folder, each fsynced; the executable ones get mode 0755."""
    for name, text in files.items():
        path = folder / name
        with open(path, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if executable(name):
            path.chmod(0o755)


def write_atomically(out: Path, fill, what: str = "bundle"):
    """Create a temp dir beside OUT, let fill(tmp) write into it, then rename it to OUT in one step; on any OSError
    nothing is left and a one-line OutputError names OUT. Refuses an existing OUT. Returns what fill returned."""
    if out.exists():
        raise OutputError("already exists (remove it or choose another -o)", out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot create the {what}: {e.strerror}", out) from None
    try:
        result = fill(tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write the {what}: {e.strerror or e}", out) from None
    return result
