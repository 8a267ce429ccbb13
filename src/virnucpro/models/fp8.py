"""FP8 (e4m3) linear layers for ESM-2: `--precision fp8`.

A weight is quantized once, per output channel; an activation per row (token), as it comes:
x ~ q * s with s = max|row| / 448 (the largest e4m3 value), so each row uses the format's
whole range. The product runs on FP8 tensor cores (torch._scaled_mm) and the scales are
applied to its float32 accumulation; the bias is added after, in bf16.

Mean correction: VirNucPro reads ESM-2 as a mean over each protein's tokens, and FP8's error
has a part shared by a sequence's tokens (the weight's rounding, the same for every token)
that a mean does not average away. ``mean_correction="weight"`` (`--precision fp8`) adds back,
per sequence, (mean x) (W - W_fp8)^T, the weight rounding's share of the mean output: a
(B, K) x (K, N) bf16 product, about one token's cost per sequence, with the residue
W - W_fp8 kept in bf16. ``"output"`` (benchmarks only: more exact, slower) replaces the mean
output with the bf16 product (mean x) W^T, which also removes the activations' share; it keeps
the bf16 weight. Either way only the deviations from the mean carry FP8's error. The means are
over a sequence's real tokens (padding excluded, BOS and EOS included); the feature VirNucPro
pools is residues 1..1024, which differs by those two tokens and by residues past 1024: a
small mismatch, kept so that the layers need not know the pooling rule.

Applied from outside, like --compile: to_fp8 swaps a loaded model's nn.Linear layers.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.models.esm2 import ESM2, Layer, _rotate

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max
ESM2_LINEARS = ("qkv", "out_proj", "fc1", "fc2")
MEAN_CORRECTIONS = (None, "weight", "output")


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values and float32 scales of x (..., K), one scale per row: x ~ q * scale."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    # clamped after the division: a zero row gets the smallest normal scale, not a subnormal
    # one that a kernel flushing subnormals to zero would turn into 0/0
    scale = (amax / E4M3_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    return (x.float() / scale).to(E4M3), scale


class Fp8Linear(nn.Module):
    """nn.Linear with its weight in e4m3 (a scale per output channel) and its input
    quantized per row on the way in; output in bf16. With ``mean_correction`` and a
    (B, T, K) input, each sequence's mean output over the tokens ``keep`` marks (all when
    None) is corrected as the module docstring says: "weight" removes the weight rounding's
    share, "output" makes the mean the bf16 product of the mean input."""

    def __init__(
        self, linear: nn.Linear, fast_accumulation: bool = False, mean_correction: str | None = None
    ) -> None:
        super().__init__()
        if mean_correction not in MEAN_CORRECTIONS:
            raise ValueError(f"mean_correction: one of {MEAN_CORRECTIONS}")
        weight = linear.weight.detach()
        values, scale = quantize(weight)
        self.register_buffer("weight", values)  # (out, in), e4m3
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # (1, out)
        if mean_correction == "weight":  # what rounding took from the weight, in bf16
            residue = weight.float() - values.float() * scale
            self.register_buffer("correction_weight", residue.to(torch.bfloat16))
        elif mean_correction == "output":
            self.register_buffer("correction_weight", weight.to(torch.bfloat16))
        else:
            self.register_buffer("correction_weight", None)
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.fast_accumulation = fast_accumulation
        self.mean_correction = mean_correction

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T on FP8 tensor cores, bf16, without the bias."""
        rows = x.reshape(-1, x.shape[-1])
        count = rows.shape[0]
        # the FP8 kernels take row counts in multiples of 16; padded whatever the count (a
        # branch on it would make --compile compile again for counts that are multiples)
        rows = F.pad(rows, (0, 0, 0, -count % 16))
        values, scale = quantize(rows)
        out = torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale,
                               out_dtype=torch.bfloat16,
                               use_fast_accum=self.fast_accumulation)[:count]  # fmt: skip
        return out.reshape(*x.shape[:-1], -1)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        out = self.product(x)
        if self.mean_correction and x.dim() == 3:
            shift = token_mean(x, keep).to(torch.bfloat16) @ self.correction_weight.t()  # (B, out)
            shift = shift.float()
            if self.mean_correction == "output":
                shift = shift - token_mean(out, keep)
            out = (out.float() + shift[:, None, :]).to(torch.bfloat16)
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype)


def token_mean(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of x (B, T, K), in float32, of the tokens keep (B, T) marks. A plain
    reduction rather than a batched product, so that the compiler may fuse it with the op
    that makes x."""
    if keep is None:
        return x.float().mean(1)
    weights = keep.float() / keep.sum(1, keepdim=True)
    return (x.float() * weights[:, :, None]).sum(1)


def _linear(module: nn.Module, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return module(x, keep) if isinstance(module, Fp8Linear) else module(x)


class Fp8Layer(nn.Module):
    """An ESM-2 Layer (models/esm2.py; the same math) whose linears may be Fp8Linear, which
    are given the padding so that their mean correction counts real tokens only."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.self_attn_layer_norm = layer.self_attn_layer_norm
        self.final_layer_norm = layer.final_layer_norm
        self.heads = layer.self_attn.heads
        self.qkv, self.out_proj = layer.self_attn.qkv, layer.self_attn.out_proj
        self.fc1, self.fc2 = layer.fc1, layer.fc2

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b, t, d = x.shape
        keep = None if mask is None else mask[:, 0, 0, :]  # (B, T), True = a real token
        h = _linear(self.qkv, self.self_attn_layer_norm(x), keep)
        q, k, v = h.view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(_rotate(q, cos, sin), _rotate(k, cos, sin), v,
                                           attn_mask=mask)  # fmt: skip
        x = x + _linear(self.out_proj, y.transpose(1, 2).reshape(b, t, d), keep)
        h = F.gelu(_linear(self.fc1, self.final_layer_norm(x), keep))
        return x + _linear(self.fc2, h, keep)


def to_fp8(
    model: ESM2,
    linears: Collection[str] = ESM2_LINEARS,
    fast_accumulation: bool = True,
    mean_correction: str | None = "weight",
) -> ESM2:
    """Make the named linear layers of every ESM-2 layer (qkv, out_proj: the attention's;
    fc1, fc2: the MLP's) Fp8Linear, in place; returns the model. The defaults are
    `--precision fp8`'s scheme, chosen by benchmarks/fp8_variants.py (benchmarks/README.md,
    "FP8 ESM-2")."""
    unknown = set(linears) - set(ESM2_LINEARS)
    if unknown:
        raise ValueError(f"not ESM-2 linear layers: {', '.join(sorted(unknown))}")
    for number, layer in enumerate(model.layers):
        fp8 = Fp8Layer(layer)
        for name in linears:
            setattr(fp8, name, Fp8Linear(getattr(fp8, name), fast_accumulation, mean_correction))
        model.layers[number] = fp8
    return model
