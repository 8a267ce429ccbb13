"""models/fp8.py: e4m3 quantization and the FP8 linear layer, on the CPU (torch has float8
dtypes and a CPU _scaled_mm), against plain float64 references."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from virnucpro.models.compile import compile_model
from virnucpro.models.esm2 import ESM2, ESM2Config
from virnucpro.models.fp8 import E4M3, Fp8Linear, quantize, to_fp8


def e4m3_spacing(value: torch.Tensor) -> torch.Tensor:
    """The gap between neighbouring e4m3 numbers around each value: 3 mantissa bits, so
    2^(exponent - 3), and 2^-9 among the subnormals (exponents below -6)."""
    exponent = torch.floor(torch.log2(value.abs().clamp(min=2.0**-9))).clamp(min=-6)
    return 2.0 ** (exponent - 3)


def test_quantize_uses_the_whole_range_per_row_and_rounds_to_nearest():
    gen = torch.Generator().manual_seed(0)
    x = (
        torch.randn(64, 256, generator=gen, dtype=torch.float64)
        * torch.logspace(-3, 3, 64)[:, None]
    )
    x[5] = 0.0
    values, scale = quantize(x)
    assert values.dtype == E4M3 and scale.shape == (64, 1)
    scaled = x / scale.double()
    decoded = values.double()
    # every row's largest magnitude lands on 448, the largest e4m3 number (the zero row: 0)
    top = decoded.abs().amax(dim=1)
    assert torch.equal(top[torch.arange(64) != 5], torch.full((63,), 448.0, dtype=torch.float64))
    assert torch.equal(decoded[5], torch.zeros(256, dtype=torch.float64))
    # each value is the e4m3 number nearest the scaled input: off by at most half a gap
    assert bool(((decoded - scaled).abs() <= e4m3_spacing(scaled) / 2 + 1e-12).all())


@pytest.mark.parametrize("rows", [16, 37])  # 37: not a multiple of 16, padded inside
@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_is_the_product_of_its_dequantized_operands(rows, bias):
    gen = torch.Generator().manual_seed(1)
    linear = nn.Linear(64, 48, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, 64, generator=gen))
        if bias:
            linear.bias.copy_(torch.randn(48, generator=gen))
    fp8 = Fp8Linear(linear)
    x = torch.randn(rows, 64, generator=gen).to(torch.bfloat16)
    out = fp8(x)
    assert out.shape == (rows, 48) and out.dtype == torch.bfloat16
    # reference: the dequantized operands, multiplied in float64
    x_values, x_scale = quantize(x)
    weight = fp8.weight.double() * fp8.weight_scale.double().reshape(-1, 1)
    expected = (x_values.double() * x_scale.double()) @ weight.t()
    if bias:
        expected = expected.to(torch.bfloat16).double() + fp8.bias.double()
    assert torch.allclose(out.double(), expected, rtol=2**-7, atol=1e-2)
    # and the whole layer stays near the float one (e4m3 keeps ~2 significant digits)
    reference = linear(x.float())
    assert (out.float() - reference).norm() / reference.norm() < 0.05


def test_to_fp8_swaps_the_chosen_linears_and_stays_near_bf16():
    torch.manual_seed(0)
    model = ESM2(ESM2Config(num_layers=2, embed_dim=64, attention_heads=4)).eval()
    tokens = torch.randint(4, 24, (3, 20))
    with torch.no_grad():
        before = model.to(torch.bfloat16)(tokens, padded=False).float()
        to_fp8(model, ("fc1", "fc2"))
        after = model(tokens, padded=False).float()
    assert isinstance(model.layers[0].fc1, Fp8Linear)
    assert isinstance(model.layers[1].qkv, nn.Linear)
    cosine = torch.nn.functional.cosine_similarity(before.mean(1), after.mean(1))
    assert bool((cosine > 0.99).all()), cosine
    with pytest.raises(ValueError, match="not ESM-2 linear layers: fc3"):
        to_fp8(model, ("fc3",))


def _sequences(seed: int, batch: int = 4, length: int = 40, dim: int = 64) -> torch.Tensor:
    """bf16 activations (B, T, K) with a shared per-channel offset, as a layer's inputs have
    (the part of FP8's error a mean over tokens does not average away)."""
    gen = torch.Generator().manual_seed(seed)
    offset = 2.0 * torch.randn(1, 1, dim, generator=gen)
    return (torch.randn(batch, length, dim, generator=gen) + offset).to(torch.bfloat16)


def _linear(seed: int, n_in: int = 64, n_out: int = 48) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out)


@pytest.mark.parametrize("correction", ["weight", "output"])
def test_mean_correction_brings_each_sequences_mean_output_closer_to_the_exact_one(correction):
    linear = _linear(2)
    x = _sequences(3)
    exact = x.double().mean(1) @ linear.weight.double().t() + linear.bias.double()
    plain = Fp8Linear(linear)(x).double().mean(1)
    corrected = Fp8Linear(linear, mean_correction=correction)(x).double().mean(1)
    # measured here: the plain layer's mean is off by 2.9%, corrected by 0.3-0.5% (bf16)
    assert (plain - exact).norm() / exact.norm() > 0.01
    assert (corrected - exact).norm() < (plain - exact).norm() / 4


