"""ESM-2, natively: the fair-esm protein language model without fair-esm.

The network follows fair-esm 2.0.0, esm/model/esm2.py (`ESM2`) with its `TransformerLayer`:
- embeddings: token embedding only (no position embeddings), with the token-dropout rescaling
  the model was trained with: x * (1 - 0.15 * 0.8) / (1 - fraction of <mask> tokens), then
  padding positions zeroed;
- each layer (pre-LayerNorm): x + out_proj(attention(LN(x))), then x + fc2(GELU(fc1(LN(x))));
  attention uses rotary position embeddings on q and k and ignores padded keys;
- a final LayerNorm (emb_layer_norm_after) gives the representation VirNucPro pools.
q, k and v are one fused projection (models/load.py fuses the checkpoint's three). Dropout, the
LM head and the contact head are omitted: we only need the last-layer representation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.models.attention import exclude_cudnn_attention
from virnucpro.models.tokenizers import MASK_IDX, PAD_IDX, PROTEIN_TOKENS

# Token dropout during training: 15% of tokens selected, 80% of those replaced by <mask>.
_MASK_RATIO_TRAIN = 0.15 * 0.8


@dataclass(frozen=True)
class ESM2Config:
    """The sizes that shape the network (a checkpoint's cfg["model"])."""

    num_layers: int
    embed_dim: int
    attention_heads: int
    token_dropout: bool = True


@functools.lru_cache(maxsize=128)
def _rotary_tables(
    seq_len: int, head_dim: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, head_dim) of RoFormer rotary embeddings, base 10000, computed in float32
    and cast to the model's dtype (as fair-esm does); cached, since lengths repeat."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary q and k, q/k/v fused in one projection."""

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def project(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (rotated), k (rotated), v, each (B, heads, T, head_dim). With --compile this, and
        only this, is compiled (models/compile.py): ATen's own LayerNorm, GELU and add kernels
        beat the ones torch.compile makes for them with dynamic shapes."""
        b, t, d = h.shape
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # SDPA's default 1/sqrt(head_dim) scale equals fair-esm scaling q before the rotation.
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def forward(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = self.project(h, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class Layer(nn.Module):
    """Pre-LayerNorm transformer layer (fair-esm's TransformerLayer)."""

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.self_attn = SelfAttention(embed_dim, heads)
        self.final_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, 4 * embed_dim)
        self.fc2 = nn.Linear(4 * embed_dim, embed_dim)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), cos, sin, mask)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class ESM2(nn.Module):
    """The ESM-2 encoder; forward gives the last layer's representation (B, T, D)."""

    def __init__(self, config: ESM2Config) -> None:
        super().__init__()
        if config.embed_dim % config.attention_heads:
            raise ValueError("embed_dim must be a multiple of attention_heads")
        self.config = config
        self.embed_tokens = nn.Embedding(len(PROTEIN_TOKENS), config.embed_dim, PAD_IDX)
        self.layers = nn.ModuleList(
            Layer(config.embed_dim, config.attention_heads) for _ in range(config.num_layers)
        )
        self.emb_layer_norm_after = nn.LayerNorm(config.embed_dim)
        exclude_cudnn_attention()  # process-wide, once (models/attention.py)

    def forward(self, tokens: torch.LongTensor, padded: bool | None = None) -> torch.Tensor:
        """Representation after the last layer and emb_layer_norm_after, as fair-esm's
        `representations[num_layers]`; padding is token 1. ``padded`` says whether any row is
        padded, when the caller knows (saves a GPU sync per batch)."""
        padding = tokens.eq(PAD_IDX)
        x = self.embed_tokens(tokens)
        if self.config.token_dropout:
            masked = tokens.eq(MASK_IDX)
            x = x.masked_fill(masked.unsqueeze(-1), 0.0)
            observed = masked.sum(-1).to(x.dtype) / (~padding).sum(-1)
            x = x * (1 - _MASK_RATIO_TRAIN) / (1 - observed)[:, None, None]
        x = x * (~padding).unsqueeze(-1).to(x.dtype)

        head_dim = self.config.embed_dim // self.config.attention_heads
        cos, sin = _rotary_tables(tokens.shape[1], head_dim, x.device, x.dtype)
        # True = may attend; (B, 1, 1, T) broadcasts over heads and queries. Without padding the
        # mask is skipped so SDPA can use its fastest kernels.
        if padded is None:
            padded = bool(padding.any())
        mask = (~padding)[:, None, None, :] if padded else None
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.emb_layer_norm_after(x)
