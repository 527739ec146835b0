"""`ggufkit deploy MODEL --devices ... --workers ...`: the group side of the deploy command (commands/deploy.py
routes here; the bundles themselves are ggufkit.edge.group_bundle)."""
from __future__ import annotations

from pathlib import Path

import click

from ggufkit.edge import memory
from ggufkit.edge.bundle import sdist_name
from ggufkit.edge.devices import get_device
from ggufkit.edge.group import plan_group
from ggufkit.edge.group_bundle import _table, board_dirs, group_files, write_group
from ggufkit.errors import InputError
from ggufkit.runtime.rpc import parse_endpoints


def deploy_command(model: Path, device, devices, workers, out: Path, n_ctx: int, host: str, port: int, prefix: str,
                   dry_run: bool, echo=None, sdist: Path | None = None) -> None:
    """`ggufkit deploy MODEL --devices ... --workers ...` (commands/deploy.py routes here)."""
    echo = echo or click.echo
    if device or not devices:
        raise click.UsageError("give --device (one board) or --devices (a group)")
    try:
        boards = [get_device(n) for n in devices.split(",")]
    except ValueError as e:
        raise InputError(str(e), "--devices") from None
    if len(boards) < 2:
        raise InputError("name at least two boards: the head first, then the workers", "--devices")
    if not workers:
        raise click.UsageError("--devices needs --workers HOST[:PORT],... (one address per worker board)")
    endpoints = [str(e) for e in parse_endpoints(workers)]
    if len(endpoints) != len(boards) - 1:
        raise InputError(f"{len(endpoints)} addresses for {len(boards) - 1} worker boards", "--workers")
    plan = plan_group(memory.shape_from_gguf(model), boards, n_ctx)
    files = group_files(model.name, plan, endpoints, n_ctx, host, port, prefix)
    for line in _table(plan, board_dirs(plan), endpoints).splitlines():
        echo(line)
    if not plan.fits:
        echo("warning: the model does NOT fit every board at this context (see ggufkit fit --devices)")
    if dry_run:
        echo(f"would write {out}/: " + ", ".join(f"{d}/ ({', '.join(f)})" for d, f in files.items()))
        return
    import tempfile

    from ggufkit.edge.bundle import build_sdist

    with tempfile.TemporaryDirectory(prefix="ggufkit-deploy-") as work:
        write_group(model, out, files, sdist=sdist if sdist is not None else build_sdist(Path(work)))
    echo(f"wrote {out}/: " + ", ".join(files) + f" (each with {sdist_name()})")
