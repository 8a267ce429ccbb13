"""Triton kernels that make FP8 ESM-2's activations (models/fp8.py) on the GPU.

Each FP8 linear layer needs its input as e4m3 values with one scale per row, and, with the
mean correction, each sequence's mean input. Made by separate steps, that is several passes
over a large activation; here one kernel does it in the pass that makes the activation: the
residual add, the LayerNorm or the GELU before it, the row's quantization, and the
per-sequence column sums, each row read once. The bias and the mean correction of the layer
that made the activation are added on the way in.

Grid: (sequence, part of its tokens). A program walks its rows a few at a time, whole rows in
registers, and sums their columns there; the parts' sums are added afterwards, in a fixed
order, so the result is the same every run. One more kernel adds q's and k's correction and
rotates them (rotary position embeddings).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

E4M3_MAX = tl.constexpr(448.0)
FLOAT32_TINY = tl.constexpr(1.1754943508222875e-38)
PROGRAMS = 1024  # enough to fill the GPU whatever the batch's shape


# In Triton's CPU interpreter, which the tests run, values are first rounded to the narrower
# format's grid (half to even, as the GPU's conversions round), so that the conversion itself
# is exact: the interpreter truncates to bf16 and mis-rounds e4m3 values that carry into the
# next power of two. On the GPU the conversion instructions round so themselves.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _round_to_bf16(v, ROUND: tl.constexpr):
    if not ROUND:
        return v
    bits = v.to(tl.int32, bitcast=True)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000).to(tl.float32, bitcast=True)


@triton.jit
def _round_to_e4m3(v, ROUND: tl.constexpr):
    if not ROUND:
        return v
    bits = v.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)
    subnormal = (v + 24576.0) - 24576.0  # to a multiple of 2**-9, e4m3's subnormal step
    return tl.where(tl.abs(v) < 0.015625, subnormal, normal)


@triton.jit
def _gelu(v):
    """x Phi(x), the exact (erf) GELU, with Phi(-|x|) = erfc(|x| / sqrt 2) / 2 from Abramowitz
    and Stegun's 7.1.26 (absolute error below 1.5e-7): branch-free and a third of libdevice
    erf's instructions, in the kernel whose cost is mostly this (10,240 columns), and without
    the cancellation of 1 + erf(x) for negative x."""
    z = tl.abs(v) * 0.7071067811865476
    t = tl.fdiv(1.0, 1.0 + 0.3275911 * z)
    poly = -1.453152027 + t * 1.061405429
    poly = 0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * poly))
    tail = 0.5 * t * poly * tl.exp(-z * z)
    return v * tl.where(v >= 0, 1.0 - tail, tail)


# Triton compiles a kernel again for each new pattern of its integer arguments (1 or not,
# multiples of 16 or not) unless told not to: the batch's shape varies, and a compile mid-run
# costs a second. The strides stay specialized: they are multiples of 16 at every call site
# whatever the batch's shape (K and the head size are), and knowing so lets Triton load wider.
@triton.jit(do_not_specialize=["T", "rows_per_part", "PARTS"])
def _rows_kernel(
    x_ptr, x_sb, x_st, x_sh, x_sd,  # input (B, T, K), read as (B, T, K // D, D)
    other_ptr,  # (B, T, K) added to x (RESIDUAL)
    bias_ptr, shift_ptr,  # (K,) and (B, K) float32, added to x
    sum_out_ptr,  # (B, T, K) bf16: x after the additions (RESIDUAL)
    norm_w_ptr, norm_b_ptr, eps,  # LayerNorm (NORM)
    values_ptr, scales_ptr,  # (rows, K) e4m3 and (rows,) float32 (QUANTIZE)
    keep_ptr, sums_ptr,  # (B, T) int8 tokens to count; (B, PARTS, K) float32 (SUMS)
    T, rows_per_part, PARTS,
    K: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
    RESIDUAL: tl.constexpr, BIAS: tl.constexpr, SHIFT: tl.constexpr, GELU: tl.constexpr,
    NORM: tl.constexpr, QUANTIZE: tl.constexpr, SUMS: tl.constexpr, KEEP: tl.constexpr,
    ROUND: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)  # 64-bit offsets: a batch may pass 2**31 elements
    part = tl.program_id(1)
    cols = tl.arange(0, BLOCK)[None, :]
    if D == K:
        offsets = cols * x_sd
    else:
        offsets = (cols // D) * x_sh + (cols % D) * x_sd
    sums = tl.zeros([1, BLOCK], dtype=tl.float32)
    first = part * rows_per_part
    last = tl.minimum(first + rows_per_part, T)
    # ROWS rows at a time, whole rows in registers. The per-column vectors (bias, shift, norm
    # weights) are read again each step, from cache: held across the loop they took the
    # registers that let several programs share a multiprocessor (tests/fp8_ptx.py)
    for start in range(first, last, ROWS):
        t = start + tl.arange(0, ROWS)[:, None]
        inside = (t < last) & (cols < K)
        row = b * T + t
        v = tl.load(x_ptr + b * x_sb + t * x_st + offsets, mask=inside, other=0.0)
        v = v.to(tl.float32)
        if RESIDUAL:
            v += tl.load(other_ptr + row * K + cols, mask=inside, other=0.0).to(tl.float32)
        if BIAS:
            v += tl.load(bias_ptr + cols, mask=cols < K, other=0.0)
        if SHIFT:
            v += tl.load(shift_ptr + b * K + cols, mask=cols < K, other=0.0)
        if RESIDUAL:  # the residual stream is kept in bf16: normalize what is stored
            v = _round_to_bf16(v, ROUND)
            tl.store(sum_out_ptr + row * K + cols, v.to(tl.bfloat16), mask=inside)
        if GELU:
            v = _gelu(v)
        if NORM:
            mean = tl.sum(v, axis=1, keep_dims=True) / K
            centered = tl.where(inside, v - mean, 0.0)
            variance = tl.sum(centered * centered, axis=1, keep_dims=True) / K
            norm_w = tl.load(norm_w_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
            norm_b = tl.load(norm_b_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
            v = centered * tl.math.rsqrt(variance + eps) * norm_w + norm_b
        if QUANTIZE:
            amax = tl.max(tl.abs(v), axis=1, keep_dims=True)
            scale = tl.maximum(amax / E4M3_MAX, FLOAT32_TINY)
            # times the row's reciprocal: a division per element costs several instructions
            values = _round_to_e4m3(v * (1.0 / scale), ROUND).to(tl.float8e4nv)
            tl.store(values_ptr + row * K + cols, values, mask=inside)
            tl.store(scales_ptr + row, scale, mask=t < last)
        if SUMS:
            counted = inside
            if KEEP:
                counted &= tl.load(keep_ptr + row, mask=t < last, other=0) != 0
            sums += tl.sum(tl.where(counted, v, 0.0), axis=0, keep_dims=True)
    if SUMS:
        tl.store(sums_ptr + (b * PARTS + part) * K + cols, sums, mask=cols < K)


@triton.jit(do_not_specialize=["rows", "T"])
def _rotary_kernel(
    h_ptr, shift_ptr, cos_ptr, sin_ptr, out_ptr,  # h (B*T, 3 D), shift (B, 2 D), out (B*T, 2 D)
    rows, T,
    HALF: tl.constexpr, HEAD: tl.constexpr, WIDTH: tl.constexpr, BLOCK: tl.constexpr,
    ROWS: tl.constexpr, SHIFT: tl.constexpr, ROUND: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]  # q's then k's columns, head by head
    inside = (row < rows) & (cols < WIDTH)
    d = cols % HEAD
    partner = tl.where(d < HALF, cols + HALF, cols - HALF)  # rotate_half's other element
    sign = tl.where(d < HALF, -1.0, 1.0)
    x = tl.load(h_ptr + row * (WIDTH * 3 // 2) + cols, mask=inside, other=0.0).to(tl.float32)
    y = tl.load(h_ptr + row * (WIDTH * 3 // 2) + partner, mask=inside, other=0.0)
    y = y.to(tl.float32)
    if SHIFT:
        b = row // T
        x += tl.load(shift_ptr + b * WIDTH + cols, mask=inside, other=0.0)
        y += tl.load(shift_ptr + b * WIDTH + partner, mask=inside, other=0.0)
    position = row % T
    cos = tl.load(cos_ptr + position * HEAD + d, mask=inside, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + position * HEAD + d, mask=inside, other=0.0).to(tl.float32)
    rotated = _round_to_bf16(x * cos + sign * y * sin, ROUND)
    tl.store(out_ptr + row * WIDTH + cols, rotated.to(tl.bfloat16), mask=inside)


def rotary(
    h: torch.Tensor, shift: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q and k rotated (rotary position embeddings), each given its mean correction first,
    and v, from the qkv output h (B, T, 3 D, contiguous; bias included) and q's and k's
    ``shift`` (B, 2 D); each (B, heads, T, head_dim), views."""
    b, t, n = h.shape
    width, head = 2 * n // 3, cos.shape[-1]
    rotated = torch.empty(b, t, width, device=h.device, dtype=h.dtype)
    block = triton.next_power_of_2(width)
    steps = max(1, 8192 // block)
    _rotary_kernel[(triton.cdiv(b * t, steps),)](
        h, shift.float().contiguous() if shift is not None else h, cos, sin, rotated,
        b * t, t, HALF=head // 2, HEAD=head, WIDTH=width, BLOCK=block, ROWS=steps,
        SHIFT=shift is not None, ROUND=INTERPRETED, num_warps=8,
    )  # fmt: skip
    q, k = rotated.view(b, t, 2, heads, head).permute(2, 0, 3, 1, 4)
    v = h[:, :, width:].view(b, t, heads, head).transpose(1, 2)
    return q, k, v


def launch_config(block: int) -> tuple[int, int]:
    """Rows per step and warps for rows of ``block`` (a power of two) columns."""
    return max(1, 16384 // block), 16 if block >= 8192 else 8


@dataclass
class Rows:
    """What rows() made: e4m3 ``values`` (rows padded to a multiple of 16, as the FP8 kernels
    take them) and their float32 ``scales`` (rows, 1); ``means`` (B, K) of the counted tokens;
    ``summed``, the input after the additions (RESIDUAL)."""

    values: torch.Tensor | None
    scales: torch.Tensor | None
    means: torch.Tensor | None
    summed: torch.Tensor | None


def rows(
    x: torch.Tensor,
    *,
    other: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    gelu: bool = False,
    norm: torch.nn.LayerNorm | None = None,
    quantize: bool = True,
    keep: torch.Tensor | None = None,
    means: bool = False,
) -> Rows:
    """One pass over x (B, T, K), which may be a (B, T, H, D) tensor's view: v = x + other
    + bias + shift[b] (each when given; with ``other`` the sum is returned, in bf16),
    then GELU or LayerNorm(``norm``) of v, then its e4m3 rows (``quantize``) and the mean of
    the rows ``keep`` (B, T) marks, all rows when None (``means``)."""
    x4 = x[:, :, None, :] if x.dim() == 3 else x  # else (B, T, H, D): attention's output
    b, t = x4.shape[:2]
    k = x4.shape[2] * x4.shape[3]
    device = x.device
    count = b * t
    parts = max(1, min(t, triton.cdiv(PROGRAMS, b)))
    rows_per_part = triton.cdiv(t, parts)
    parts = triton.cdiv(t, rows_per_part)
    block = triton.next_power_of_2(k)
    rows_per_step, warps = launch_config(block)
    values = scales = summed = sums = None
    if quantize:
        padded = count + (-count % 16)
        values = torch.empty(padded, k, device=device, dtype=torch.float8_e4m3fn)
        scales = torch.ones(padded, 1, device=device, dtype=torch.float32)
    if other is not None:
        summed = torch.empty(b, t, k, device=device, dtype=torch.bfloat16)
    if means:
        sums = torch.empty(b, parts, k, device=device, dtype=torch.float32)
    keep_int = keep.to(torch.int8).contiguous() if keep is not None else None
    dummy = x
    _rows_kernel[(b, parts)](
        x4, *x4.stride(),
        other.contiguous() if other is not None else dummy,
        bias.float().contiguous() if bias is not None else dummy,
        shift.float().contiguous() if shift is not None else dummy,
        summed if summed is not None else dummy,
        norm.weight if norm is not None else dummy,
        norm.bias if norm is not None else dummy,
        norm.eps if norm is not None else 0.0,
        values if values is not None else dummy,
        scales if scales is not None else dummy,
        keep_int if keep_int is not None else dummy,
        sums if sums is not None else dummy,
        t, rows_per_part, parts,
        K=k, D=x4.shape[-1], BLOCK=block, ROWS=rows_per_step,
        RESIDUAL=other is not None, BIAS=bias is not None, SHIFT=shift is not None,
        GELU=gelu, NORM=norm is not None, QUANTIZE=quantize, SUMS=means,
        KEEP=keep is not None, ROUND=INTERPRETED,
        num_warps=warps,
    )  # fmt: skip
    mean = None
    if means:
        summed_parts = sums.sum(1)
        mean = summed_parts / t if keep is None else summed_parts / keep.sum(1, keepdim=True)
    return Rows(values, scales, mean, summed)
