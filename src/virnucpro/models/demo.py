"""Tiny seeded random-weight models in the real file formats, for tests, docs and trials
(benchmarks write the real shapes with them): write_demo_esm2, write_demo_dnabert and
write_demo_models (a whole models directory). Their scores mean nothing."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from virnucpro.fileio import save_safetensors
from virnucpro.models.classifier import MLPClassifier, write_classifier
from virnucpro.models.dnabert import DnaBert
from virnucpro.models.load import dnabert_hf_name, read_dnabert_config
from virnucpro.models.tokenizers import PROTEIN_TOKENS
from virnucpro.paths import DNABERT_DIRNAME, ESM2_FILE, classifier_name


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

    cfg = read_dnabert_config(model_dir / "config.json")
    with torch.device("meta"):
        shapes = {dnabert_hf_name(k): v.shape for k, v in DnaBert(cfg).state_dict().items()}
    shapes["pooler.dense.weight"] = torch.Size([cfg.hidden_size, cfg.hidden_size])
    shapes["pooler.dense.bias"] = torch.Size([cfg.hidden_size])
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):  # the published names, drawn in their sorted order
        value = torch.randn(shapes[key], generator=gen) * 0.05
        is_norm_weight = key.endswith("weight") and ("LayerNorm" in key or "layernorm" in key)
        state[key] = value + 1.0 if is_norm_weight else value
    save_safetensors(state, model_dir / "model.safetensors")


def write_demo_models(directory: Path, seed: int = 0) -> None:
    """A models directory of tiny seeded random-weight models in the real formats (ESM-2,
    DNABERT-S, both classifiers). Their scores mean nothing."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_demo_esm2(directory / ESM2_FILE, seed=seed)
    write_demo_dnabert(directory / DNABERT_DIRNAME, seed=seed)
    dna_dim = read_dnabert_config(directory / DNABERT_DIRNAME / "config.json").hidden_size
    esm_dim = 64  # write_demo_esm2's default embed_dim
    for offset, size in enumerate((300, 500)):
        torch.manual_seed(seed + 1 + offset)
        model = MLPClassifier(dna_dim + esm_dim).eval()
        with torch.no_grad():  # non-trivial batch-norm statistics, as a trained model has
            model.bn1.running_mean.normal_(0, 0.1)
            model.bn1.running_var.uniform_(0.5, 1.5)
        write_classifier(model, directory / classifier_name(size))
