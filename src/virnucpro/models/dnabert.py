"""DNABERT-S, natively: the DNABERT-2 encoder (MosaicBERT style) without transformers.

The network follows MAGICS-LAB/DNABERT_S, evaluate/model_codes/bert_layers.py (`BertModel`):
- embeddings: word + token type (always type 0), LayerNorm; no position embeddings;
- each layer: fused q/k/v projection, softmax(q k^T / sqrt(d) + ALiBi) v, output projection,
  post-LayerNorm with the residual; then a gated-GELU MLP: mlp_in (no bias) gives
  [gated | non_gated], act = exact GELU(gated) * non_gated, mlp_out, post-LayerNorm with the
  residual.
Dropout is omitted: we only run inference. The published checkpoint's Hugging Face key names
are mapped onto these modules at load (models/load.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.models.attention import exclude_cudnn_attention


@dataclass(frozen=True)
class DnaBertConfig:
    """The sizes that shape the network (a Hugging Face config.json)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes as in the original: a geometric series 2^(-8/n) for n a power of two;
    otherwise the series of the power of two below, then every other slope of the one above."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    lower = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(lower) + alibi_slopes(2 * lower)[0::2][: n_heads - lower]


@functools.lru_cache(maxsize=8)
def _slopes_on(n_heads: int, device: torch.device | str) -> torch.Tensor:
    # cached: a copy to the GPU from ordinary memory waits for the GPU to finish its queue
    return torch.tensor(alibi_slopes(n_heads), dtype=torch.float32, device=device)


def alibi_bias(slopes: torch.Tensor, length: int) -> torch.Tensor:
    """Symmetric ALiBi bias (1, heads, length, length): -slope * |i - j|, in slopes' dtype."""
    pos = torch.arange(length, device=slopes.device)
    distance = (pos[None, :] - pos[:, None]).abs()
    return (slopes[:, None, None] * -distance).unsqueeze(0)


class Layer(nn.Module):
    """Post-LayerNorm attention with an additive bias, then the gated-GELU MLP."""

    def __init__(self, cfg: DnaBertConfig) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.heads = cfg.num_attention_heads
        self.intermediate_size = cfg.intermediate_size
        self.qkv = nn.Linear(h, 3 * h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=eps)
        self.mlp_in = nn.Linear(h, 2 * cfg.intermediate_size, bias=False)
        self.mlp_out = nn.Linear(cfg.intermediate_size, h)
        self.mlp_norm = nn.LayerNorm(h, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        # qkv output is laid out (q|k|v, head, head_dim), as the original's rearrange reads it.
        qkv = self.qkv(x).view(b, t, 3, self.heads, h // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # the bias (ALiBi, padded keys at -inf) is SDPA's mask; scale 1/sqrt(head_dim)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.attn_norm(self.attn_out(y.transpose(1, 2).reshape(b, t, h)) + x)
        # The first half goes through exact (erf) GELU and gates the second half.
        gated, non_gated = self.mlp_in(x).split(self.intermediate_size, dim=-1)
        return self.mlp_norm(self.mlp_out(F.gelu(gated) * non_gated) + x)


class DnaBert(nn.Module):
    """DNABERT-2/DNABERT-S encoder returning the last hidden state."""

    def __init__(self, cfg: DnaBertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        exclude_cudnn_attention()  # process-wide, once (models/attention.py)

    def forward(
        self, input_ids: torch.Tensor, keep: torch.Tensor, padded: bool | None = None
    ) -> torch.Tensor:
        """input_ids (B, T), keep (B, T) true (or 1) for real tokens -> (B, T, H).

        Padding keys are masked out of attention, so each real token's result equals that of
        the unpadded sequence (the original runs unpadded); padding rows come back as zeros.
        ``padded`` says whether any row is padded, when the caller knows (no GPU sync)."""
        keep = keep.bool()
        if padded is None:
            padded = not bool(keep.all())
        slopes = _slopes_on(self.config.num_attention_heads, input_ids.device)
        return self.encode(input_ids, keep, slopes, padded)

    def encode(
        self, input_ids: torch.Tensor, keep: torch.Tensor, slopes: torch.Tensor, padded: bool
    ) -> torch.Tensor:
        """The encoder, from token ids to the last hidden state. With --compile this whole
        method is compiled (models/compile.py): launching the layers one step at a time left
        the GPU waiting for the host."""
        # The original always passes token type 0 for single sequences.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        x = self.embed_norm(x)
        bias = alibi_bias(slopes, input_ids.shape[1])
        if padded:
            bias = bias.masked_fill(~keep[:, None, None, :], float("-inf"))
        bias = bias.to(x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return x * keep[..., None].to(x.dtype)
