"""The transformer layer loop of both models, eager or through torch.compile.

A layer is run as two steps around the attention kernel: ``before_attention`` (projections,
rotary) and ``after_attention`` (output projection, MLP, norms). With --compile each step
is compiled once, with dynamic shapes, and shared by every layer; attention itself stays
eager, so whether a batch is padded (a mask or none) never adds a compiled variant, and a
warm-up at load time (embed.warm_up) compiles everything a run will need.

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


def _compiled(step: Callable) -> Callable:
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
    before, after = type(layers[0]).before_attention, type(layers[0]).after_attention
    if compiled and x.shape[0] > 1:
        before, after = _compiled(before), _compiled(after)
    with sdpa_kernel(ATTENTION_BACKENDS):
        for layer in layers:
            q, k, v = before(layer, x, *before_args)
            x = after(layer, x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    return x
