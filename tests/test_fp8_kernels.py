"""models/fp8_kernels.py: the fused activation kernels of FP8 ESM-2 against plain torch
references, and the fused layer against the reference layer. On a machine without a GPU the
kernels run in Triton's CPU interpreter (tests/conftest.py)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from virnucpro.models.esm2 import ESM2, ESM2Config, _rotary_tables, _rotate
from virnucpro.models.fp8 import Fp8Layer, quantize, to_fp8

fp8_kernels = pytest.importorskip("virnucpro.models.fp8_kernels")
rows = fp8_kernels.rows


def _activations(seed: int, b: int = 3, t: int = 21, k: int = 96) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    offset = torch.randn(1, 1, k, generator=gen)
    scale = torch.logspace(-2, 2, b * t).reshape(b, t, 1)  # rows of very different sizes
    return ((torch.randn(b, t, k, generator=gen) + offset) * scale).to(torch.bfloat16)


def _dequantized(made) -> torch.Tensor:
    return made.values.float() * made.scales


def _assert_quantized_like(made, expected: torch.Tensor) -> None:
    """made's e4m3 rows are expected (B, T, K, float32) quantized as quantize() does: equal,
    but for values that a last-bit difference in float32 moved across a rounding boundary
    (a reduction summed in another order): those by one e4m3 step at most, and few."""
    count = expected.shape[0] * expected.shape[1]
    values, scales = quantize(expected.reshape(count, -1))
    assert made.values.shape[0] % 16 == 0 and made.values.shape[0] >= count
    assert torch.allclose(made.scales[:count], scales, rtol=1e-6, atol=0)
    got, want = made.values[:count].float(), values.float()
    differ = got != want
    assert differ.float().mean() < 0.002, differ.float().mean()
    step = 2.0 ** (torch.floor(torch.log2(want.abs().clamp(min=2**-6))) - 3)
    assert bool(((got - want).abs() <= step * 1.001).all())


# a row is read as two tiles of power-of-two widths: 96 = 64 + 32, 100 = 64 + (36 of 64),
# 64 = one tile
@pytest.mark.parametrize("k", [96, 100, 64])
def test_quantizing_rows_is_quantize_exactly(k):
    x = _activations(0, k=k)
    made = rows(x)
    values, scales = quantize(x.reshape(-1, k))
    count = values.shape[0]
    assert made.values.shape == (count + (-count % 16), k)  # padded to the FP8 kernels' 16
    assert torch.equal(made.values[:count].float(), values.float())
    assert torch.equal(made.scales[:count], scales)
    assert made.means is None and made.summed is None


def test_a_zero_row_quantizes_to_zeros_with_a_finite_scale():
    x = _activations(1)
    x[1, 4] = 0
    made = rows(x)
    assert torch.equal(made.values[21 + 4].float(), torch.zeros(96))
    assert bool(torch.isfinite(made.scales).all())


@pytest.mark.parametrize("k", [96, 100, 64])
def test_layer_norm_rows_are_the_layer_norm_quantized(k):
    x = _activations(2, k=k)
    norm = torch.nn.LayerNorm(k)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2)
        norm.bias.normal_(0.0, 0.2)
    norm = norm.to(torch.bfloat16)
    expected = F.layer_norm(x.float(), (k,), norm.weight.float(), norm.bias.float(), norm.eps)
    _assert_quantized_like(rows(x, norm=norm), expected)


@pytest.mark.parametrize("k", [96, 100])
def test_gelu_rows_add_the_bias_and_each_sequences_shift_first(k):
    x = _activations(3, k=k)
    gen = torch.Generator().manual_seed(4)
    bias = torch.randn(k, generator=gen).to(torch.bfloat16)
    shift = torch.randn(3, k, generator=gen)
    made = rows(x, bias=bias, shift=shift, gelu=True)
    expected = F.gelu(x.float() + bias.float() + shift[:, None, :])
    _assert_quantized_like(made, expected)


def test_the_kernels_gelu_is_within_1e_6_of_the_exact_gelu():
    # one token per sequence: its mean is the GELU of that token's values, in float32
    x = torch.linspace(-12, 12, 4 * 1280).to(torch.bfloat16).reshape(4, 1, 1280)
    made = rows(x, gelu=True, quantize=False, means=True)
    exact = F.gelu(x.double()).reshape(4, 1280)
    assert (made.means.double() - exact).abs().max() < 1e-6


@pytest.mark.parametrize("k", [96, 100])
def test_residual_rows_return_the_bf16_sum_and_normalize_it(k):
    x, other = _activations(5, k=k), _activations(6, k=k)
    gen = torch.Generator().manual_seed(7)
    bias = torch.randn(k, generator=gen).to(torch.bfloat16)
    shift = torch.randn(3, k, generator=gen)
    norm = torch.nn.LayerNorm(k).to(torch.bfloat16)
    made = rows(x, other=other, bias=bias, shift=shift, norm=norm)
    summed = (x.float() + other.float() + bias.float() + shift[:, None, :]).to(torch.bfloat16)
    assert torch.equal(made.summed, summed)
    _assert_quantized_like(made, F.layer_norm(summed.float(), (k,), eps=norm.eps))
    only = rows(x, other=other, bias=bias, shift=shift, quantize=False)
    assert torch.equal(only.summed, summed) and only.values is None


# one program per sequence (a budget of 8 warps for programs of 8): the whole sequence, many
# steps of the kernel's loop (sums carried across steps, a last step part full); by default, a
# row or two per program
@pytest.mark.parametrize(("k", "one_program"), [(96, False), (100, False), (100, True)])
def test_means_count_only_the_kept_tokens(k, one_program, monkeypatch):
    if one_program:
        monkeypatch.setattr(fp8_kernels, "WARPS", 8)
        monkeypatch.setattr(fp8_kernels, "launch_config", lambda block: (4, 8))
    x = _activations(8, t=37, k=k)
    keep = torch.ones(3, 37, dtype=torch.bool)
    keep[1, 30:] = keep[2, 5:] = False
    made = rows(x, keep=keep, means=True)
    weights = keep.float() / keep.sum(1, keepdim=True)
    expected = (x.float() * weights[:, :, None]).sum(1)
    assert torch.allclose(made.means, expected, rtol=1e-5, atol=1e-5 * x.float().abs().max())
    everything = rows(x, means=True).means
    assert torch.allclose(everything, x.float().mean(1), rtol=1e-5, atol=1e-3)


def test_attention_output_is_read_through_its_strides():
    gen = torch.Generator().manual_seed(9)
    heads = torch.randn(3, 4, 21, 24, generator=gen).to(torch.bfloat16)  # (B, H, T, D)
    strided = rows(heads.transpose(1, 2), means=True)
    flat = rows(heads.transpose(1, 2).reshape(3, 21, 96), means=True)
    assert torch.equal(strided.values[:63].float(), flat.values[:63].float())  # 63 real rows
    assert torch.equal(strided.means, flat.means)


# q and k's 2 x heads x 16 columns: 128, one column tile; 160, five of 32; 300 rows, more
# than one program's
@pytest.mark.parametrize("heads", [4, 5])
def test_rotary_rotates_q_and_k_after_their_shift_and_leaves_v(heads):
    b, t, head = 2, 150, 16
    gen = torch.Generator().manual_seed(10)
    h = torch.randn(b, t, 3 * heads * head, generator=gen).to(torch.bfloat16)
    shift = torch.randn(b, 2 * heads * head, generator=gen)
    cos, sin = _rotary_tables(t, head, torch.device("cpu"), torch.bfloat16)
    q, k, v = fp8_kernels.rotary(h, shift, cos, sin, heads)
    # reference in float32: fair-esm's rotation (models/esm2.py) of the shifted q and k
    parts = h.float().view(b, t, 3, heads, head).permute(2, 0, 3, 1, 4)
    moved = shift.view(b, 2, heads, 1, head)
    for got, part, by in ((q, parts[0], moved[:, 0]), (k, parts[1], moved[:, 1])):
        expected = _rotate(part + by, cos.float(), sin.float())
        assert got.shape == (b, heads, t, head) and got.dtype == torch.bfloat16
        assert torch.allclose(got.float(), expected, rtol=2**-8, atol=1e-6)  # one bf16 rounding
    assert torch.equal(v, h.view(b, t, 3, heads, head)[:, :, 2].transpose(1, 2))
    plain_q, _, _ = fp8_kernels.rotary(h, None, cos, sin, heads)
    assert torch.allclose(plain_q.float(), _rotate(parts[0], cos.float(), sin.float()),
                          rtol=2**-8, atol=1e-6)  # fmt: skip


def _model(seed: int) -> ESM2:
    torch.manual_seed(seed)
    model = ESM2(ESM2Config(num_layers=2, embed_dim=64, attention_heads=4)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model.to(torch.bfloat16)


@pytest.mark.parametrize("correction", [None, "weight"])
def test_the_fused_layer_agrees_with_the_reference_layer(correction, monkeypatch):
    model = to_fp8(_model(11), mean_correction=correction)
    tokens = torch.randint(4, 24, (3, 30), generator=torch.Generator().manual_seed(12))
    tokens[:, 0], tokens[:, -1] = 0, 2
    tokens[1, 20:], tokens[1, 19] = 1, 2  # padded
    with torch.inference_mode():
        reference = model(tokens).float()
        monkeypatch.setattr(Fp8Layer, "run_fused", True)
        fused = model(tokens).float()
        again = model(tokens).float()
    real = tokens != 1
    # not bit-equal: the fused kernels keep float32 between ops where the reference rounds to
    # bf16, and a last-bit change may move a value across an e4m3 rounding boundary
    cosine = F.cosine_similarity(fused[real], reference[real], dim=-1)
    assert bool((cosine > 0.999).all()), cosine.min()
    weights = real.float()[:, :, None] / real.sum(1)[:, None, None]
    means = F.cosine_similarity((fused * weights).sum(1), (reference * weights).sum(1))
    assert bool((means > 0.9999).all()), means.min()
    assert torch.equal(fused, again)  # the same every run: no atomics in the sums


def test_layers_the_kernels_cannot_run_take_the_reference_path(monkeypatch):
    model = to_fp8(_model(13), linears=("fc1", "fc2"))
    output = to_fp8(_model(13), mean_correction="output")
    assert not model.layers[0].fusable and not output.layers[0].fusable
    monkeypatch.setattr(Fp8Layer, "run_fused", True)
    monkeypatch.setattr(Fp8Layer, "forward_fused", None)  # would fail if called
    tokens = torch.randint(4, 24, (2, 9))
    with torch.inference_mode():
        assert model(tokens).shape == output(tokens).shape == (2, 9, 64)


def test_weight_correction_moves_the_fused_means_towards_fp32(monkeypatch):
    monkeypatch.setattr(Fp8Layer, "run_fused", True)
    base = _model(14)
    tokens = torch.randint(4, 24, (4, 40), generator=torch.Generator().manual_seed(15))
    with torch.inference_mode():
        exact = copy.deepcopy(base).float()(tokens).mean(1)
        plain = to_fp8(copy.deepcopy(base), mean_correction=None)(tokens).float().mean(1)
        corrected = to_fp8(copy.deepcopy(base))(tokens).float().mean(1)
    # measured: 2.1% off without the correction, 1.1% with it (the reference path: 2.1, 1.0)
    assert (corrected - exact).norm() < (plain - exact).norm() / 1.6


@pytest.fixture(scope="module")
def hopper_launches() -> list[dict]:
    """What one fused layer's kernel launches compile to for sm_90 (tests/fp8_ptx.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("fp8_ptx.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_compiled_for_hopper_the_kernels_read_bf16_in_whole_vectors(hopper_launches):
    # one 16-bit load per element instead of 16-byte vectors: what Triton compiles when it
    # does not know a stride to be 1 or a multiple of 16 (do_not_specialize)
    names = {launch["kernel"] for launch in hopper_launches}
    assert names == {"_rows_kernel", "_rotary_kernel"}
    # five per layer, four of them with and without counting only real tokens (KEEP)
    assert sum(launch["kernel"] == "_rows_kernel" for launch in hopper_launches) == 9
    for launch in hopper_launches:
        assert launch["scalar_16bit_loads"] == 0, launch


def test_compiled_for_hopper_the_kernels_spill_no_registers(hopper_launches):
    # a spill is a trip to local memory per element in kernels that are bound by memory
    for launch in hopper_launches:
        assert launch["spilled_bytes"] == 0, launch
