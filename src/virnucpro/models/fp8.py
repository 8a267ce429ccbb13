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

Applied from outside, like --compile: to_fp8 swaps a loaded model's nn.Linear layers. On a GPU
an Fp8Layer runs the Triton kernels of models/fp8_kernels.py, which make each activation's
e4m3 rows (and the token means) in the pass that makes the activation; on the CPU, and as the
reference those kernels are tested against, it runs op by op (Fp8Layer's docstring).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.models.esm2 import ESM2, Layer, _rotate

if TYPE_CHECKING:
    from virnucpro.models.fp8_kernels import Rows

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
    # times the reciprocal, as the GPU kernels do it (models/fp8_kernels.py): a division per
    # element costs them several instructions
    return (x.float() * (1 / scale)).to(E4M3), scale


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

    def product_of(self, rows: Rows, shape: tuple[int, int], bias: bool = False) -> torch.Tensor:
        """x W^T, bf16 (B, T, out), of x already in e4m3 (rows(): the fused path); with the
        bias if ``bias``."""
        b, t = shape
        out = torch._scaled_mm(rows.values, self.weight.t(), scale_a=rows.scales,
                               scale_b=self.weight_scale, bias=self.bias if bias else None,
                               out_dtype=torch.bfloat16,
                               use_fast_accum=self.fast_accumulation)  # fmt: skip
        return out[: b * t].view(b, t, -1)

    def shift(self, means: torch.Tensor | None) -> torch.Tensor | None:
        """The weight mean correction (B, out), float32, of the inputs' means (B, in)."""
        if self.mean_correction != "weight":
            return None
        return (means.to(torch.bfloat16) @ self.correction_weight.t()).float()

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
    """An ESM-2 Layer (models/esm2.py; the same math) whose linears may be Fp8Linear.

    Two ways to run it. ``forward_reference``: ESM-2's Layer op by op, each Fp8Linear
    quantizing its own input (given the padding, so that its mean correction counts real
    tokens only); the CPU's way and the reference the other is tested against.
    ``forward_fused``, the GPU's way when all four linears are Fp8Linear without "output"
    correction: the activations are quantized by the Triton kernels of
    models/fp8_kernels.py in the pass that makes them (norms, GELU, residual adds), which
    also add the biases and mean corrections and take the token means the corrections need.
    """

    run_fused: bool | None = None  # None: fused on a CUDA device (tests set True on the CPU)

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.self_attn_layer_norm = layer.self_attn_layer_norm
        self.final_layer_norm = layer.final_layer_norm
        self.heads = layer.self_attn.heads
        self.qkv, self.out_proj = layer.self_attn.qkv, layer.self_attn.out_proj
        self.fc1, self.fc2 = layer.fc1, layer.fc2

    @property
    def fusable(self) -> bool:
        linears = (self.qkv, self.out_proj, self.fc1, self.fc2)
        return all(
            isinstance(m, Fp8Linear) and m.mean_correction in (None, "weight") for m in linears
        )

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        fused = x.is_cuda if self.run_fused is None else self.run_fused
        if fused and self.fusable:
            return self.forward_fused(x, cos, sin, mask)
        return self.forward_reference(x, cos, sin, mask)

    def forward_reference(
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

    def forward_fused(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        from virnucpro.models.fp8_kernels import rotary, rows  # Triton: imported where it runs

        b, t, d = x.shape
        keep = None if mask is None else mask[:, 0, 0, :]
        means = self.qkv.mean_correction == "weight"
        normed = rows(x, norm=self.self_attn_layer_norm, keep=keep, means=means)
        h = self.qkv.product_of(normed, (b, t), bias=True)
        shift = self.qkv.shift(normed.means)
        q, k, v = rotary(h, None if shift is None else shift[:, : 2 * d], cos, sin, self.heads)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # v's correction added to attention's output instead: each query's attention weights
        # sum to 1, so shifting every value of a sequence shifts its output alike
        shift = None if shift is None else shift[:, 2 * d :]
        attended = rows(y.transpose(1, 2), shift=shift, keep=keep, means=means)
        o = self.out_proj.product_of(attended, (b, t))
        normed = rows(x, other=o, **_added(self.out_proj, attended.means),
                      norm=self.final_layer_norm, keep=keep, means=means)  # fmt: skip
        x = normed.summed
        h = self.fc1.product_of(normed, (b, t))
        activated = rows(h, **_added(self.fc1, normed.means), gelu=True, keep=keep, means=means)
        o = self.fc2.product_of(activated, (b, t))
        return rows(x, other=o, **_added(self.fc2, activated.means), quantize=False).summed


def _added(linear: Fp8Linear, means: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """rows()'s arguments for what it adds to ``linear``'s output: its bias, folded into its
    mean correction where there is one (one float32 vector per sequence), so that the kernel
    reads one vector per column rather than two."""
    shift = linear.shift(means)
    if shift is None:
        return {"bias": linear.bias}
    return {"shift": shift if linear.bias is None else shift + linear.bias.float()}


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
