"""Show what is inside a GGUF file: architecture, key metadata, tokenizer, tensor types, size, bits per weight.

The whole file structure is validated first: a truncated or corrupt file gives a one-line error (exit 1).
--tensors lists every tensor (name, shape as rows x cols - the order of the Hugging Face checkpoint and of
`convert --dry-run` - type, bytes); --json prints the same as JSON, where "shape" is in ggml's order (ne0, the
row length, first; as gguf-py reports it).
The first part of a split set (model-00001-of-00003.gguf) is shown as the whole model, every part checked.
A Hugging Face checkpoint directory is summarised by source format instead: a pre-quantized one (GPTQ, AWQ,
bitsandbytes, FP8, MXFP4, compressed-tensors) shows each group's method, bits and group size, and the GGUF type
that `convert --scheme source` keeps it in without a second rounding ("lossless").

\b
Example:
  ggufkit inspect SmolLM2-135M-Instruct-Q4_K_M.gguf --tensors
  ggufkit inspect ./SmolLM2-135M-Instruct-GPTQ-Int4
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ggufkit.sources.gguf import summarize
from ggufkit.sources.gguf_model import open_gguf_model


def _printable(text) -> str:
    """Text from the file with control characters escaped, so a crafted name cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _size(n: int) -> str:
    """Sizes as everywhere in ggufkit (convert, bench, compare, fit): MiB of 2**20 bytes, one decimal."""
    return f"{n / 2**20:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else str(n)


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _token(s: dict, which: str) -> str | None:
    if f"{which}_token_id" not in s:
        return None
    text = s.get(f"{which}_token")
    return f"{s[f'{which}_token_id']}" + (f" {text!r}" if text is not None else "")


def _tokenizer_line(t: dict) -> str:
    parts = [str(t.get("model", "none"))]
    if "pre" in t:
        parts[0] += f" (pre {t['pre']})"
    if "vocab_size" in t:
        parts.append(f"{t['vocab_size']} tokens")
    if "merges" in t:
        parts.append(f"{t['merges']} merges")
    for which in ("bos", "eos"):
        token = _token(t, which)
        if token:
            parts.append(f"{which} {token}")
    parts.append("chat template: " + ("yes" if t["chat_template"] else "no"))
    return ", ".join(parts)


def render_text(s: dict) -> str:
    """The human-readable report of a summarize() dict."""
    lines = [f"{_printable(s['file'])}  ({_size(s['file_size'])}, GGUF v{s['gguf_version']}, {s['metadata_keys']} keys)"]
    if s.get("split_parts"):
        lines[0] += f", split set of {len(s['split_parts'])} parts"

    def row(label: str, value) -> None:
        if value is not None:
            lines.append(f"  {label:<17} {_printable(value)}")

    h = s["hyperparameters"]
    row("architecture", s["architecture"])
    row("name", s["general"].get("name"))
    row("file type", s["file_type"])
    for key, label in (("context_length", "context length"), ("embedding_length", "embedding length"),
                       ("block_count", "layers"), ("feed_forward_length", "feed forward")):
        row(label, h.get(key))
    if "attention.head_count" in h:
        row("heads", f"{h['attention.head_count']} (kv {h.get('attention.head_count_kv', '-')})")
    rope = [f"{k.removeprefix('rope.')} {_value(v)}" for k, v in h.items() if k.startswith("rope.")]
    row("rope", ", ".join(rope) or None)
    row("tokenizer", _tokenizer_line(s["tokenizer"]))
    bpw = f", {s['bits_per_weight']:.2f} bits per weight" if s["bits_per_weight"] else ""
    row("tensors", f"{s['tensor_count']}, {_count(s['parameters'])} parameters, "
                   f"tensor data {_size(s['tensor_bytes'])}{bpw}")
    lines.append("")
    lines.append(f"  {'type':<10} {'count':>6} {'parameters':>14} {'bytes':>14} {'bpw':>6}")
    for name, t in s["tensor_types"].items():
        bpw = t["bytes"] * 8 / t["parameters"] if t["parameters"] else 0.0
        lines.append(f"  {name:<10} {t['count']:>6} {t['parameters']:>14} {t['bytes']:>14} {bpw:>6.2f}")
    if "tensors" in s:
        lines.append("")
        names = [_printable(t["name"]) for t in s["tensors"]]
        width = max((len(name) for name in names), default=4)
        lines.append(f"  {'name':<{width}} {'shape':<20} {'type':<8} {'bytes':>12}")
        for name, t in zip(names, s["tensors"]):
            shape = " x ".join(str(d) for d in reversed(t["shape"]))  # rows x cols (ggml lists ne0 first)
            lines.append(f"  {name:<{width}} {shape:<20} {t['type']:<8} {t['bytes']:>12}")
    return "\n".join(lines)


def render_checkpoint(s: dict) -> str:
    """The human-readable report of a prequant.summarize_checkpoint() dict."""
    head = (f"{_printable(s['dir'])}  (Hugging Face checkpoint, {_printable(s['model_type'])}, "
            f"{s['tensor_count']} tensors, quantization: {_printable(s['quantization'] or 'none')})")
    lines = [head, ""]
    width = max([len(_printable(k)) for k in s["groups"]] + [6])
    lines.append(f"  {'source':<{width}} {'count':>6} {'parameters':>14} {'bytes':>14} {'bpw':>6}  lossless as")
    for name, g in s["groups"].items():
        bpw = g["bytes"] * 8 / g["parameters"] if g["parameters"] else 0.0
        lines.append(f"  {_printable(name):<{width}} {g['count']:>6} {g['parameters']:>14} {g['bytes']:>14} "
                     f"{bpw:>6.2f}  {g['lossless'] or '-'}")
    if "tensors" in s:
        lines.append("")
        names = [_printable(t["name"]) for t in s["tensors"]]
        nw = max((len(n) for n in names), default=4)
        for name, t in zip(names, s["tensors"]):
            shape = " x ".join(str(d) for d in t["shape"])
            lines.append(f"  {name:<{nw}} {shape:<20} {_printable(t['source']):<{width}} {t['lossless'] or '-'}")
    return "\n".join(lines)


@click.command("inspect", help=__doc__)
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--tensors", is_flag=True, help="List every tensor (name, shape, type, bytes).")
def command(file: str, as_json: bool, tensors: bool) -> None:
    if Path(file).is_dir():  # a Hugging Face checkpoint: what each tensor was in the source
        from ggufkit.sources.hf import open_checkpoint
        from ggufkit.sources.prequant import summarize_checkpoint

        summary = summarize_checkpoint(open_checkpoint(file), with_tensors=tensors)
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False) if as_json else render_checkpoint(summary))
        return
    model = open_gguf_model(file)  # a split set (its first part) is summarized as one model
    summary = summarize(model.as_gguf_file(), with_tensors=tensors)
    if len(model.parts) > 1:
        summary["split_parts"] = [str(p.path) for p in model.parts]
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        click.echo(render_text(summary))
