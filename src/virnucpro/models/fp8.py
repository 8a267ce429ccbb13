"""FP8 (e4m3) linear layers for ESM-2: the groundwork of `--precision fp8` (issue 21), used
so far only by benchmarks/fp8_probe.py, which measures their speed and agreement.

A weight is quantized once, per output channel; an activation per row (token), as it comes:
x ~ q * s with s = max|row| / 448 (the largest e4m3 value), so each row uses the format's
whole range. The product runs on FP8 tensor cores (torch._scaled_mm) and the scales are
applied to its float32 accumulation; the bias is added after, in bf16. Applied from outside,
like --compile: to_fp8 swaps a loaded model's nn.Linear layers for these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.models.esm2 import ESM2

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max
ESM2_LINEARS = ("qkv", "out_proj", "fc1", "fc2")


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values and float32 scales of x (..., K), one scale per row: x ~ q * scale."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = amax.clamp(min=torch.finfo(torch.float32).tiny) / E4M3_MAX
    return (x.float() / scale).to(E4M3), scale


class Fp8Linear(nn.Module):
    """nn.Linear with its weight in e4m3 (a scale per output channel) and its input
    quantized per row on the way in; output in bf16."""

    def __init__(self, linear: nn.Linear, fast_accumulation: bool = False) -> None:
        super().__init__()
        weight, scale = quantize(linear.weight.detach())
        self.register_buffer("weight", weight)  # (out, in), e4m3
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # (1, out)
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.fast_accumulation = fast_accumulation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        count = rows.shape[0]
        if count % 16:  # the FP8 kernels take row counts in multiples of 16
            rows = F.pad(rows, (0, 0, 0, 16 - count % 16))
        values, scale = quantize(rows)
        out = torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale,
                               out_dtype=torch.bfloat16,
                               use_fast_accum=self.fast_accumulation)[:count]  # fmt: skip
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], -1).to(x.dtype)


def to_fp8(
    model: ESM2, linears: tuple[str, ...] = ESM2_LINEARS, fast_accumulation: bool = False
) -> ESM2:
    """Swap the named linear layers of every ESM-2 layer (qkv, out_proj: the attention's;
    fc1, fc2: the MLP's) for Fp8Linear, in place; returns the model."""
    unknown = set(linears) - set(ESM2_LINEARS)
    if unknown:
        raise ValueError(f"not ESM-2 linear layers: {', '.join(sorted(unknown))}")
    for layer in model.layers:
        for name in linears:
            owner = layer.self_attn if name in ("qkv", "out_proj") else layer
            setattr(owner, name, Fp8Linear(getattr(owner, name), fast_accumulation))
    return model
