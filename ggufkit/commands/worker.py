"""Start an RPC worker: llama.cpp's rpc-server, which runs the layers a head (`ggufkit run|chat|serve --rpc`)
gives it.

The worker listens on 127.0.0.1 unless --host says otherwise. llama.cpp's RPC protocol has no authentication
and no encryption: put a worker on a trusted network only (a warning says so every start). --mem caps the memory
the worker may allocate for model buffers (RLIMIT_DATA): a head asking for more fails at load with an error
instead of the board swapping. It serves one head at a time and runs until stopped (Ctrl-C).

\b
Example:
  ggufkit worker --host 0.0.0.0 --port 50052 --mem 6000
"""
from __future__ import annotations

import signal
import subprocess

import click

from ggufkit.errors import RuntimeFailure


@click.command("worker", help=__doc__)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=50052, show_default=True)
@click.option("--mem", "mem_mib", type=click.IntRange(16), default=None, help="Most MiB of model buffers to accept.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads (default: all available).")
@click.option("--cache", is_flag=True, help="Keep received tensors in llama.cpp's local cache (~/.cache/llama.cpp/"
              "rpc) so a restart of the head sends large tensors as hashes.")
def command(host, port, mem_mib, threads, cache):
    from ggufkit.runtime import rpc

    click.echo(rpc.WARNING, err=True)
    proc = rpc.start_worker(host, port, threads, mem_mib, cache, stdout=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, lambda *a: proc.terminate())
    try:
        if not rpc.wait_listening(proc, rpc.Endpoint("127.0.0.1" if host in ("0.0.0.0", "") else host, port)):
            raise RuntimeFailure(f"rpc-server could not listen there (exit code {proc.returncode}; port in use or "
                                 "address not on this machine?)", f"worker {host}:{port}")
        click.echo(f"worker listening on {host}:{port} (pid {proc.pid}"
                   f"{f', at most {mem_mib} MiB of buffers' if mem_mib else ''}); Ctrl-C stops it", err=True)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise click.exceptions.Abort() from None
    if code not in (0, -signal.SIGTERM):
        raise RuntimeFailure(f"rpc-server stopped with exit code {code}", f"worker {host}:{port}")
