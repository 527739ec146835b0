"""Which scheme fits a device: predicted RAM of every scheme at a context size, and the best one that fits.

SRC is a Hugging Face checkpoint (directory or hub id) or a GGUF file. For each scheme the tensor types are
llama-quantize's (ggufkit.plan.schemes), and the predicted RAM is the peak RSS of llama-cpp-python with a full
context on that device's CPU (ggufkit.edge.memory: weights, KV cache, compute buffers, runtime). A scheme fits when
that prediction, minus page cache the kernel can drop, stays within the device's RAM after the OS's share and
the headroom. The pick is the best-quality scheme that fits (llama.cpp's perplexity table; schemes within
0.01 ppl of each other count as equal and the smaller wins). For a GGUF file its own types are shown first.

\b
Example:
  ggufkit fit ./SmolLM2-135M-Instruct --device rpi5-8gb --ctx 4096
  ggufkit fit ./SmolLM2-135M-Instruct --devices rpi5-8gb,rpi5-8gb,rpi4-4gb --ctx 4096
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ggufkit.edge import memory
from ggufkit.edge.devices import DEFAULT_HEADROOM, DEVICES, get_device
from ggufkit.errors import InputError

# Perplexity increase over F16 on Llama-3-8B, from llama.cpp's quantize tool (tools/quantize/quantize.cpp).
# F16/BF16 are its Mistral-7B figures. IQ4_NL/IQ4_XS have no figure there: placed just below Q4_K_S (estimate).
QUALITY_PPL = {
    "F32": 0.0, "BF16": -0.0050, "F16": 0.0020, "Q8_0": 0.0026, "Q6_K": 0.0217, "Q5_K_M": 0.0569,
    "Q5_K_S": 0.1049, "Q5_1": 0.1062, "Q5_0": 0.1316, "Q4_K_M": 0.1754, "Q4_K_S": 0.2689, "IQ4_NL": 0.27,
    "IQ4_XS": 0.28, "Q4_1": 0.4511, "Q4_0": 0.4685, "Q3_K_L": 0.5562, "Q3_K_M": 0.6569, "Q3_K_S": 1.6321,
    "Q2_K": 3.5199,
}
SAME_QUALITY_PPL = 0.01
MIB = memory.MIB


def _rows(shape, info, n_ctx, features):
    from ggufkit.plan.schemes import SCHEMES

    rows = []
    for name in SCHEMES:
        try:
            typed = memory.with_scheme(shape, info, name)
        except ValueError:   # the model's rows fit no block of the scheme (Q1_0 on rows of 576): not a candidate
            continue
        est = memory.estimate(typed, n_ctx, features)
        n_params = sum(_count(s) for _, s, _ in typed.tensors)
        rows.append({"scheme": name, "tensor_mib": round(typed.weight_bytes / MIB, 1),
                     "bits_per_weight": round(8 * typed.weight_bytes / n_params, 2),
                     "ppl_increase": QUALITY_PPL.get(name), **est.as_dict()})
    return rows


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def pick_best(rows: list[dict]) -> dict | None:
    """Best quality among the rows that fit; near-equal quality (within SAME_QUALITY_PPL) -> smallest needed."""
    fitting = [r for r in rows if r["fits"] and r["ppl_increase"] is not None]
    if not fitting:
        return None
    best = min(r["ppl_increase"] for r in fitting)
    equal = [r for r in fitting if r["ppl_increase"] <= best + SAME_QUALITY_PPL]
    return min(equal, key=lambda r: r["needed_mib"])


def fit_report(src: str, device_name: str, n_ctx: int, headroom: float, reserve_mib: int | None) -> dict:
    dev = get_device(device_name)
    path = Path(src).expanduser()
    file_row = None
    if path.is_file():
        shape = memory.shape_from_gguf(path)
        info = memory.model_info_from_gguf(path)
        file_est = memory.estimate(shape, n_ctx, dev.features)
        file_row = {"scheme": "(this file)", "tensor_mib": round(shape.weight_bytes / MIB, 1),
                    "file_mib": round(memory.file_bytes(path) / MIB, 1),
                    "bits_per_weight": round(8 * shape.weight_bytes / sum(_count(s) for _, s, _ in shape.tensors), 2),
                    "ppl_increase": None, **file_est.as_dict()}
    else:
        try:
            shape, info = memory.shape_from_checkpoint(src)
        except ValueError as e:
            raise InputError(str(e), src) from None
    reserve = dev.os_reserve_mib if reserve_mib is None else reserve_mib
    budget = dev.budget_mib(headroom, reserve)
    rows = _rows(shape, info, n_ctx, dev.features)
    for r in rows + ([file_row] if file_row else []):
        r["fits"] = r["needed_mib"] <= budget
    pick = pick_best(rows)
    return {"model": shape.name, "n_ctx": n_ctx,
            "device": {"name": dev.name, "title": dev.title, "ram_mib": dev.ram_mib, "os_reserve_mib": reserve,
                       "headroom": headroom, "budget_mib": round(budget, 1), "features": sorted(dev.features),
                       "threads": dev.threads},
            "file": file_row, "schemes": rows, "pick": pick["scheme"] if pick else None,
            "ppl_increase": "llama.cpp's perplexity increase over F16 for Llama-3-8B (tools/quantize), a generic "
                            "ranking of the schemes, not measured on this model"}


def _print(report: dict) -> None:
    d = report["device"]
    click.echo(f"{d['name']}: {d['title']}, {d['ram_mib']} MiB RAM - {d['os_reserve_mib']} MiB for the OS, "
               f"{d['headroom']:.0%} headroom -> budget {d['budget_mib']:.0f} MiB")
    click.echo(f"model: {report['model']}, context {report['n_ctx']} tokens")
    click.echo("RSS: predicted peak RSS with a full context; RAM: RSS minus page cache the kernel can drop "
               "(weights llama.cpp copied into repacked buffers); fits: RAM <= budget")
    click.echo("tensors: tensor data (a file adds its metadata; `ggufkit inspect` shows the file size); quality: "
               "llama.cpp's perplexity increase for Llama-3-8B, a generic ranking, not this model "
               "(`ggufkit compare` measures this model)")
    click.echo(f"{'scheme':<12} {'tensors MiB':>11} {'bpw':>6} {'KV MiB':>7} {'RSS MiB':>8} {'RAM MiB':>8} {'fits':>5}"
               "  quality (Llama-3-8B ΔPPL)")
    rows = ([report["file"]] if report["file"] else []) + report["schemes"]
    for r in rows:
        ppl = "" if r["ppl_increase"] is None else f"{r['ppl_increase']:+.4f} ppl"
        mark = "  <- pick" if r["scheme"] == report["pick"] else ""
        click.echo(f"{r['scheme']:<12} {r['tensor_mib']:>11.1f} {r['bits_per_weight']:>6.2f} {r['kv_cache_mib']:>7.1f} "
                   f"{r['total_mib']:>8.1f} {r['needed_mib']:>8.1f} {'yes' if r['fits'] else 'no':>5}  {ppl}{mark}")
    if report["pick"]:
        click.echo(f"best fit: {report['pick']}")
    else:
        click.echo("no scheme fits: use a smaller context (--ctx), a smaller model or a bigger device")


@click.command("fit", help=__doc__)
@click.argument("src")
@click.option("--device", "device", default=None, type=click.Choice(sorted(DEVICES), case_sensitive=False),
              help="Target device profile.")
@click.option("--devices", default=None, metavar="HEAD,WORKER[,...]",
              help="A group of boards sharing the model over RPC (the head first): the split and RAM per board.")
@click.option("--ctx", type=click.IntRange(16), default=4096, show_default=True, help="Context size in tokens.")
@click.option("--headroom", type=click.FloatRange(0, 0.9), default=DEFAULT_HEADROOM, show_default=True,
              help="Fraction of the RAM budget kept free (covers the memory model's 15% accuracy).")
@click.option("--reserve", "reserve_mib", type=click.IntRange(0), default=None,
              help="MiB the OS keeps for itself (default: the device profile's estimate).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(src, device, ctx, headroom, reserve_mib, as_json, devices=None):
    if devices or not device:
        if not devices or device:
            raise click.UsageError("give --device (one board) or --devices (a group)")
        from ggufkit.edge import group

        report = group.group_report(src, devices.split(","), ctx, headroom, reserve_mib)
        click.echo(json.dumps(report, indent=2) if as_json else "\n".join(group.format_report(report)))
        return
    report = fit_report(src, device, ctx, headroom, reserve_mib)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print(report)

