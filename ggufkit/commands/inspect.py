"""Show what is inside a GGUF file: architecture, key metadata, tokenizer, tensor types, size, bits per weight.

The whole file structure is validated first: a truncated or corrupt file gives a one-line error (exit 1).
--tensors lists every tensor (name, shape in ggml order, type, bytes); --json prints the same as JSON.
The first part of a split set (model-00001-of-00003.gguf) is shown as the whole model, every part checked.

\b
Example:
  ggufkit inspect SmolLM2-135M-Instruct.Q4_K_M.gguf --tensors
"""
from __future__ import annotations

import json

import click

from ggufkit.sources.gguf import summarize
from ggufkit.sources.gguf_model import open_gguf_model


def _printable(text) -> str:
    """Text from the file with control characters escaped, so a crafted name cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


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
                   f"{_size(s['tensor_bytes'])}{bpw}")
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
            shape = " x ".join(str(d) for d in t["shape"])
            lines.append(f"  {name:<{width}} {shape:<20} {t['type']:<8} {t['bytes']:>12}")
    return "\n".join(lines)


@click.command("inspect", help=__doc__)
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--tensors", is_flag=True, help="List every tensor (name, shape, type, bytes).")
def command(file: str, as_json: bool, tensors: bool) -> None:
    model = open_gguf_model(file)  # a split set (its first part) is summarized as one model
    summary = summarize(model.as_gguf_file(), with_tensors=tensors)
    if len(model.parts) > 1:
        summary["split_parts"] = [str(p.path) for p in model.parts]
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        click.echo(render_text(summary))
