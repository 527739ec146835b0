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
