"""The layer loop of ESM-2, eager or with parts through torch.compile, and the compile cache
both models share.

An ESM-2 layer is run as two steps around the attention kernel: ``before_attention`` (norm,
projections, rotary) and ``after_attention`` (output projection, MLP, norms). The layer runs
the parts of its steps that gain from compiling through ``compiled_step``: each part is
compiled once, with dynamic shapes, and shared by every layer. Attention itself stays eager,
so whether a batch is padded (a mask or none) never adds a compiled variant, and a warm-up at
load time (embed.warm_up) compiles everything a run will need. DNABERT-S, whose layers are
small enough that launching them one step at a time held the GPU back, compiles its whole
encoder instead (models/dnabert.py, ``encode``).

Attention never takes cuDNN's kernel: PyTorch picks it first on an H100, and it plans
anew for every batch shape it has not seen (65-90 ms without a mask, up to 1.4 s with
DNABERT-S's bias as mask, measured on the H100), while flash / memory-efficient attention
start at once and run within 10-20 % of it. Batches come in many shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

_COMPILED: dict[Callable, Callable] = {}
ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def compiled_step(step: Callable, compiled: bool) -> Callable:
    """``step`` (a plain function, the layer its first argument), or with ``compiled`` its
    torch.compile'd version, made once and shared by every layer of every model instance."""
    if not compiled:
        return step
    if step not in _COMPILED:
        _COMPILED[step] = torch.compile(step, dynamic=True)
    return _COMPILED[step]


def run_layers(
    layers: nn.ModuleList,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    compiled: bool,
    *before_args: torch.Tensor,
) -> torch.Tensor:
    """x through every layer; ``mask`` is SDPA's attn_mask (None: no padding).

    Single-row batches take the eager steps even when compiled: a dimension of size 1 is
    always specialized, so one row would force another compile mid-run (single-row batches
    are rare: one very long sequence)."""
    compiled = compiled and x.shape[0] > 1
    with sdpa_kernel(ATTENTION_BACKENDS):
        for layer in layers:
            q, k, v = layer.before_attention(x, *before_args, compiled=compiled)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = layer.after_attention(x, y, compiled=compiled)
    return x
