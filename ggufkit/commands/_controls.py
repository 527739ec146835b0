"""llama-quantize's controls as click options, shared by `convert` and `quantize` (not a command itself)."""
from __future__ import annotations

from pathlib import Path

import click

from ggufkit.plan import overrides as ov

CONTROL_PARAMS = ("tensor_type", "tensor_type_file", "output_tensor_type", "token_embedding_type", "pure",
                  "leave_output_tensor", "include_weights", "exclude_weights", "override_kv")


def _type(ctx, param, value):
    if value is None:
        return None
    try:
        return ov.parse_ggml_type(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _tensor_types(ctx, param, values):
    try:
        return tuple(ov.parse_tensor_type(v) for v in values)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _kv(ctx, param, values):
    try:
        return tuple(ov.parse_kv_override(v) for v in values)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _split_size(ctx, param, value):
    if value is None:
        return None
    from ggufkit.output.split import parse_size

    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def control_options(f):
    """The per-tensor controls and metadata overrides (llama-quantize's names and meanings)."""
    options = [
        click.option("--tensor-type", multiple=True, callback=_tensor_types, metavar="REGEX=TYPE",
                     help="Type for the tensors whose name matches REGEX (searched, lower-cased; the first matching "
                          "option wins; repeatable), e.g. --tensor-type attn_v=q8_0. Beats the scheme's rules; "
                          "row-length fallbacks still apply. Quantized schemes only."),
        click.option("--tensor-type-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="A file of REGEX=TYPE items separated by spaces or newlines (after any --tensor-type)."),
        click.option("--output-tensor-type", callback=_type, metavar="TYPE", help="Type for output.weight."),
        click.option("--token-embedding-type", callback=_type, metavar="TYPE",
                     help="Type for the token embeddings (token_embd.weight)."),
        click.option("--pure", is_flag=True, help="No scheme mixture: every quantizable tensor gets the scheme's "
                                                  "base type (patterns and the two types above still apply)."),
        click.option("--leave-output-tensor", is_flag=True, help="Keep output.weight in its source type."),
        click.option("--include-weights", multiple=True, metavar="NAME",
                     help="Use the importance matrix only for tensors whose name contains NAME (repeatable)."),
        click.option("--exclude-weights", multiple=True, metavar="NAME",
                     help="Do not use the importance matrix for tensors whose name contains NAME (repeatable)."),
        click.option("--override-kv", multiple=True, callback=_kv, metavar="KEY=TYPE:VALUE",
                     help="Set a metadata key in the output; TYPE is int (written as u32), float, bool or str "
                          "(repeatable), e.g. --override-kv general.name=str:MyModel."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def split_options(f):
    """gguf-split's output options."""
    f = click.option("--split-max-tensors", type=click.IntRange(min=1), metavar="N",
                     help="Write a split set (gguf-split's layout) with at most N tensors per part.")(f)
    f = click.option("--split-max-size", callback=_split_size, metavar="SIZE",
                     help="Write a split set (gguf-split's layout) with parts of at most SIZE of tensor data "
                          "(M = 10^6, G = 10^9 bytes), e.g. 2G.")(f)
    return f


def pop_controls(kwargs: dict) -> ov.Controls:
    """Take the control options out of a command's kwargs and build the Controls they mean."""
    values = {name: kwargs.pop(name) for name in CONTROL_PARAMS}
    tensor_types = tuple(values["tensor_type"])
    if values["tensor_type_file"] is not None:
        tensor_types += tuple(ov.parse_tensor_type_file(values["tensor_type_file"]))
    if values["include_weights"] and values["exclude_weights"]:
        raise click.UsageError("--include-weights and --exclude-weights cannot be used together")
    return ov.Controls(tensor_types=tensor_types, output_tensor_type=values["output_tensor_type"],
                       token_embedding_type=values["token_embedding_type"], pure=values["pure"],
                       leave_output_tensor=values["leave_output_tensor"], kv_overrides=tuple(values["override_kv"]),
                       include_weights=tuple(values["include_weights"]),
                       exclude_weights=tuple(values["exclude_weights"]))
