"""Deployment bundles for a group of boards sharing one model over RPC (`ggufkit deploy --devices ...`).

    files = group_files(model_name, plan, workers, ...)   # {"head-rpi5-8gb": {...}, "worker1-rpi4-4gb": {...}}
    write_group(model, out, files)                        # out/<board>/..., written beside out, then one rename

From the same plan as `ggufkit fit --devices` (ggufkit.edge.group): the head's bundle holds the model, an
install script and `ggufkit.service` (serve with --rpc WORKERS --split COUNTS); each worker's holds an install
script and `ggufkit-worker.service` (ggufkit worker on all interfaces, --mem = the board's RAM after the OS). Every
board needs llama-cpp-python built with GGML_RPC and the rpc-server program: the install scripts build ggufkit's
own runtime recipe (ggufkit/runtime/llama_build.py) on the board rather than a plain `pip install`.
"""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from ggufkit import __version__
from ggufkit.edge import memory
from ggufkit.edge.bundle import link_or_copy, sdist_name, write_atomically, write_files
from ggufkit.edge.group import GroupPlan, Member

HEAD_UNIT = "ggufkit.service"
WORKER_UNIT = "ggufkit-worker.service"
MIB = memory.MIB


def board_dirs(plan: GroupPlan) -> list[str]:
    return [f"head-{m.device.name}" if i == 0 else f"worker{i}-{m.device.name}" for i, m in enumerate(plan.members)]


def _install(member: Member, prefix: str, model_name: str | None, unit: str) -> str:
    dev = member.device
    q = shlex.quote
    copy_model = f'cp {q(model_name)} "$PREFIX/{model_name}"\n' if model_name else ""
    return f"""#!/usr/bin/env bash
# Installs ggufkit ({member.role}) on a {dev.title}; made by `ggufkit deploy --devices`.
# Run on the board from this directory:  ./install.sh      (uses sudo for {prefix} and systemd)
# Environment: PREFIX (default {prefix}; the unit expects {prefix}), GGUFKIT_SPEC (what pip installs, default
# the ggufkit source distribution in this bundle, {sdist_name()}: no ggufkit release is needed).
set -euo pipefail
cd "$(dirname "$0")"
PREFIX="${{PREFIX:-{prefix}}}"
GGUFKIT_SPEC="${{GGUFKIT_SPEC:-$PWD/{sdist_name()}}}"

if [ "$(uname -m)" != {q(dev.isa)} ]; then
  echo "error: this bundle is for {dev.isa} ({dev.title}); this machine is $(uname -m)" >&2
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
"$PREFIX/venv/bin/pip" install "$GGUFKIT_SPEC"
# llama-cpp-python with the RPC backend and rpc-server, built from source here (20-60 minutes on a board).
WHEEL="$(CMAKE_BUILD_PARALLEL_LEVEL={dev.cores} "$PREFIX/venv/bin/python" -m ggufkit.runtime.llama_build \\
  --cache "$PREFIX/wheels" | tail -n 1)"
"$PREFIX/venv/bin/pip" install "$WHEEL" "$GGUFKIT_SPEC[run]"
{copy_model}
sudo install -m 0644 {unit} /etc/systemd/system/{unit}
sudo systemctl daemon-reload
echo "installed. Start it with:  sudo systemctl enable --now {unit}"
"""


