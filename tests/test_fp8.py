"""models/fp8.py: e4m3 quantization and the FP8 linear layer, on the CPU (torch has float8
dtypes and a CPU _scaled_mm), against plain float64 references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
    assert isinstance(model.layers[1].self_attn.qkv, nn.Linear)
    cosine = torch.nn.functional.cosine_similarity(before.mean(1), after.mean(1))
    assert bool((cosine > 0.99).all()), cosine
    with pytest.raises(ValueError, match="not ESM-2 linear layers: fc3"):
        to_fp8(model, ("fc3",))
