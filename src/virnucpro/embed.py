"""Stages embed-dna and embed-protein: mean DNABERT-S / ESM-2 features of prepared frames.

Both share one loop: tokenize, sort by length, cut into batches of at most ``batch_tokens``
padded tokens, run the model, put the rows back in file order. A CUDA out-of-memory error
halves the budget and retries the batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from virnucpro.device import DTYPES, setup
from virnucpro.errors import VirnucproError
from virnucpro.fasta import fasta_stem, read_fasta
from virnucpro.features import write_features
from virnucpro.models.dnabert import DnaBert, DnaTokenizer, dnabert_mean_embeddings, load_dnabert
from virnucpro.models.esm2 import ESM2, esm2_mean_embeddings, load_esm2, tokenize_protein
from virnucpro.models.files import sha256
from virnucpro.progress import StageProgress

log = logging.getLogger(__name__)

BatchFn = Callable[[list[list[int]]], torch.Tensor]

CPU_BATCH_TOKENS = 8192
MAX_GPU_BATCH_TOKENS = 65536


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of at most batch_tokens padded tokens, longest first.

    Sequences of one length fill batches of their own, which need no padding mask (the
    fastest attention kernels, and the compiled layers, take none). What is left of each
    length when it cannot fill an eighth of a batch is packed with other lengths, padded:
    many tiny batches would leave the GPU idle between launches. A sequence longer than the
    budget gets a batch of its own."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, length in enumerate(lengths):
        by_length[length].append(i)
    batches: list[list[int]] = []
    leftovers: list[int] = []
    for length in sorted(by_length, reverse=True):
        group, rows = by_length[length], max(1, batch_tokens // length)
        for start in range(0, len(group), rows):
            part = group[start : start + rows]
            if len(part) == rows or len(part) * length * 8 >= batch_tokens:
                batches.append(part)
            else:
                leftovers.extend(part)
    mixed: list[list[int]] = []
    for i in leftovers:  # longest first: each batch's first index is its longest
        if mixed and lengths[mixed[-1][0]] * (len(mixed[-1]) + 1) <= batch_tokens:
            mixed[-1].append(i)
        else:
            mixed.append([i])
    return sorted(batches + mixed, key=lambda batch: -lengths[batch[0]])


def _run_with_oom_retry(tokens: list[list[int]], run: BatchFn, budget: list[int]) -> torch.Tensor:
    """Run one batch in pieces of at most budget[0] padded tokens. On CUDA out-of-memory the
    shared budget drops to half the failing piece and the rest goes on in smaller pieces;
    later batches keep the smaller budget."""
    longest = max(len(t) for t in tokens)  # batches are sorted longest first
    outputs, start = [], 0
    while start < len(tokens):
        part = tokens[start : start + max(1, budget[0] // longest)]
        try:
            outputs.append(run(part))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(part) == 1:
                raise VirnucproError(
                    f"out of GPU memory on a single sequence of {longest} tokens"
                ) from None
            budget[0] = max(1, min(budget[0], len(part) * longest) // 2)
            log.warning("CUDA out of memory: batch budget now %d tokens, retrying", budget[0])
            continue
        start += len(part)
    return torch.cat(outputs)


def embed_tokens(
    tokens: list[list[int]], run: BatchFn, dim: int, batch_tokens: int, progress: StageProgress
) -> torch.Tensor:
    """Features (N, dim) float32 on the CPU, in the order of ``tokens``.

    ``run`` may leave its result on the GPU: batches are queued without waiting, and the
    features come to the host once at the end, so host work overlaps the GPU's."""
    if not tokens:
        return torch.zeros(0, dim)
    budget = [batch_tokens]
    order: list[int] = []
    outputs: list[torch.Tensor] = []
    for batch in plan_batches([len(t) for t in tokens], batch_tokens):
        outputs.append(_run_with_oom_retry([tokens[i] for i in batch], run, budget))
        order.extend(batch)
        progress.advance(len(batch))
    features = torch.empty(len(tokens), dim)
    features[torch.tensor(order)] = torch.cat(outputs).float().cpu()
    return features


