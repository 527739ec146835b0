"""Benchmark GGUF models: prompt processing and generation speed, load time, peak memory, file size.

Each model runs in its own fresh process (so load time and peak RSS are its own), with --threads threads
(default: the physical cores minus one - ggml's threads wait for each other, and all cores on a machine running
anything else collapses the speed; see BENCHMARKS.md "Threads"); the table shows the count used. Prompt processing
evaluates --pp tokens in one go; generation samples and evaluates --tg tokens one at a time (greedy). Each is
repeated --reps times and the median is reported. --json prints the numbers as JSON; --plot FILE.png draws
them (needs matplotlib: pip install 'ggufkit[plot]').

\b
Example:
  ggufkit bench SmolLM2-135M-Instruct-Q4_K_M.gguf SmolLM2-135M-Instruct-Q8_0.gguf --reps 5 --plot speeds.png
"""
from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from pathlib import Path

import click

from ggufkit import runtime
from ggufkit.errors import InputError, OutputError, RuntimeFailure

FILLER = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
          "foolishness, it was the epoch of belief, it was the epoch of incredulity. ")


def _bench_one(path: str, pp: int, tg: int, reps: int, threads: int | None) -> dict:
    """Runs in a child process: every number for one model file."""
    import resource

    start = time.perf_counter()
    llm = runtime.load(path, n_ctx=pp + tg + 8, n_threads=threads, n_batch=max(pp, 1))
    load_s = time.perf_counter() - start
    text = FILLER * (pp // 8 + 1)
    tokens = llm.tokenize(text.encode(), add_bos=False)[:pp]  # (pp,) token ids
    pp_times, tg_times = [], []
    for _ in range(reps):
        llm.reset()
        t = time.perf_counter()
        llm.eval(tokens)
        pp_times.append(time.perf_counter() - t)
    for _ in range(reps):
        llm.reset()
        llm.eval(tokens[:1])
        t = time.perf_counter()
        for _ in range(tg):
            llm.eval([llm.sample(temp=0.0)])
        tg_times.append(time.perf_counter() - t)
    return {
        "model": Path(path).name, "path": str(path), "size_bytes": Path(path).stat().st_size,
        "load_s": load_s, "pp_tokens": pp, "pp_tok_s": pp / statistics.median(pp_times),
        "tg_tokens": tg, "tg_tok_s": tg / statistics.median(tg_times), "reps": reps,
        "threads": llm.n_threads,  # what llama.cpp was given (--threads, else runtime.default_threads())
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
    }


def _child(queue, *args):
    try:
        queue.put(("ok", _bench_one(*args)))
    except Exception as e:  # noqa: BLE001  (sent to the parent, which raises it as a one-line error)
        queue.put(("error", f"{type(e).__name__}: {e}"))


def bench_model(path: Path, pp: int, tg: int, reps: int, threads: int | None) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue, str(path), pp, tg, reps, threads))
    child.start()
    try:
        status, payload = queue.get()
    finally:
        child.join()
    if status != "ok":
        raise RuntimeFailure(payload, path)
    return payload


def format_table(rows: list[dict]) -> str:
    header = ["model", "size MiB", "load s", "pp tok/s", "tg tok/s", "peak RSS MiB", "threads"]
    lines = [[r["model"], f"{r['size_bytes'] / 2**20:.1f}", f"{r['load_s']:.2f}", f"{r['pp_tok_s']:.1f}",
              f"{r['tg_tok_s']:.1f}", f"{r['peak_rss_bytes'] / 2**20:.0f}", str(r["threads"])] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [header, *lines])


def plot(rows: list[dict], out: Path) -> None:
    """Two bar charts (pp and tg tokens/s per model) into a PNG, written via temp file + rename."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InputError("--plot needs matplotlib: pip install 'ggufkit[plot]'", out) from e
    names = [r["model"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(rows), 4), constrained_layout=True)
    for ax, key, title in ((axes[0], "pp_tok_s", "prompt processing"), (axes[1], "tg_tok_s", "generation")):
        ax.bar(range(len(rows)), [r[key] for r in rows], color="#4b7bd1")
        ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("tokens/s")
    tmp = out.with_name(out.name + ".tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        tmp.replace(out)
    except OSError as e:
        raise OutputError(f"cannot write the plot: {e.strerror}", out) from e
    finally:
        plt.close(fig)


@click.command("bench")
@click.argument("models", nargs=-1, required=True)
@click.option("--scheme", default=None, help="For HF checkpoints: the quant scheme to convert to.")
@click.option("--pp", type=click.IntRange(1), default=128, show_default=True, help="Prompt tokens.")
@click.option("--tg", type=click.IntRange(1), default=64, show_default=True, help="Generated tokens.")
@click.option("--reps", type=click.IntRange(1), default=3, show_default=True, help="Repetitions (median).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads [default: physical cores - 1, at least 1; shown in the table].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the speeds into this PNG file.")
def command(models, scheme, pp, tg, reps, threads, as_json, plot_path):
    paths = [runtime.resolve_model(m, scheme, quiet=as_json) for m in models]
    for path in paths:  # fail before the first (slow) measurement
        runtime.load_check(path)
    rows = []
    for path in paths:
        if not as_json:
            click.echo(f"benchmarking {path.name} ...", err=True)
        rows.append(bench_model(path, pp, tg, reps, threads))
    click.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))
    if plot_path:
        plot(rows, plot_path)


command.help = __doc__