def test_output_mean_correction_leaves_the_deviations_from_the_mean_to_fp8():
    linear = _linear(4)
    x = _sequences(5)
    plain = Fp8Linear(linear)(x).float()
    corrected = Fp8Linear(linear, mean_correction="output")(x).float()
    # the same tokens' outputs, moved by one shift per sequence and channel (bf16 rounding)
    deviation = corrected - plain - (corrected - plain).mean(1, keepdim=True)
    assert deviation.abs().max() <= 2**-7 * plain.abs().max()
    # and the mean is the bf16 product of the mean input
    mean_input = x.float().mean(1).to(torch.bfloat16)
    expected = (mean_input @ linear.weight.to(torch.bfloat16).t()).float() + linear.bias
    assert torch.allclose(corrected.mean(1), expected, rtol=2**-6, atol=2**-6)


@pytest.mark.parametrize("correction", ["weight", "output"])
def test_padding_rows_do_not_change_the_real_tokens_outputs(correction):
    layer = Fp8Linear(_linear(6), mean_correction=correction)
    x = _sequences(7, batch=3, length=30)
    keep = torch.ones(3, 30, dtype=torch.bool)
    keep[1, 20:] = keep[2, 11:] = False  # two padded rows
    other = x.clone()
    other[~keep] = 1000.0 * torch.randn(int((~keep).sum()), 64).to(torch.bfloat16)
    first, second = layer(x, keep), layer(other, keep)
    assert torch.equal(first[keep], second[keep])
    # without the padding marked, the padding's values would move the real tokens' outputs
    assert not torch.equal(layer(x)[keep], layer(other)[keep])


def test_fp8_layer_with_bf16_linears_is_the_esm2_layer():
    torch.manual_seed(8)
    model = ESM2(ESM2Config(num_layers=2, embed_dim=64, attention_heads=4)).eval()
    tokens = torch.randint(4, 24, (3, 20))
    tokens[1, 15:] = 1  # padding
    with torch.no_grad():
        before = model(tokens, padded=True)
        to_fp8(model, linears=())  # Fp8Layer everywhere, every linear still nn.Linear
        after = model(tokens, padded=True)
    assert all(type(layer).__name__ == "Fp8Layer" for layer in model.layers)
    assert torch.equal(before, after)


def test_to_fp8_by_default_is_the_shipped_scheme():
    torch.manual_seed(9)
    model = ESM2(ESM2Config(num_layers=2, embed_dim=64, attention_heads=4)).eval()
    weight = model.layers[1].fc2.weight.detach().to(torch.bfloat16)
    to_fp8(model.to(torch.bfloat16))
    for layer in model.layers:
        for linear in (layer.qkv, layer.out_proj, layer.fc1, layer.fc2):
            assert isinstance(linear, Fp8Linear)
            assert (linear.mean_correction, linear.fast_accumulation) == ("weight", True)
    # the correction's weight is what rounding took: W - dequantized W, in bf16
    fc2 = model.layers[1].fc2
    taken = weight.float() - fc2.weight.float() * fc2.weight_scale.reshape(-1, 1)
    assert torch.equal(fc2.correction_weight, taken.to(torch.bfloat16))
    with pytest.raises(ValueError, match="mean_correction"):
        Fp8Linear(nn.Linear(16, 16), mean_correction="tokens")


def test_a_sequence_embeds_alike_alone_and_padded_beside_a_longer_one():
    torch.manual_seed(13)
    model = to_fp8(ESM2(ESM2Config(2, 64, 4)).eval().to(torch.bfloat16))
    short = torch.randint(4, 24, (12,))
    long = torch.randint(4, 24, (120,))
    short[0], short[-1], long[0], long[-1] = 0, 2, 0, 2
    batch = torch.ones(2, 120, dtype=torch.long)  # the short one padded with token 1
    batch[0, :12], batch[1] = short, long
    with torch.inference_mode():
        alone = model(short[None], padded=False).float()[0].mean(0)
        padded = model(batch, padded=True).float()[0, :12].mean(0)
    # measured: 0.5% apart (bf16 and FP8 rounding); 3.6% if the mean correction counted the
    # padding rows (the keep mask not passed to the linears)
    assert (padded - alone).norm() / alone.norm() < 0.015


def test_compile_leaves_fp8_layers_to_their_own_kernels():
    torch.manual_seed(10)
    model = ESM2(ESM2Config(num_layers=3, embed_dim=64, attention_heads=4)).eval()
    model = to_fp8(model.to(torch.bfloat16))  # the shipped scheme
    tokens = torch.randint(4, 24, (3, 20))
    tokens[1, 15:] = 1
    with torch.inference_mode():
        eager = model(tokens)
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    compile_model(model)
    with torch.inference_mode():
        compiled = model(tokens)
    # nothing of an FP8 layer goes through torch.compile: its own Triton kernels fuse what
    # the compiler would (models/fp8_kernels.py)
    assert counters["stats"]["unique_graphs"] == before
    assert all("forward" not in vars(layer) for layer in model.layers)
    assert torch.equal(compiled, eager)
