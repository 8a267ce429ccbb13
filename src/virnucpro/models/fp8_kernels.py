"""Triton kernels that make FP8 ESM-2's activations (models/fp8.py) on the GPU.

Each FP8 linear layer needs its input as e4m3 values with one scale per row, and, with the
mean correction, each sequence's mean input. Made by separate steps, that is several passes
over a large activation; here one kernel does it in the pass that makes the activation: the
residual add, the LayerNorm or the GELU before it, the row's quantization, and the
per-sequence column sums, each row read once. The bias and the mean correction of the layer
that made the activation are added on the way in.

Grid: (sequence, part of its tokens). A program walks its rows a few at a time, whole rows in
registers (as two tiles of power-of-two widths, which ESM-2 3B's widths fill exactly), and sums
their columns there; the parts' sums are added afterwards, in a fixed order, so the result is
the same every run. One more kernel adds q's and k's correction and rotates them (rotary
position embeddings).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

E4M3_MAX = tl.constexpr(448.0)
FLOAT32_TINY = tl.constexpr(1.1754943508222875e-38)
# warps per launch, at most: about every warp slot of the GPU once (H100/H200: 132
# multiprocessors x 64), whatever the batch's shape; fewer would leave slots idle, more only
# add per-program sums to write and add up
WARPS = 8192


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
    and Stegun's 7.1.26 (absolute error below 1.5e-7; its constants below folded with 1/2 and
    1/sqrt 2): branch-free and fewer instructions than libdevice's erf, in the kernel whose
    cost is mostly this (10,240 columns)."""
    # 1 / d as rsqrt(d)^2: one instruction on the GPU where a division takes seven (d >= 1)
    t = tl.math.rsqrt(1.0 + 0.2316418882663604 * tl.abs(v))  # p / sqrt 2
    t = t * t
    poly = -0.7265760135 + t * 0.5307027145  # a5 / 2, a4 / 2, ...
    poly = 0.127414796 + t * (-0.142248368 + t * (0.7107068705 + t * poly))
    tail = t * poly * tl.exp2(v * v * -0.7213475204444817)  # e^(-x^2 / 2) = 2^(-x^2 log2(e) / 2)
    return v * tl.where(v >= 0, 1.0 - tail, tail)


