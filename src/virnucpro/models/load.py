"""Loading the two embedding models: the published file formats read, their keys mapped onto
the clean modules of models/esm2.py and models/dnabert.py, one build step for both; and ESM-2's
ready-to-load copy, which `virnucpro models prepare` writes beside the checkpoint.

- ESM-2: a fair-esm checkpoint (esm2_t36_3B_UR50D.pt, ...), a fairseq dict
    {"model": {"encoder.sentence_encoder.layers.0.self_attn.q_proj.weight": ..., ...,
               "encoder.lm_head.dense.weight": ...},
     "cfg": {"model": argparse.Namespace(encoder_layers=36, encoder_embed_dim=2560, ...)}}
  with the contact-regression weights in a separate "<name>-contact-regression.pt". Prefixes
  are stripped and q/k/v fused into one projection.
- DNABERT-S: a Hugging Face directory (config.json, model.safetensors or pytorch_model.bin,
  tokenizer.json) as `BertModel.save_pretrained` writes it (no "bert." prefix, the unused
  pooler included): its names (DNABERT_NAMES) are renamed onto ours.
Nothing is unpickled but tensors and plain data (plus argparse.Namespace, which the ESM-2 hub
files' cfg holds): a model file cannot run code. Every problem is a one-line VirnucproError
naming the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from virnucpro.errors import VirnucproError
from virnucpro.fileio import atomic_path, stamp
from virnucpro.models.dnabert import DnaBert, DnaBertConfig
from virnucpro.models.esm2 import ESM2, ESM2Config
from virnucpro.models.tokenizers import DnaTokenizer
from virnucpro.paths import esm2_load_copy

log = logging.getLogger(__name__)

State = dict[str, torch.Tensor]


def _build(
    path: Path,
    model: nn.Module,
    state: State,
    device: torch.device | str,
    dtype: torch.dtype,
    noun: str,
    sources: Callable[[str], list[str]] = lambda key: [key],
    convert: Callable[[State], State] = lambda state: state,
) -> nn.Module:
    """``model`` (made on the meta device) with the weights of ``state``, in eval mode on
    ``device`` and ``dtype``. ``state`` holds the file's names: ``sources`` gives the file keys
    each model key is made of, ``convert`` maps the file's state onto the model's. Missing,
    unexpected and wrong-shaped weights are errors, named as in the file."""
    expected = model.state_dict()
    wanted = {source for key in expected for source in sources(key)}
    missing, unexpected = sorted(wanted - state.keys()), sorted(state.keys() - wanted)
    if missing:
        raise VirnucproError(f"{path}: missing {noun} {', '.join(missing[:5])}")
    if unexpected:
        raise VirnucproError(f"{path}: unexpected {noun} {', '.join(unexpected[:5])}")
    state = convert(state)
    for key, value in expected.items():
        if state[key].shape != value.shape:
            name = " + ".join(sources(key))  # as the file names it (q/k/v: three)
            raise VirnucproError(f"{path}: {name} has shape {tuple(state[key].shape)}, "
                                 f"config says {tuple(value.shape)}")  # fmt: skip
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        reason = " ".join(str(e).split())
        raise VirnucproError(
            f"{path}: weights do not fit the configured sizes ({reason})"
        ) from None
    return model.to(device=device, dtype=dtype).eval()


# --------------------------------------------------------------------------------------
# ESM-2
# --------------------------------------------------------------------------------------

_PREFIXES = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")
# Checkpoint keys we knowingly drop: the LM head, the contact head and the rotary inv_freq
# buffers (recomputed; fair-esm's are the same fixed formula). Anything else missing or
# unexpected is an error.
IGNORED_KEY_PATTERNS = (
    re.compile(r"^lm_head\."),
    re.compile(r"^contact_head\."),
    re.compile(r"^layers\.\d+\.self_attn\.rot_emb\.inv_freq$"),
)
_FUSED = "self_attn.qkv."


def _esm2_config(path: Path, data: object) -> ESM2Config:
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


def _read_checkpoint(path: Path) -> tuple[ESM2Config, State]:
    """Config and state dict (prefixes stripped, ignored keys dropped) of a fair-esm
    checkpoint, read without running code."""
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
    config = _esm2_config(path, data)
    model_state = data.get("model")
    if not isinstance(model_state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model_state.items()
    ):
        raise VirnucproError(f"{path}: 'model' is not a state dict of tensors")
    state = {_PREFIXES.sub("", k): v for k, v in model_state.items()}
    return config, {k: v for k, v in state.items()
                    if not any(p.match(k) for p in IGNORED_KEY_PATTERNS)}  # fmt: skip


def _esm2_sources(key: str) -> list[str]:
    """The checkpoint keys a model key is made of: q_proj, k_proj and v_proj for the fused."""
    if _FUSED not in key:
        return [key]
    return [key.replace(_FUSED, f"self_attn.{x}_proj.") for x in "qkv"]


def _fuse_qkv(path: Path) -> Callable[[State], State]:
    def fuse(state: State) -> State:
        state = dict(state)
        for key in [k for k in state if k.endswith("self_attn.q_proj.weight")]:
            p = key.removesuffix("q_proj.weight")
            for kind in ("weight", "bias"):
                parts = [state.pop(f"{p}{x}_proj.{kind}") for x in "qkv"]
                if len({t.shape for t in parts}) != 1:
                    raise VirnucproError(f"{path}: {p}q/k/v_proj.{kind} shapes differ")
                state[f"{p}qkv.{kind}"] = torch.cat(parts)
        return state

    return fuse


def cache_path(path: Path, dtype: torch.dtype) -> Path:
    """Where the ready-to-load copy of a checkpoint in ``dtype`` lives: beside its path (beside
    a symlink, not its target), hidden."""
    return esm2_load_copy(path, str(dtype).removeprefix("torch."))


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


def _read_cache(cache: Path, device: torch.device | str) -> tuple[ESM2Config, State] | None:
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
    mode = path.stat().st_mode & 0o777  # as readable as the checkpoint (a shared store)
    model = load_esm2(path, "cpu", dtype, use_cache=False)
    meta = {"source": source, "config": json.dumps(asdict(model.config))}
    cache = cache_path(path, dtype)
    try:
        with atomic_path(cache, mode=mode) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), meta)
    except SafetensorError as e:
        raise VirnucproError(f"{cache}: cannot be written ({e})") from None
    return cache


def load_esm2(
    path: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    use_cache: bool = True,
) -> ESM2:
    """Load a fair-esm ESM-2 checkpoint (.pt) of any size, in eval mode on device and dtype.
    With ``use_cache``, a fresh ready-to-load copy in ``dtype`` (write_cache) is loaded
    instead, straight onto the device. Nothing is written."""
    path = Path(path)
    cache = fresh_cache(path, dtype) if use_cache else None
    cached = _read_cache(cache, device) if cache is not None else None
    if cached is not None:
        config, state = cached
        sources, convert = (lambda key: [key]), (lambda state: state)
    else:
        if use_cache and dtype != torch.float32:
            log.info("%s: no ready-to-load %s copy beside it; reading the checkpoint "
                     "('virnucpro models prepare' makes one)", path,
                     str(dtype).removeprefix("torch."))  # fmt: skip
        config, state = _read_checkpoint(path)
        sources, convert = _esm2_sources, _fuse_qkv(path)
    with torch.device("meta"):  # no throw-away random init: the weights come from the file
        model = ESM2(config)
    return _build(path, model, state, device, dtype, "key(s)", sources, convert)


# --------------------------------------------------------------------------------------
# DNABERT-S
# --------------------------------------------------------------------------------------

# Checkpoint keys we knowingly drop: the [CLS] pooler of BertModel (VirNucPro mean-pools the
# last hidden state instead). Anything else missing or unexpected is an error.
IGNORED_KEY_PREFIXES = ("pooler.",)
# Hugging Face name -> ours, as prefixes; {i} is a layer number.
DNABERT_NAMES = (
    ("embeddings.word_embeddings.", "word_embeddings."),
    ("embeddings.token_type_embeddings.", "token_type_embeddings."),
    ("embeddings.LayerNorm.", "embed_norm."),
    ("encoder.layer.{i}.attention.self.Wqkv.", "layers.{i}.qkv."),
    ("encoder.layer.{i}.attention.output.dense.", "layers.{i}.attn_out."),
    ("encoder.layer.{i}.attention.output.LayerNorm.", "layers.{i}.attn_norm."),
    ("encoder.layer.{i}.mlp.gated_layers.", "layers.{i}.mlp_in."),
    ("encoder.layer.{i}.mlp.wo.", "layers.{i}.mlp_out."),
    ("encoder.layer.{i}.mlp.layernorm.", "layers.{i}.mlp_norm."),
)
_CONFIG_INTS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)


def _prefix_pattern(prefix: str) -> re.Pattern:
    return re.compile(re.escape(prefix).replace(r"\{i\}", r"(?P<i>\d+)"))


_TO_OURS = [(_prefix_pattern(hf), ours) for hf, ours in DNABERT_NAMES]
_TO_HF = [(_prefix_pattern(ours), hf) for hf, ours in DNABERT_NAMES]


def _rename(key: str, table: list[tuple[re.Pattern, str]]) -> str:
    for pattern, replacement in table:
        if found := pattern.match(key):
            return replacement.format(i=found.groupdict().get("i")) + key[found.end() :]
    return key  # not ours to rename: reported as unexpected


def dnabert_hf_name(key: str) -> str:
    """The published (Hugging Face) name of one of DnaBert's state dict keys."""
    return _rename(key, _TO_HF)


def read_dnabert_config(path: Path) -> DnaBertConfig:
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
    return DnaBertConfig(**ints, layer_norm_eps=float(eps))


def _read_hf_weights(model_dir: Path) -> tuple[Path, State]:
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


def load_dnabert(
    model_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[DnaBert, DnaTokenizer]:
    """Load a DNABERT-S Hugging Face directory (config.json, model.safetensors or
    pytorch_model.bin, tokenizer.json) with strict weight keys; returns (model in eval mode,
    tokenizer)."""
    model_dir = Path(model_dir)
    cfg = read_dnabert_config(model_dir / "config.json")
    path, state = _read_hf_weights(model_dir)
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_KEY_PREFIXES)}
    with torch.device("meta"):  # no throw-away random init: the weights come from the file
        model = DnaBert(cfg)
    model = _build(
        path, model, state, device, dtype, "weights",
        sources=lambda key: [dnabert_hf_name(key)],
        convert=lambda state: {_rename(k, _TO_OURS): v for k, v in state.items()},
    )  # fmt: skip
    return model, DnaTokenizer.from_file(model_dir / "tokenizer.json")
