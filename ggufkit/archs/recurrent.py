"""Tensors of recurrent / convolutional layers that llama.cpp stores in a different shape than the checkpoint,
shared by the hybrid families (LFM2's short convolutions, Qwen 3.5's gated delta-net convolution, ...).

A depthwise causal Conv1d weight is (channels, 1, kernel) in PyTorch; llama.cpp's conv ops take it as a matrix
(channels, kernel) - one row of kernel taps per channel (numpy order; ggml ne = [kernel, channels]). Same bytes,
one dimension fewer: `squeezed` presents a ref in the shape llama.cpp wants, reading the same rows.
"""
from __future__ import annotations

import dataclasses


def squeezed(ref, shape: tuple[int, ...]):
    """The checkpoint tensor `ref` seen with `shape` (same element count, size-1 dims dropped); rows read as
    (rows of shape, cols of shape). Refs whose shape already is `shape` are returned as they are."""
    if tuple(ref.shape) == tuple(shape):
        return ref
    return dataclasses.replace(ref, shape=tuple(shape))


def is_depthwise_conv(shape: tuple[int, ...]) -> bool:
    """(channels, 1, kernel): a depthwise Conv1d weight."""
    return len(shape) == 3 and shape[1] == 1


# ---- gated delta-net (Qwen 3.5): value heads from grouped to tiled order

def v_head_order(n_k_heads: int, n_v_heads: int) -> list[int]:
    """Output value head j -> source value head. Checkpoints group the value heads by the key head they share
    ([k0: v0..v(r-1)], [k1: ...]); llama.cpp broadcasts key heads over value heads tiled ([k0, k1, ...] repeated),
    so value head v of key group k moves from k * r + v to v * n_k + k (r = n_v / n_k)."""
    r = n_v_heads // n_k_heads
    return [k * r + v for v in range(r) for k in range(n_k_heads)]


def row_index(n_rows: int, first: int, head_rows: int, order: list[int]):
    """Source row for every output row of a (n_rows, cols) tensor whose rows [first, first + len(order) *
    head_rows) are head blocks reordered by `order`; other rows stay."""
    import numpy as np

    idx = np.arange(n_rows)
    heads = np.asarray(order)[:, None] * head_rows + np.arange(head_rows)[None, :]  # (n_heads, head_rows)
    idx[first:first + heads.size] = first + heads.reshape(-1)
    return idx


def gather_rows(read_rows, idx):
    """read_rows over output rows, each taken from source row idx[row]: reads runs of consecutive source rows
    (whole heads), so a row block reads only its own rows."""
    import numpy as np

    def read(start: int, stop: int) -> np.ndarray:
        src = idx[start:stop]
        breaks = np.flatnonzero(np.diff(src) != 1) + 1
        pieces = [read_rows(int(run[0]), int(run[-1]) + 1) for run in np.split(src, breaks)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    return read


# ---- Mamba-2 (Granite 4.0-H, Falcon-H1): the mixer's tensors in the shapes llama.cpp's ssm ops take

def mamba2_tensor(name: str, ref, n_group: int):
    """A Mamba-2 mixer tensor (`<layer>.mamba.<part>`) -> (name gguf-py maps, ref in llama.cpp's shape):
        conv1d.weight (conv_dim, 1, d_conv)  -> (conv_dim, d_conv)           ssm_conv1d
        dt_bias       (n_head,)              -> named dt_proj.bias            ssm_dt.bias
        A_log, D      (n_head,)              -> (n_head, 1)                   ssm_a (values: mamba2_a), ssm_d
        norm.weight   (d_inner,)             -> (n_group, d_inner / n_group)  ssm_norm: the gated RMS norm is
                                                                              taken per group
    Other tensors are returned as they are."""
    shape = tuple(ref.shape)
    if name.endswith(".conv1d.weight") and is_depthwise_conv(shape):
        return name, squeezed(ref, (shape[0], shape[2]))
    if name.endswith(".dt_bias"):
        return name[: -len(".dt_bias")] + ".dt_proj.bias", ref
    if name.endswith((".A_log", ".D")) and len(shape) == 1:
        return name, squeezed(ref, (shape[0], 1))
    if name.endswith(".mamba.norm.weight") and len(shape) == 1 and shape[0] % n_group == 0:
        return name, squeezed(ref, (n_group, shape[0] // n_group))
    return name, ref


def mamba2_a(read_rows):
    """ssm_a's values: A = -exp(A_log), as llama.cpp's ssm scan takes A (rows of (n_head, 1) f32)."""
    import numpy as np

    return lambda a, b: -np.exp(read_rows(a, b))


def default_time_step_limit(limit) -> bool:
    """True for a Mamba-2 `time_step_limit` of (0, inf), i.e. no clamp (llama.cpp's scan has none). transformers
    writes infinity into config.json as {"__float__": "Infinity"}; anything unreadable is not the default."""
    try:
        values = [float(v["__float__"] if isinstance(v, dict) else v) for v in limit]
    except (TypeError, ValueError, KeyError):
        return False
    return values == [0.0, float("inf")]
