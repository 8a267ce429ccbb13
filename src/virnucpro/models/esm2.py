"""ESM-2, natively: the fair-esm protein language model without fair-esm.

The network follows fair-esm 2.0.0, esm/model/esm2.py (`ESM2`) with its `TransformerLayer`:
- embeddings: token embedding only (no position embeddings), with the token-dropout rescaling
  the model was trained with: x * (1 - 0.15 * 0.8) / (1 - fraction of <mask> tokens), then
  padding positions zeroed;
- each layer (pre-LayerNorm): x + out_proj(attention(LN(x))), then x + fc2(GELU(fc1(LN(x))));
  attention uses rotary position embeddings on q and k and ignores padded keys;
- a final LayerNorm (emb_layer_norm_after) gives the representation VirNucPro pools.
q/k/v are fused into one projection at load time. Dropout, the LM head and the contact head are
omitted: we only need the last-layer representation at inference.

The hub checkpoints (esm2_t36_3B_UR50D.pt, ...) are fairseq dicts:
  {"model": {"encoder.sentence_encoder.layers.0.self_attn.q_proj.weight": ..., ...,
             "encoder.lm_head.dense.weight": ...},
   "cfg": {"model": argparse.Namespace(encoder_layers=36, encoder_embed_dim=2560, ...)}}
with the contact-regression weights in a separate "<name>-contact-regression.pt".
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from virnucpro.errors import VirnucproError
from virnucpro.fileio import stamp
from virnucpro.models.compiled import compiled_step, run_layers

log = logging.getLogger(__name__)

# fair-esm's ESM-1b/ESM-2 alphabet (Alphabet.from_architecture("ESM-1b")), in index order.
PROTEIN_TOKENS: list[str] = [
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W",
    "C", "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
]  # fmt: skip
_TOKEN_INDEX = {tok: i for i, tok in enumerate(PROTEIN_TOKENS)}
CLS_IDX = _TOKEN_INDEX["<cls>"]
PAD_IDX = _TOKEN_INDEX["<pad>"]
EOS_IDX = _TOKEN_INDEX["<eos>"]
UNK_IDX = _TOKEN_INDEX["<unk>"]
MASK_IDX = _TOKEN_INDEX["<mask>"]

# The original VirNucPro averages at most this many residues per protein.
MEAN_WINDOW = 1024
# Token dropout during training: 15% of tokens selected, 80% of those replaced by <mask>.
_MASK_RATIO_TRAIN = 0.15 * 0.8

_PREFIXES = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")
# Checkpoint keys we knowingly drop: the LM head, the contact head and the rotary inv_freq
# buffers (recomputed here; fair-esm's are the same fixed formula). Anything else missing or
# unexpected is an error.
IGNORED_KEY_PATTERNS = (
    re.compile(r"^lm_head\."),
    re.compile(r"^contact_head\."),
    re.compile(r"^layers\.\d+\.self_attn\.rot_emb\.inv_freq$"),
)


_BYTE_TO_TOKEN = np.full(256, UNK_IDX, dtype=np.int64)
for _token, _index in _TOKEN_INDEX.items():
    if len(_token) == 1:
        _BYTE_TO_TOKEN[ord(_token)] = _index


def tokenize_protein(seq: str) -> list[int]:
    """Token ids <cls> + one token per residue + <eos>; letters outside the alphabet are <unk>."""
    residues = _BYTE_TO_TOKEN[np.frombuffer(seq.encode("latin-1", "replace"), dtype=np.uint8)]
    return [CLS_IDX, *residues.tolist(), EOS_IDX]


@dataclass(frozen=True)
class ESM2Config:
    """The sizes that shape the network, read from the checkpoint's cfg["model"]."""

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
    """The attention projections (q, k and v fused), called "self_attn" in the checkpoint."""

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)