def default_batch_tokens(device: torch.device, hidden: int) -> int:
    """Tokens per batch: fixed on CPU; on a GPU sized from free memory (about 48 bytes of
    activations per token and hidden unit at the widest point, half the free memory)."""
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1024, min(MAX_GPU_BATCH_TOKENS, free // 2 // (hidden * 48))))


@dataclass
class LoadedModel:
    kind: str  # "dnabert" or "esm2"
    path: Path
    model: DnaBert | ESM2
    tokenizer: DnaTokenizer | None
    device: torch.device
    precision: str
    load_seconds: float

    @property
    def dim(self) -> int:
        config = self.model.config
        return config.hidden_size if self.kind == "dnabert" else config.embed_dim

    def tokenize(self, sequences: list[str]) -> list[list[int]]:
        if self.tokenizer is not None:
            return self.tokenizer.encode_batch(sequences)
        return [tokenize_protein(s) for s in sequences]

    def run(self, tokens: list[list[int]]) -> torch.Tensor:
        """Features of one batch, left on the model's device."""
        if self.tokenizer is not None:
            return dnabert_mean_embeddings(self.model, tokens, self.tokenizer.pad_id, False)
        return esm2_mean_embeddings(self.model, tokens, to_cpu=False)


def load_model(
    kind: str, path: Path, device: str = "auto", precision: str = "auto", compile: bool = False
) -> LoadedModel:
    """Load a model for embedding. ``compile``: each transformer layer through torch.compile
    (identical layers share one compiled graph; dynamic shapes after the first recompile)."""
    dev, prec = setup(device, precision)
    started = time.perf_counter()
    if kind == "dnabert":
        model, tokenizer = load_dnabert(path, dev, DTYPES[prec])
    else:
        # On a GPU every task pays the load: keep a ready-to-load copy beside the checkpoint.
        use_cache = dev.type == "cuda"
        model, tokenizer = load_esm2(path, dev, DTYPES[prec], use_cache=use_cache), None
    if compile:
        layers = model.layers if kind == "esm2" else model.encoder.layer
        for layer in layers:
            layer.compile()
    seconds = time.perf_counter() - started
    log.info("%s loaded from %s in %.1f s", kind, path, seconds)
    return LoadedModel(kind, Path(path), model, tokenizer, dev, prec, seconds)


OUTPUT_SUFFIX = {"dnabert": ".dnabert.safetensors", "esm2": ".esm2.safetensors"}
INPUT_SUFFIX = {"dnabert": ".nucleotide.fa", "esm2": ".protein.faa"}


def output_path(kind: str, input_path: Path, outdir: Path) -> Path:
    name = Path(input_path).name
    suffix = INPUT_SUFFIX[kind]
    prefix = name[: -len(suffix)] if name.endswith(suffix) else fasta_stem(input_path)
    return Path(outdir) / f"{prefix}{OUTPUT_SUFFIX[kind]}"


def embed_file(
    loaded: LoadedModel,
    input_path: Path,
    outdir: Path,
    batch_tokens: int | None = None,
    feature_dtype: str = "float16",
    show_progress: bool = True,
) -> Path:
    """Stage entry: features of every frame of a prepared file, written with their IDs.
    An empty prepared file (no frame kept in the shard) gives a file with zero rows."""
    input_path = Path(input_path)
    started = time.perf_counter()
    records = list(read_fasta(input_path, nucleotide=loaded.kind == "dnabert", allow_empty=True))
    ids = [r.id for r in records]
    tokens = loaded.tokenize([r.sequence for r in records])
    budget = batch_tokens or default_batch_tokens(loaded.device, loaded.dim)
    label = "DNABERT-S" if loaded.kind == "dnabert" else "ESM-2"
    with StageProgress(f"{label} {input_path.name}", len(tokens), "frames", show_progress) as p:
        features = embed_tokens(tokens, loaded.run, loaded.dim, budget, p)
    seconds = time.perf_counter() - started
    n_tokens = sum(len(t) for t in tokens)
    info = {
        "stage": f"embed-{'dna' if loaded.kind == 'dnabert' else 'protein'}",
        "model": str(loaded.path),
        "model_sha256": sha256(loaded.path),
        "device": str(loaded.device),
        "precision": loaded.precision,
        "batch_tokens": budget,
        "frames": len(ids),
        "tokens": n_tokens,
        "load_seconds": round(loaded.load_seconds, 3),
        "seconds": round(seconds, 3),
    }
    out = output_path(loaded.kind, input_path, outdir)
    Path(outdir).mkdir(parents=True, exist_ok=True)
    write_features(out, ids, features, {"info": json.dumps(info)}, dtype=feature_dtype)
    log.info(
        "%s: %d frames, %d tokens in %.1f s (%.0f tokens/s) -> %s",
        label, len(ids), n_tokens, seconds, n_tokens / max(seconds, 1e-9), out,
    )  # fmt: skip
    return out
