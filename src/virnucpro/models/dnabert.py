"""DNABERT-S, natively: the DNABERT-2 encoder (MosaicBERT style) without transformers.

The network follows MAGICS-LAB/DNABERT_S, evaluate/model_codes/bert_layers.py (`BertModel`):
- embeddings: word + token type (always type 0), LayerNorm; no position embeddings;
- each layer: fused Wqkv projection, softmax(q k^T / sqrt(d) + ALiBi) v, dense, post-LayerNorm
  with the residual; then a gated-GELU MLP: gated_layers (no bias) gives [gated | non_gated],
  act = exact GELU(gated) * non_gated, wo, post-LayerNorm with the residual.
Dropout is omitted: we only run inference.

The published checkpoint is `BertModel.save_pretrained` output (config "architectures":
["BertModel"]; the DNABERT_S training code saves and reloads `dnabert2` = BertModel), so its keys
carry no "bert." prefix and include the unused pooler, e.g.
  embeddings.word_embeddings.weight, encoder.layer.0.attention.self.Wqkv.weight,
  encoder.layer.0.mlp.gated_layers.weight, pooler.dense.weight.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from torch.nn.attention import sdpa_kernel

from virnucpro.errors import VirnucproError
from virnucpro.fileio import save_safetensors
from virnucpro.models.compiled import ATTENTION_BACKENDS, compiled_step

# Checkpoint keys we knowingly drop: the [CLS] pooler of BertModel (VirNucPro mean-pools the
# last hidden state instead). Anything else missing or unexpected is an error.
IGNORED_KEY_PREFIXES = ("pooler.",)

_CONFIG_INTS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)


@dataclass(frozen=True)
class DnaBertConfig:
    """The sizes that shape the network, read from a Hugging Face config.json."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: Path) -> DnaBertConfig:
        """Read config.json; any problem is a one-line VirnucproError naming the file."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VirnucproError(f"{path}: file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise VirnucproError(f"{path}: cannot read ({e})") from None
        except json.JSONDecodeError as e:
            raise VirnucproError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(raw, dict):
            raise VirnucproError(f"{path}: expected a JSON object")
        # type_vocab_size may be absent: Hugging Face's BertConfig then uses 2.
        ints = {"type_vocab_size": raw.get("type_vocab_size", 2)}
        for key in (*_CONFIG_INTS, "type_vocab_size"):
            value = raw.get(key, ints.get(key))
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise VirnucproError(f"{path}: '{key}' must be a positive integer, got {value!r}")
            ints[key] = value
        eps = raw.get("layer_norm_eps", 1e-12)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise VirnucproError(f"{path}: 'layer_norm_eps' must be a small positive number")
        if ints["hidden_size"] % ints["num_attention_heads"]:
            raise VirnucproError(
                f"{path}: hidden_size {ints['hidden_size']} is not a multiple of "
                f"num_attention_heads {ints['num_attention_heads']}"
            )
        # alibi_starting_size only pre-sizes the original's ALiBi cache; the values do not
        # depend on it, so it is not read.
        return cls(**ints, layer_norm_eps=float(eps))


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


class Embeddings(nn.Module):
    def __init__(self, cfg: DnaBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # The original always passes token type 0 for single sequences.
        type_zero = self.token_type_embeddings.weight[0]
        return self.LayerNorm(self.word_embeddings(input_ids) + type_zero)


class SelfAttention(nn.Module):
    """Holds the fused projection; called "attention.self" in the checkpoint."""

    def __init__(self, cfg: DnaBertConfig) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)


class SelfOutput(nn.Module):
    def __init__(self, cfg: DnaBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class Attention(nn.Module):
    def __init__(self, cfg: DnaBertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)  # the checkpoint's name, hence the odd attribute
        self.output = SelfOutput(cfg)


class GatedMLP(nn.Module):
    def __init__(self, cfg: DnaBertConfig) -> None:
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gated_layers = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class Layer(nn.Module):
    """Post-LayerNorm attention, then the gated-GELU MLP."""

    def __init__(self, cfg: DnaBertConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.mlp = GatedMLP(cfg)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v, each (B, heads, T, head_dim)."""
        b, t, h = x.shape
        heads = self.attention.self.n_heads
        # Wqkv output is laid out (q|k|v, head, head_dim), as the original's rearrange reads it.
        qkv = self.attention.self.Wqkv(x).view(b, t, 3, heads, h // heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attention output y (B, heads, T, head_dim) through the rest of the layer."""
        b, t, h = x.shape
        out = self.attention.output
        x = out.LayerNorm(out.dense(y.transpose(1, 2).reshape(b, t, h)) + x)
        # The first half goes through exact (erf) GELU and gates the second half.
        mlp = self.mlp
        gated, non_gated = mlp.gated_layers(x).split(mlp.intermediate_size, dim=-1)
        return mlp.layernorm(mlp.wo(F.gelu(gated) * non_gated) + x)


class Encoder(nn.Module):
    def __init__(self, cfg: DnaBertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


class DnaBert(nn.Module):
    """DNABERT-2/DNABERT-S encoder returning the last hidden state."""

    def __init__(self, cfg: DnaBertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.compiled = False  # layers through torch.compile (embed.load_model's compile)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, padded: bool | None = None
    ) -> torch.Tensor:
        """input_ids (B, T), attention_mask (B, T) with 1 = real token -> (B, T, H).

        Padding keys are masked out of attention, so each real token's result equals that of
        the unpadded sequence (the original runs unpadded); padding rows come back as zeros.
        ``padded`` says whether any row is padded, when the caller knows (no GPU sync).
        Single-row batches run eagerly even when compiled: a dimension of size 1 is always
        specialized, so one row would compile again mid-run (one very long sequence).
        """
        keep = attention_mask.bool()
        if padded is None:
            padded = not bool(keep.all())
        slopes = _slopes_on(self.config.num_attention_heads, input_ids.device)
        run = compiled_step(encode, self.compiled and input_ids.shape[0] > 1)
        with sdpa_kernel(ATTENTION_BACKENDS):
            return run(self, input_ids, keep, slopes, padded)


def encode(
    model: DnaBert, input_ids: torch.Tensor, keep: torch.Tensor, slopes: torch.Tensor, padded: bool
) -> torch.Tensor:
    """The encoder, from token ids to the last hidden state (DnaBert.forward's work).

    With --compile this whole function goes through torch.compile, every layer with its
    attention: one graph for padded batches, one for unpadded, both made by the warm-up at
    load. Compiling only the steps around attention left the host launching each layer
    (about 0.5 ms of dispatch per layer) and starved the GPU in a fresh process's first pass,
    where new batch shapes also cost the host cuBLAS planning: a default-size shard's first
    pass ran at 1.38-1.47 M tokens/s that way, 1.45-1.60 M compiled whole (H200; runs 24, 25
    and 27 in benchmarks/README.md).
    """
    x = model.embeddings(input_ids)
    bias = alibi_bias(slopes, input_ids.shape[1])
    if padded:
        bias = bias.masked_fill(~keep[:, None, None, :], float("-inf"))
    # the ALiBi bias (with padded keys at -inf) is SDPA's mask; scale 1/sqrt(head_dim)
    bias = bias.to(x.dtype)
    for layer in model.encoder.layer:
        q, k, v = layer.qkv(x)
        x = layer.finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
    return x * keep[..., None].to(x.dtype)


class DnaTokenizer:
    """The model's Hugging Face tokenizer.json, run with the `tokenizers` package."""

    def __init__(self, tokenizer: Tokenizer, path: Path) -> None:
        # HF's tokenizer call only truncates or pads when asked; VirNucPro asked for neither.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        pad_id = tokenizer.token_to_id("[PAD]")
        cls_id = tokenizer.token_to_id("[CLS]")
        sep_id = tokenizer.token_to_id("[SEP]")
        if pad_id is None or cls_id is None or sep_id is None:
            raise VirnucproError(f"{path}: vocabulary lacks [PAD], [CLS] or [SEP]")
        probe = self.encode("A")
        if probe[0] != cls_id or probe[-1] != sep_id:
            raise VirnucproError(f"{path}: post-processor does not add [CLS] ... [SEP]")
        self.pad_id: int = pad_id

    def encode(self, seq: str) -> list[int]:
        """Token ids of one sequence with [CLS] ... [SEP], no truncation.

        Characters are handled as tokenizer.json says: DNABERT-2's BPE vocabulary is upper-case
        A/C/G/T pieces, so other letters (lower case, N) become [UNK] unless the file normalizes.
        """
        return self._tokenizer.encode(seq).ids

    def encode_batch(self, seqs: list[str]) -> list[list[int]]:
        """encode() of many sequences, tokenized in parallel by the tokenizers library
        (the variant that skips character offsets, which nothing here uses: 25 % faster)."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch_fast(seqs)]


def _read_state_dict(model_dir: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    path = model_dir / "model.safetensors"
    if path.is_file():
        try:
            return path, load_file(path)
        except Exception as e:  # safetensors raises several types for corrupt files
            raise VirnucproError(f"{path}: not a readable safetensors file ({e})") from None
    path = model_dir / "pytorch_model.bin"
    if not path.is_file():
        raise VirnucproError(f"{model_dir}: no model.safetensors or pytorch_model.bin")
    try:
        # weights_only refuses any pickled object that is not plain tensors/containers.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean "refused"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VirnucproError(f"{path}: not a plain tensor state dict ({first_line})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise VirnucproError(f"{path}: not a plain tensor state dict")
    return path, state


def _check_keys(path: Path, state: dict[str, torch.Tensor], model: DnaBert) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise VirnucproError(f"{path}: missing weights {', '.join(missing[:5])}")
    if unexpected:
        raise VirnucproError(f"{path}: unexpected weights {', '.join(unexpected[:5])}")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise VirnucproError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, config says {tuple(shape)}"
            )


def load_dnabert(
    model_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[DnaBert, DnaTokenizer]:
    """Load a DNABERT-S Hugging Face directory (config.json, model.safetensors or
    pytorch_model.bin, tokenizer.json) with strict weight keys; returns (model in eval mode,
    tokenizer)."""
    model_dir = Path(model_dir)
    cfg = DnaBertConfig.from_json(model_dir / "config.json")
    path, state = _read_state_dict(model_dir)
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_KEY_PREFIXES)}
    with torch.device("meta"):  # no throw-away random init: the weights come from the file
        model = DnaBert(cfg)
    _check_keys(path, state, model)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval()

    tok_path = model_dir / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception as e:  # tokenizers raises a bare Exception for missing or bad files
        problem = "file not found" if not tok_path.is_file() else f"not a tokenizer file ({e})"
        raise VirnucproError(f"{tok_path}: {problem}") from None
    return model, DnaTokenizer(tokenizer, tok_path)


def dnabert_mean_embeddings(
    model: DnaBert, token_batch: list[list[int]], pad_id: int, to_cpu: bool = True
) -> torch.Tensor:
    """Pad a batch of token id lists, run the model and return float32 (B, H) on the CPU (or
    left on the model's device): the mean of the last hidden state over every real token,
    [CLS] and [SEP] included (VirNucPro's rule)."""
    device = next(model.parameters()).device
    lengths = np.array([len(ids) for ids in token_batch])
    input_ids = np.full((len(token_batch), lengths.max()), pad_id, dtype=np.int64)
    for row, ids in zip(input_ids, token_batch, strict=True):
        row[: len(ids)] = ids
    mask = np.arange(lengths.max())[None, :] < lengths[:, None]
    # every tensor made in inference mode, whoever calls: with --compile, a CPU batch's
    # tensors (no copy to a device) would otherwise compile the encoder a second time
    with torch.inference_mode():
        host_ids, host_mask = torch.from_numpy(input_ids), torch.from_numpy(mask)
        if device.type == "cuda":
            # pinned and non-blocking: the host goes on to the next batch while this one runs
            # (a copy from ordinary memory would wait for the GPU to finish its queue)
            host_ids, host_mask = host_ids.pin_memory(), host_mask.pin_memory()
        ids, keep = host_ids.to(device, non_blocking=True), host_mask.to(device, non_blocking=True)
        hidden = model(ids, keep, padded=bool(lengths.min() != lengths.max()))
        weights = (keep / keep.sum(1, keepdim=True)).float()
        means = torch.bmm(weights[:, None, :], hidden.float()).squeeze(1)
        return means.cpu() if to_cpu else means


def write_demo_dnabert(model_dir: Path, seed: int = 0) -> None:
    """Write a tiny seeded random-weight DNABERT-S directory in the published layout:
    config.json (the published keys, tiny sizes), model.safetensors (published key names,
    pooler included) and a DNABERT-2 style BPE tokenizer.json."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # ids 0..4, as in DNABERT-2
    pieces = ["A", "C", "G", "T", "AA", "TT", "CG", "GC", "AT", "TA", "AAT", "TTA"]
    vocab = {tok: i for i, tok in enumerate(specials + pieces)}
    merges = [("A", "A"), ("T", "T"), ("C", "G"), ("G", "C"), ("A", "T"), ("T", "A")]
    merges += [("AA", "T"), ("TT", "A")]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(model_dir / "tokenizer.json"))

    config = {
        "_name_or_path": "zhihan1996/DNABERT-2-117M",
        "alibi_starting_size": 512,
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_bert.BertConfig",
            "AutoModel": "bert_layers.BertModel",
            "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
            "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification",
        },
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 48,
        "initializer_range": 0.02,
        "intermediate_size": 96,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.28.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": len(vocab),
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    cfg = DnaBertConfig.from_json(model_dir / "config.json")
    shapes = {k: v.shape for k, v in DnaBert(cfg).state_dict().items()}
    shapes["pooler.dense.weight"] = torch.Size([cfg.hidden_size, cfg.hidden_size])
    shapes["pooler.dense.bias"] = torch.Size([cfg.hidden_size])
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        value = torch.randn(shapes[key], generator=gen) * 0.05
        is_norm_weight = key.endswith("weight") and ("LayerNorm" in key or "layernorm" in key)
        state[key] = value + 1.0 if is_norm_weight else value
    save_safetensors(state, model_dir / "model.safetensors")