@triton.jit
def _gathered(
    x_ptr, x_sb, x_st, x_sh, x_sd, other_ptr, bias_ptr, shift_ptr, sum_out_ptr,
    b, t, row, live, cols,
    K: tl.constexpr, D: tl.constexpr, RESIDUAL: tl.constexpr, BIAS: tl.constexpr,
    SHIFT: tl.constexpr, GELU: tl.constexpr, ROUND: tl.constexpr,
):  # fmt: skip
    """Rows ``t`` (stored where ``live``), columns ``cols``, of x + other + bias + shift[b],
    the sum stored (RESIDUAL), then GELU'd (GELU); float32, 0 in columns past K."""
    inside = live & (cols < K)
    if D == K:
        offsets = cols * x_sd
    else:
        offsets = (cols // D) * x_sh + (cols % D) * x_sd
    v = tl.load(x_ptr + b * x_sb + t * x_st + offsets, mask=inside, other=0.0).to(tl.float32)
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
    return v


@triton.jit
def _layer_normed(centered, rstd, norm_w_ptr, norm_b_ptr, cols, K: tl.constexpr):
    norm_w = tl.load(norm_w_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
    norm_b = tl.load(norm_b_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
    return centered * rstd * norm_w + norm_b


@triton.jit
def _counted_sum(v, counted, cols, K: tl.constexpr):
    return tl.sum(tl.where(counted & (cols < K), v, 0.0), axis=0, keep_dims=True)


# Triton compiles a kernel again for each new pattern of its integer arguments (1 or not,
# multiples of 16 or not) unless told not to: the batch's shape varies, and a compile mid-run
# costs a second. The strides stay specialized, which lets Triton load 16 bytes at a time: with
# ESM-2 3B's widths they are multiples of 16 whatever the batch's shape (K and the head size
# are); a head size that is not (ESM-2 35M's 24) makes two variants, compiled once each.
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
    K: tl.constexpr, D: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
    ROWS: tl.constexpr,
    RESIDUAL: tl.constexpr, BIAS: tl.constexpr, SHIFT: tl.constexpr, GELU: tl.constexpr,
    NORM: tl.constexpr, QUANTIZE: tl.constexpr, SUMS: tl.constexpr, KEEP: tl.constexpr,
    ROUND: tl.constexpr,
):  # fmt: skip
    # A row is two tiles of power-of-two widths, BLOCK_A columns then BLOCK_B (0: none): the
    # model's widths (2,560 = 2,048 + 512; 10,240 = 8,192 + 2,048) exactly, where one tile of
    # the next power of two would leave 3/8 of its lanes idle.
    b = tl.program_id(0).to(tl.int64)  # 64-bit offsets: a batch may pass 2**31 elements
    part = tl.program_id(1)
    cols_a = tl.arange(0, BLOCK_A)[None, :]
    sums_a = tl.zeros([1, BLOCK_A], dtype=tl.float32)
    if BLOCK_B:
        cols_b = BLOCK_A + tl.arange(0, BLOCK_B)[None, :]
        sums_b = tl.zeros([1, BLOCK_B], dtype=tl.float32)
    first = part * rows_per_part
    last = tl.minimum(first + rows_per_part, T)
    # ROWS rows at a time, whole rows in registers. The per-column vectors (bias, shift, norm
    # weights) are read again each step, from cache: held across the loop they took the
    # registers that let several programs share a multiprocessor (tests/fp8_ptx.py)
    for start in range(first, last, ROWS):
        t = start + tl.arange(0, ROWS)[:, None]
        live = t < last
        row = b * T + t
        va = _gathered(x_ptr, x_sb, x_st, x_sh, x_sd, other_ptr, bias_ptr, shift_ptr,
                       sum_out_ptr, b, t, row, live, cols_a, K, D, RESIDUAL, BIAS, SHIFT, GELU,
                       ROUND)  # fmt: skip
        if BLOCK_B:
            vb = _gathered(x_ptr, x_sb, x_st, x_sh, x_sd, other_ptr, bias_ptr, shift_ptr,
                           sum_out_ptr, b, t, row, live, cols_b, K, D, RESIDUAL, BIAS, SHIFT,
                           GELU, ROUND)  # fmt: skip
        if NORM:
            total = tl.sum(va, axis=1, keep_dims=True)
            if BLOCK_B:
                total += tl.sum(vb, axis=1, keep_dims=True)
            mean = total / K
            va = tl.where(live, va - mean, 0.0)  # tile A lies within K
            squares = tl.sum(va * va, axis=1, keep_dims=True)
            if BLOCK_B:
                vb = tl.where(live & (cols_b < K), vb - mean, 0.0)
                squares += tl.sum(vb * vb, axis=1, keep_dims=True)
            rstd = tl.math.rsqrt(squares / K + eps)
            va = _layer_normed(va, rstd, norm_w_ptr, norm_b_ptr, cols_a, K)
            if BLOCK_B:
                vb = _layer_normed(vb, rstd, norm_w_ptr, norm_b_ptr, cols_b, K)
        if QUANTIZE:
            amax = tl.max(tl.abs(va), axis=1, keep_dims=True)
            if BLOCK_B:
                amax = tl.maximum(amax, tl.max(tl.abs(vb), axis=1, keep_dims=True))
            # scale and reciprocal per row, correctly rounded as torch divides (Triton's "/" may
            # be an ulp off); each element is then multiplied: a division each costs more
            scale = tl.maximum(tl.math.div_rn(amax, E4M3_MAX), FLOAT32_TINY)
            inverse = tl.math.div_rn(1.0, scale)
            values = _round_to_e4m3(va * inverse, ROUND).to(tl.float8e4nv)
            tl.store(values_ptr + row * K + cols_a, values, mask=live)
            if BLOCK_B:
                values = _round_to_e4m3(vb * inverse, ROUND).to(tl.float8e4nv)
                tl.store(values_ptr + row * K + cols_b, values, mask=live & (cols_b < K))
            tl.store(scales_ptr + row, scale, mask=live)
        if SUMS:
            counted = live
            if KEEP:
                counted &= tl.load(keep_ptr + row, mask=live, other=0) != 0
            sums_a += _counted_sum(va, counted, cols_a, K)
            if BLOCK_B:
                sums_b += _counted_sum(vb, counted, cols_b, K)
    if SUMS:
        sums_ptr += (b * PARTS + part) * K
        tl.store(sums_ptr + cols_a, sums_a, mask=cols_a < K)
        if BLOCK_B:
            tl.store(sums_ptr + cols_b, sums_b, mask=cols_b < K)


@triton.jit(do_not_specialize=["rows", "T"])
def _rotary_kernel(
    h_ptr, shift_ptr, cos_ptr, sin_ptr, out_ptr,  # h (B*T, 3 D), shift (B, 2 D), out (B*T, 2 D)
    rows, T,
    HALF: tl.constexpr, HEAD: tl.constexpr, WIDTH: tl.constexpr, BLOCK: tl.constexpr,
    ROWS: tl.constexpr, SHIFT: tl.constexpr, ROUND: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]  # 32-bit: cheap // and %
    # q's then k's columns, head by head: BLOCK of them, a power of two that divides WIDTH
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)[None, :]
    inside = row < rows  # every column: BLOCK divides WIDTH
    d = cols % HEAD
    partner = tl.where(d < HALF, cols + HALF, cols - HALF)  # rotate_half's other element
    sign = tl.where(d < HALF, -1.0, 1.0)
    h_ptr += row.to(tl.int64) * (WIDTH * 3 // 2)  # 64-bit offsets: 2**31 elements and more
    x = tl.load(h_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    y = tl.load(h_ptr + partner, mask=inside, other=0.0).to(tl.float32)
    if SHIFT:
        b = row // T
        x += tl.load(shift_ptr + b * WIDTH + cols, mask=inside, other=0.0)
        y += tl.load(shift_ptr + b * WIDTH + partner, mask=inside, other=0.0)
    position = row % T
    cos = tl.load(cos_ptr + position * HEAD + d, mask=inside, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + position * HEAD + d, mask=inside, other=0.0).to(tl.float32)
    rotated = _round_to_bf16(x * cos + sign * y * sin, ROUND)
    tl.store(out_ptr + row.to(tl.int64) * WIDTH + cols, rotated.to(tl.bfloat16), mask=inside)


def rotary(
    h: torch.Tensor, shift: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q and k rotated (rotary position embeddings), each given its mean correction first,
    and v, from the qkv output h (B, T, 3 D, contiguous; bias included) and q's and k's
    ``shift`` (B, 2 D); each (B, heads, T, head_dim), views."""
    b, t, n = h.shape
    width, head = 2 * n // 3, cos.shape[-1]
    rotated = torch.empty(b, t, width, device=h.device, dtype=h.dtype)
    block = min(width & -width, 4096)  # no lane left idle (5,120 columns: 5 x 1,024)
    steps = max(1, 8192 // block)
    _rotary_kernel[(triton.cdiv(b * t, steps), width // block)](
        h, shift.float().contiguous() if shift is not None else h, cos, sin, rotated,
        b * t, t, HALF=head // 2, HEAD=head, WIDTH=width, BLOCK=block, ROWS=steps,
        SHIFT=shift is not None, ROUND=INTERPRETED, num_warps=8,
    )  # fmt: skip
    q, k = rotated.view(b, t, 2, heads, head).permute(2, 0, 3, 1, 4)
    v = h[:, :, width:].view(b, t, heads, head).transpose(1, 2)
    return q, k, v


def launch_config(block: int) -> tuple[int, int]:
    """Rows per step and warps per program for rows whose width rounds up to ``block``, a power
    of two: benchmarks/fp8_rows.py times the choices (benchmarks/README.md)."""
    return (1, 8) if block >= 8192 else (2, 2)


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
    rows_per_step, warps = launch_config(triton.next_power_of_2(k))
    parts = max(1, min(t, triton.cdiv(WARPS // warps, b)))
    rows_per_part = triton.cdiv(t, parts)
    parts = triton.cdiv(t, rows_per_part)
    block_a = 1 << (k.bit_length() - 1)  # the largest power of two <= k, then the rest's
    block_b = triton.next_power_of_2(k - block_a) if k > block_a else 0
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
        K=k, D=x4.shape[-1], BLOCK_A=block_a, BLOCK_B=block_b, ROWS=rows_per_step,
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