class Layer(nn.Module):
    """Pre-LayerNorm: x + out_proj(attention(LN(x))), then x + fc2(GELU(fc1(LN(x)))); run
    as the two steps around attention that models/compiled.py expects.

    With --compile only ``project`` (the q/k/v projection and the rotation, one kernel
    compiled, eight eagerly) goes through torch.compile: ATen's LayerNorm, GELU and add
    kernels beat the ones torch.compile makes for them with dynamic shapes (the compiled
    norms ran at half the memory bandwidth), and the layers ran 4.6 % faster with them
    (3B shapes, H200)."""

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.self_attn = SelfAttention(embed_dim, heads)
        self.final_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, 4 * embed_dim)
        self.fc2 = nn.Linear(4 * embed_dim, embed_dim)

    def project(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (rotated), k (rotated), v, each (B, heads, T, head_dim), of the normed input."""
        b, t, d = h.shape
        heads = self.self_attn.heads
        q, k, v = self.self_attn.qkv(h).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        # SDPA's default 1/sqrt(head_dim) scale equals fair-esm scaling q before the rotation.
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def before_attention(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, compiled: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        project = compiled_step(Layer.project, compiled)
        return project(self, self.self_attn_layer_norm(x), cos, sin)

    def after_attention(
        self, x: torch.Tensor, y: torch.Tensor, compiled: bool = False
    ) -> torch.Tensor:
        b, t, d = x.shape
        x = x + self.self_attn.out_proj(y.transpose(1, 2).reshape(b, t, d))
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
        self.compiled = False  # layers through torch.compile (embed.load_model's compile)

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
        x = run_layers(self.layers, x, mask, self.compiled, cos, sin)
        return self.emb_layer_norm_after(x)


def _read_config(path: Path, data: object) -> ESM2Config:
    cfg = data.get("cfg") if isinstance(data, Mapping) else None
    cfg = cfg.get("model") if isinstance(cfg, Mapping) else None
    if cfg is None:
        raise VirnucproError(f"{path}: not a fair-esm ESM-2 checkpoint (no cfg['model'])")

    def value(name: str) -> object:
        return cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, None)

    sizes = {}
    for name in ("encoder_layers", "encoder_embed_dim", "encoder_attention_heads"):
        v = value(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise VirnucproError(f"{path}: cfg '{name}' must be a positive integer, got {v!r}")
        sizes[name] = v
    token_dropout = value("token_dropout")
    if not isinstance(token_dropout, bool):
        raise VirnucproError(f"{path}: cfg 'token_dropout' must be true or false")
    if sizes["encoder_embed_dim"] % sizes["encoder_attention_heads"]:
        raise VirnucproError(f"{path}: encoder_embed_dim is not a multiple of the head count")
    return ESM2Config(
        num_layers=sizes["encoder_layers"],
        embed_dim=sizes["encoder_embed_dim"],
        attention_heads=sizes["encoder_attention_heads"],
        token_dropout=token_dropout,
    )


def _native_state_dict(path: Path, model_state: object, config: ESM2Config) -> dict:
    """fair-esm keys -> ours: strip prefixes, drop ignored keys, fuse q/k/v; strict checks."""
    if not isinstance(model_state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model_state.items()
    ):
        raise VirnucproError(f"{path}: 'model' is not a state dict of tensors")
    state = {_PREFIXES.sub("", k): v for k, v in model_state.items()}
    state = {k: v for k, v in state.items() if not any(p.match(k) for p in IGNORED_KEY_PATTERNS)}

    expected = {"embed_tokens.weight", "emb_layer_norm_after.weight", "emb_layer_norm_after.bias"}
    for i in range(config.num_layers):
        expected |= {
            f"layers.{i}.{m}.{p}"
            for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                      "self_attn.out_proj", "self_attn_layer_norm", "final_layer_norm",
                      "fc1", "fc2")
            for p in ("weight", "bias")
        }  # fmt: skip
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing:
        raise VirnucproError(f"{path}: missing key(s) {', '.join(missing[:5])}")
    if unexpected:
        raise VirnucproError(f"{path}: unexpected key(s) {', '.join(unexpected[:5])}")

    for i in range(config.num_layers):
        p = f"layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{p}{x}_proj.{kind}") for x in "qkv"]
            if len({t.shape for t in parts}) != 1:
                raise VirnucproError(f"{path}: {p}q/k/v_proj.{kind} shapes differ")
            state[f"{p}qkv.{kind}"] = torch.cat(parts)
    return state


def _read_checkpoint(path: Path) -> tuple[ESM2Config, dict[str, torch.Tensor]]:
    """Config and native (fused) state dict of a fair-esm checkpoint, read without running code."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:  # memory-mapped: tensors are read once, straight into their destination
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                data = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except FileNotFoundError:
        raise VirnucproError(f"{path}: file not found") from None
    except pickle.UnpicklingError:
        raise VirnucproError(
            f"{path}: holds pickled objects other than tensors and plain data; refusing to load"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VirnucproError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    config = _read_config(path, data)
    return config, _native_state_dict(path, data.get("model"), config)


def cache_path(path: Path, dtype: torch.dtype) -> Path:
    """Where the ready-to-load copy of a checkpoint in ``dtype`` lives: beside its path (beside
    a symlink, not its target), hidden."""
    return path.with_name(f".{path.stem}.{str(dtype).removeprefix('torch.')}.safetensors")


def fresh_cache(path: Path, dtype: torch.dtype) -> Path | None:
    """The ready-to-load copy of this very checkpoint version (its stamp, through symlinks,
    matches the one recorded) in ``dtype``, if there is one."""
    cache = cache_path(path, dtype)
    try:
        with safe_open(str(cache), framework="pt") as handle:
            fresh = (handle.metadata() or {}).get("source") == stamp(path)
    except (OSError, SafetensorError):
        return None
    return cache if fresh else None


def _read_cache(cache: Path, device: torch.device | str) -> tuple | None:
    """(config, state) from a ready-to-load copy; None if it cannot be read."""
    try:
        with safe_open(str(cache), framework="pt", device=str(device)) as handle:
            config = ESM2Config(**json.loads((handle.metadata() or {})["config"]))
            return config, {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (OSError, SafetensorError, KeyError, ValueError, TypeError):
        return None


def write_cache(path: Path, dtype: torch.dtype) -> Path:
    """Write the ready-to-load copy of a checkpoint in ``dtype`` beside it, unless a fresh one
    is there (`virnucpro models prepare`; loading never writes it)."""
    path = Path(path)
    if (cache := fresh_cache(path, dtype)) is not None:
        return cache
    source = stamp(path)  # before reading: a file changed meanwhile is then not marked fresh
    mode = path.stat().st_mode & 0o777
    config, state = _read_checkpoint(path)
    meta = {"source": source, "config": json.dumps(asdict(config))}
    cache = cache_path(path, dtype)
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    try:
        save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(tmp), meta)
        os.chmod(tmp, mode)  # as readable as the checkpoint (a shared store)
        os.replace(tmp, cache)
    except SafetensorError as e:
        raise VirnucproError(f"{cache}: cannot be written ({e})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return cache


def load_esm2(
    path: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    use_cache: bool = True,
) -> ESM2:
    """Load a fair-esm ESM-2 checkpoint (.pt) of any size, in eval mode on device and dtype.

    The file is unpickled with weights_only (plus argparse.Namespace, which the hub files'
    cfg holds): a checkpoint cannot run code. Any problem is a one-line VirnucproError.
    With ``use_cache``, a fresh ready-to-load copy in ``dtype`` (write_cache) is loaded
    instead, straight onto the device. Nothing is written."""
    path = Path(path)
    cache = fresh_cache(path, dtype) if use_cache else None
    cached = _read_cache(cache, device) if cache is not None else None
    if cached is not None:
        config, state = cached
    else:
        if use_cache and dtype != torch.float32:
            log.info("%s: no ready-to-load %s copy beside it; reading the checkpoint "
                     "('virnucpro models prepare' makes one)", path,
                     str(dtype).removeprefix("torch."))  # fmt: skip
        config, state = _read_checkpoint(path)
    with torch.device("meta"):
        model = ESM2(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        reason = " ".join(str(e).split())
        raise VirnucproError(
            f"{path}: weights do not fit the configured sizes ({reason})"
        ) from None
    return model.to(device=device, dtype=dtype).eval()


def esm2_mean_embeddings(
    model: ESM2, token_batch: list[list[int]], to_cpu: bool = True
) -> torch.Tensor:
    """Per protein, the mean last-layer representation over residues 1..min(L, 1024) (BOS and
    EOS excluded), as float32, shape (B, D), on the CPU (or left on the model's device, so the
    caller can queue more work before waiting). The model sees the whole sequence; the 1024
    limit applies to the mean only (the original VirNucPro rule)."""
    lengths = np.array([len(t) - 2 for t in token_batch])
    if lengths.min() < 1:
        raise ValueError("every token list needs BOS, at least one residue and EOS")
    device = model.embed_tokens.weight.device
    tokens = np.full((len(token_batch), lengths.max() + 2), PAD_IDX, dtype=np.int64)
    for row, ids in zip(tokens, token_batch, strict=True):
        row[: len(ids)] = ids
    host_tokens = torch.from_numpy(tokens)
    if device.type == "cuda":
        # pinned and non-blocking: the host goes on to the next batch while this one runs
        # (a copy from ordinary memory would wait for the GPU to finish its queue)
        host_tokens = host_tokens.pin_memory()
    with torch.inference_mode():
        tokens_on_device = host_tokens.to(device, non_blocking=True)
        hidden = model(tokens_on_device, bool(lengths.min() != lengths.max()))
        # mean weights made on the device, from the tokens: no other copy to the GPU
        window = (tokens_on_device.ne(PAD_IDX).sum(1, keepdim=True) - 2).clamp(max=MEAN_WINDOW)
        positions = torch.arange(tokens.shape[1], device=device)
        weights = ((positions >= 1) & (positions <= window)) / window
        # weighted sum in float32: (B, 1, T) @ (B, T, D)
        means = torch.bmm(weights.float()[:, None, :], hidden.float()).squeeze(1)
        return means.cpu() if to_cpu else means


def write_demo_esm2(
    path: Path,
    seed: int = 0,
    num_layers: int = 2,
    embed_dim: int = 64,
    attention_heads: int = 4,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> None:
    """Write a seeded, random-weight ESM-2 checkpoint in the hub file format (tiny by
    default; benchmarks write the 3B shapes in float16, drawn on the GPU), plus the
    "<stem>-contact-regression.pt" file that fair-esm's local loader requires next to it.
    Name it esm2_*.pt: fair-esm picks its ESM-2 loader by that prefix."""
    path = Path(path)
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int, std: float = 0.05, mean: float = 0.0) -> torch.Tensor:
        values = torch.randn(*shape, generator=gen, device=device) * std + mean
        return values.to(dtype).cpu()

    d, vocab = embed_dim, len(PROTEIN_TOKENS)
    enc = "encoder.sentence_encoder."
    embed = randn(vocab, d, std=0.5)
    state = {f"{enc}embed_tokens.weight": embed}
    for i in range(num_layers):
        p = f"{enc}layers.{i}."
        for name, n_out, n_in in (
            ("self_attn.k_proj", d, d),
            ("self_attn.v_proj", d, d),
            ("self_attn.q_proj", d, d),
            ("self_attn.out_proj", d, d),
            ("fc1", 4 * d, d),
            ("fc2", d, 4 * d),
        ):
            state[f"{p}{name}.weight"] = randn(n_out, n_in, std=1 / math.sqrt(n_in))
            state[f"{p}{name}.bias"] = randn(n_out)
        head_dim = d // attention_heads
        state[f"{p}self_attn.rot_emb.inv_freq"] = 1.0 / (
            10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        )
        for name in ("self_attn_layer_norm", "final_layer_norm"):
            state[f"{p}{name}.weight"] = randn(d, std=0.1, mean=1.0)
            state[f"{p}{name}.bias"] = randn(d, std=0.1)
    state[f"{enc}emb_layer_norm_after.weight"] = randn(d, std=0.1, mean=1.0)
    state[f"{enc}emb_layer_norm_after.bias"] = randn(d, std=0.1)
    # The LM head's output weight is tied to the token embedding, as in the hub files.
    state["encoder.lm_head.weight"] = embed
    state["encoder.lm_head.bias"] = randn(vocab)
    state["encoder.lm_head.dense.weight"] = randn(d, d, std=1 / math.sqrt(d))
    state["encoder.lm_head.dense.bias"] = randn(d)
    state["encoder.lm_head.layer_norm.weight"] = randn(d, std=0.1, mean=1.0)
    state["encoder.lm_head.layer_norm.bias"] = randn(d, std=0.1)

    cfg = argparse.Namespace(
        arch="ESM-2",
        encoder_layers=num_layers,
        encoder_embed_dim=d,
        encoder_ffn_embed_dim=4 * d,
        encoder_attention_heads=attention_heads,
        token_dropout=True,
    )
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    regression = {
        "contact_head.regression.weight": randn(1, num_layers * attention_heads),
        "contact_head.regression.bias": randn(1),
    }
    torch.save({"model": regression}, path.with_name(f"{path.stem}-contact-regression.pt"))