def _unit(description: str, exec_start: list[str]) -> str:
    return f"""[Unit]
Description={description}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={" ".join(shlex.quote(a) for a in exec_start)}
EnvironmentFile=-/etc/ggufkit/env
Environment=HF_HUB_OFFLINE=1
DynamicUser=yes
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def group_files(model_name: str, plan: GroupPlan, workers: list[str], n_ctx: int, host: str = "0.0.0.0",
                port: int = 8080, prefix: str = "/opt/ggufkit") -> dict[str, dict[str, str]]:
    """Board directory -> {file name: text}. workers: "HOST:PORT" of each worker board, in plan order."""
    dirs = board_dirs(plan)
    head = plan.members[0]
    rpc_list = ",".join(workers)
    out = {}
    serve = [f"{prefix}/venv/bin/ggufkit", "serve", f"{prefix}/{model_name}", "--host", host, "--port", str(port),
             "--ctx", str(n_ctx), "--threads", str(head.device.threads), "--rpc", rpc_list, "--split", plan.split]
    table = _table(plan, dirs, workers)
    out[dirs[0]] = {
        "install.sh": _install(head, prefix, model_name, HEAD_UNIT),
        HEAD_UNIT: _unit(f"ggufkit serve {model_name} over RPC workers {rpc_list}", serve),
        "README.md": _readme(head, dirs[0], table, f"""Start the workers first (their bundles: {", ".join(dirs[1:])}), then
`sudo systemctl enable --now {HEAD_UNIT}`. If a worker goes away the server keeps answering: the model restarts on
the remaining boards (if it fits there), and `GET /health` says which workers are in use. Test:
`curl http://<this board>:{port}/v1/models`."""),
    }
    for i, (member, where) in enumerate(zip(plan.members[1:], workers), start=1):
        wport = where.rpartition(":")[2]
        mem = max(int(member.budget / MIB), 16)
        worker = [f"{prefix}/venv/bin/ggufkit", "worker", "--host", "0.0.0.0", "--port", wport, "--mem", str(mem),
                  "--threads", str(member.device.threads)]
        out[dirs[i]] = {
            "install.sh": _install(member, prefix, None, WORKER_UNIT),
            WORKER_UNIT: _unit(f"ggufkit RPC worker on port {wport} (llama.cpp rpc-server)", worker),
            "README.md": _readme(member, dirs[i], table, f"""`sudo systemctl enable --now {WORKER_UNIT}`; the head reaches
this board as `{where}`. llama.cpp's RPC protocol has no authentication or encryption: allow port {wport} only
from the head (for example `sudo ufw allow from <head address> to any port {wport}`), never from the internet."""),
        }
    return out


def _table(plan: GroupPlan, dirs: list[str], workers: list[str]) -> str:
    rows = ["| board | bundle | address | layers | predicted RAM | budget |", "| --- | --- | --- | --- | --- | --- |"]
    for m, d, a in zip(plan.members, dirs, ["(head)"] + workers):
        span = f"{m.first_layer}-{m.first_layer + m.layers - 1}" if m.layers else "-"
        rows.append(f"| {m.device.title} | {d} | {a} | {span}{' + output' if m.output else ''} | "
                    f"{m.needed / MIB:.0f} MiB | {m.budget / MIB:.0f} MiB |")
    return "\n".join(rows)


def _readme(member: Member, name: str, table: str, start: str) -> str:
    dev = member.device
    return f"""# {name}: {member.role} of a {len(table.splitlines()) - 2}-board group

Made by `ggufkit deploy --devices` (ggufkit {__version__}). CPU: {dev.cpu}, {dev.threads} threads.

{table}

## Install

1. Copy this directory to the board (`scp -r {name} pi@board:`).
2. On the board, with the build tools (`sudo apt-get install -y python3-venv python3-dev build-essential cmake`):
   `./install.sh`.
3. {start}

{dev.notes}
"""


def write_group(model: Path, out: Path, files: dict[str, dict[str, str]], sdist: Path | None = None) -> None:
    """All bundles into a temp dir beside `out`, fsynced, then one rename; the model (hard link, else copy)
    into the head's directory only; ggufkit's source distribution (sdist) into every board's."""

    def fill(tmp: Path) -> None:
        for i, (board, board_files) in enumerate(files.items()):
            folder = tmp / board
            folder.mkdir()
            if sdist is not None:
                shutil.copy2(sdist, folder / sdist_name())
            if i == 0:
                link_or_copy(model, folder / model.name)
            write_files(folder, board_files)
            folder.chmod(0o755)

    write_atomically(out, fill, what="bundles")

