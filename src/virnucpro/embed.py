"""Stages embed-dna and embed-protein: mean DNABERT-S / ESM-2 features of prepared frames.

Both share one loop: tokenize, sort by length, cut into batches of at most ``batch_tokens``
padded tokens, run the model, put the rows back in file order. A CUDA out-of-memory error
halves the budget and retries the batch.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from virnucpro.device import DTYPES, setup
from virnucpro.errors import VirnucproError
from virnucpro.fasta import Record, fasta_stem, read_fasta
from virnucpro.features import FEATURE_DTYPES, write_features
from virnucpro.models.dnabert import DnaBert, DnaTokenizer, dnabert_mean_embeddings, load_dnabert
from virnucpro.models.esm2 import ESM2, esm2_mean_embeddings, load_esm2, tokenize_protein
from virnucpro.models.files import sha256
from virnucpro.progress import StageProgress

log = logging.getLogger(__name__)

BatchFn = Callable[[list[list[int]]], torch.Tensor]

CPU_BATCH_TOKENS = 8192
# Largest GPU batch, as tokens x hidden width: 65,536 tokens for ESM-2 3B (the budget of all
# its measurements), 218,453 for DNABERT-S, whose batches are cheap enough that launching
# them held the GPU back (its model time fell from 0.67 to 0.50 s on the benchmark input).
MAX_GPU_BATCH_ACTIVATIONS = 65536 * 2560
# embed-dna reads and tokenizes its input in chunks of frames, each while the GPU runs the ones
# before. The first is small, so the GPU starts early; each next one is twice as large (up to
# the last size), which keeps the GPU fed (a chunk is read in about a third of the time the
# model takes on it) and lets longer runs of one length fill batches of their own.
FIRST_CHUNK_FRAMES = 1024
LARGEST_CHUNK_FRAMES = 32768


def plan_batches(
    lengths: Sequence[int], batch_tokens: int, one_length: bool = True
) -> list[list[int]]:
    """Indices grouped into batches of at most batch_tokens padded tokens, longest first.

    With ``one_length``, sequences of one length fill batches of their own, which need no
    padding mask (ESM-2's fastest attention kernels take none) and waste no work on padding
    (DNABERT-S ran 5 % faster on them). What is left of each length when it cannot fill an
    eighth of a batch is packed with other lengths, padded: many tiny batches would leave the
    GPU idle between launches. Without it every sequence is packed by length, padded. A
    sequence longer than the budget gets a batch of its own."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, length in enumerate(lengths):
        by_length[length].append(i)
    batches: list[list[int]] = []
    leftovers: list[int] = []
    for length in sorted(by_length, reverse=True):
        group, rows = by_length[length], max(1, batch_tokens // length)
        for start in range(0, len(group), rows):
            part = group[start : start + rows]
            if one_length and (len(part) == rows or len(part) * length * 8 >= batch_tokens):
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


@dataclass
class Queued:
    """Batches handed to the device and not yet waited for."""

    order: list[int]  # input row of each output row, in the order the batches ran
    outputs: list[torch.Tensor]  # per batch, possibly still being computed on the GPU
    rows: int
    dim: int

    def gather(self, dtype: torch.dtype = torch.float32, pinned: bool = False) -> torch.Tensor:
        """Features (rows, dim) on the CPU in input order, as ``dtype``; waits for the device.
        The rows are put in order and converted where they were computed, so from a GPU the
        host only copies them. ``pinned``: into page-locked memory (a default-size shard's
        DNABERT-S features, 64 MB: 1.2 ms instead of 40 ms into ordinary memory, H200); the
        allocator keeps such memory for reuse, so it suits small results."""
        if not self.outputs:
            return torch.empty(self.rows, self.dim, dtype=dtype)
        ran = torch.cat([output.to(dtype) for output in self.outputs])
        position = torch.empty(self.rows, dtype=torch.long)  # of each input row in ``ran``
        position[torch.tensor(self.order)] = torch.arange(self.rows)
        ordered = ran[position.to(ran.device)]
        if pinned and ordered.is_cuda:
            return torch.empty(ordered.shape, dtype=dtype, pin_memory=True).copy_(ordered)
        return ordered.cpu()

    def extend(self, other: Queued) -> None:
        """Append the batches of the rows that follow this one's in the input."""
        self.order.extend(self.rows + i for i in other.order)
        self.outputs.extend(other.outputs)
        self.rows += other.rows


def queue_tokens(
    tokens: list[list[int]],
    run: BatchFn,
    dim: int,
    batch_tokens: int,
    progress: StageProgress,
    one_length: bool = True,
) -> Queued:
    """Batch the tokens and run the batches. ``run`` may leave its result on the GPU:
    nothing waits for the device here, so the host can queue another model's batches (or
    go on with other work) while the GPU works."""
    budget = [batch_tokens]
    order: list[int] = []
    outputs: list[torch.Tensor] = []
    for batch in plan_batches([len(t) for t in tokens], batch_tokens, one_length):
        outputs.append(_run_with_oom_retry([tokens[i] for i in batch], run, budget))
        order.extend(batch)
        progress.advance(len(batch))
    return Queued(order, outputs, len(tokens), dim)


def default_batch_tokens(device: torch.device, hidden: int) -> int:
    """Tokens per batch: fixed on CPU; on a GPU sized from free memory (about 48 bytes of
    activations per token and hidden unit at the widest point, half the free memory)."""
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1024, min(MAX_GPU_BATCH_ACTIVATIONS // hidden, free // 2 // (hidden * 48))))


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

    @functools.cached_property
    def model_sha256(self) -> str:
        """The model files' checksum, for the record in each output (computed once)."""
        return sha256(self.path)

    @property
    def label(self) -> str:
        return "DNABERT-S" if self.kind == "dnabert" else "ESM-2"

    def tokenize(self, sequences: list[str]) -> list[list[int]]:
        if self.tokenizer is not None:
            return self.tokenizer.encode_batch(sequences)
        return [tokenize_protein(s) for s in sequences]

    def run(self, tokens: list[list[int]]) -> torch.Tensor:
        """Features of one batch, left on the model's device."""
        if self.tokenizer is not None:
            return dnabert_mean_embeddings(self.model, tokens, self.tokenizer.pad_id, False)
        return esm2_mean_embeddings(self.model, tokens, to_cpu=False)

    def queue(
        self, tokens: list[list[int]], batch_tokens: int, progress: StageProgress | None = None
    ) -> Queued:
        """queue_tokens with this model."""
        progress = progress or StageProgress(self.label, 0, "frames", enabled=False)
        return queue_tokens(tokens, self.run, self.dim, batch_tokens, progress)


def warm_up(loaded: LoadedModel) -> None:
    """Run what --compile compiles once, at realistic sizes (the compiler picks its kernel
    settings from the first shapes it sees), with and without padding. The length is a prime
    and the row count odd: a size equal to a model dimension would be tied to it by the
    compiler, and a later batch without that coincidence would compile again."""
    length = 131
    # about a full batch, as most batches are
    rows = max(61, default_batch_tokens(loaded.device, loaded.dim) // length) | 1
    vocab = loaded.model.config.vocab_size if loaded.kind == "dnabert" else 24
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (rows, length), generator=gen).tolist()
    ragged = [row[: length - i % 7] for i, row in enumerate(ids)]
    with torch.inference_mode():
        for batch in (ids, ragged):
            loaded.run(batch).cpu()


def load_model(
    kind: str, path: Path, device: str = "auto", precision: str = "auto", compile: bool = False
) -> LoadedModel:
    """Load a model for embedding. ``compile``: the transformer layers through torch.compile,
    warmed up here, so the load time includes the compile."""
    dev, prec = setup(device, precision)
    started = time.perf_counter()
    if kind == "dnabert":
        model, tokenizer = load_dnabert(path, dev, DTYPES[prec])
    else:
        # from the ready-to-load copy `models prepare` made, if there is one
        model, tokenizer = load_esm2(path, dev, DTYPES[prec]), None
    loaded = LoadedModel(kind, Path(path), model, tokenizer, dev, prec, 0.0)
    if compile:
        model.compiled = True
        warm_up(loaded)
    # The model, and with compile the compiler's state, live as long as the process: frozen,
    # they are no longer walked by every full garbage collection (~465,000 objects after a
    # DNABERT-S compile; such a collection stopped every thread for 210-360 ms mid-run).
    gc.collect()
    gc.freeze()
    loaded.load_seconds = time.perf_counter() - started
    log.info("%s loaded from %s in %.1f s", kind, path, loaded.load_seconds)
    return loaded


OUTPUT_SUFFIX = {"dnabert": ".dnabert.safetensors", "esm2": ".esm2.safetensors"}
INPUT_SUFFIX = {"dnabert": ".nucleotide.fa", "esm2": ".protein.faa"}


def output_path(kind: str, input_path: Path, outdir: Path) -> Path:
    name = Path(input_path).name
    suffix = INPUT_SUFFIX[kind]
    prefix = name[: -len(suffix)] if name.endswith(suffix) else fasta_stem(input_path)
    return Path(outdir) / f"{prefix}{OUTPUT_SUFFIX[kind]}"


@dataclass
class Frames:
    """Frames of a prepared file, read and tokenized: what the GPU needs."""

    path: Path
    ids: list[str]
    tokens: list[list[int]]
    read_seconds: float


def read_frames(loaded: LoadedModel, input_path: Path) -> Frames:
    """Read and tokenize a prepared file; an empty one (no frame kept) gives no frames."""
    started = time.perf_counter()
    nucleotide = loaded.kind == "dnabert"
    records = list(read_fasta(Path(input_path), nucleotide=nucleotide, allow_empty=True))
    tokens = loaded.tokenize([r.sequence for r in records])
    return Frames(Path(input_path), [r.id for r in records], tokens,
                  time.perf_counter() - started)  # fmt: skip


def embed_frames(
    loaded: LoadedModel,
    frames: Frames,
    batch_tokens: int,
    show_progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Features of the frames, as ``dtype`` on the CPU."""
    name = f"{loaded.label} {frames.path.name}"
    with StageProgress(name, len(frames.tokens), "frames", show_progress) as progress:
        return loaded.queue(frames.tokens, batch_tokens, progress).gather(dtype)


def write_frames(
    loaded: LoadedModel,
    frames: Frames,
    features: torch.Tensor,
    batch_tokens: int,
    embed_seconds: float,
    outdir: Path,
    feature_dtype: str = "float16",
) -> Path:
    """Write the features with their IDs and a record of the run; returns the file."""
    started = time.perf_counter()
    tokens = sum(len(t) for t in frames.tokens)
    info = {
        "stage": f"embed-{'dna' if loaded.kind == 'dnabert' else 'protein'}",
        "model": str(loaded.path),
        "model_sha256": loaded.model_sha256,
        "device": str(loaded.device),
        "precision": loaded.precision,
        "compiled": loaded.model.compiled,
        "batch_tokens": batch_tokens,
        "frames": len(frames.ids),
        "tokens": tokens,
        "load_seconds": round(loaded.load_seconds, 3),
        "read_seconds": round(frames.read_seconds, 3),
        "embed_seconds": round(embed_seconds, 3),
        "seconds": round(frames.read_seconds + embed_seconds, 3),  # writing excluded
    }
    out = output_path(loaded.kind, frames.path, outdir)
    Path(outdir).mkdir(parents=True, exist_ok=True)
    write_features(out, frames.ids, features, {"info": json.dumps(info)}, dtype=feature_dtype)
    seconds = frames.read_seconds + embed_seconds + time.perf_counter() - started
    log.info(
        "%s: %d frames, %d tokens in %.1f s (%.0f tokens/s) -> %s",
        loaded.label, len(frames.ids), tokens, seconds, tokens / max(seconds, 1e-9), out,
    )  # fmt: skip
    return out


def embed_while_reading(
    loaded: LoadedModel,
    input_path: Path,
    batch_tokens: int,
    show_progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[Frames, torch.Tensor, float]:
    """read_frames + embed_frames for DNABERT-S, overlapped: a second thread reads the next
    chunk of frames and tokenizes it (in Rust, without the interpreter lock) while this one
    queues the last chunk's batches and the GPU runs them (chunk sizes: FIRST_CHUNK_FRAMES,
    doubling up to LARGEST_CHUNK_FRAMES).

    Returns the frames (read_seconds: the wait for the first chunk, the part of reading and
    tokenizing not hidden behind the model), their features in file order, and the seconds
    of the rest."""
    started = time.perf_counter()
    records = read_fasta(Path(input_path), nucleotide=True, allow_empty=True)

    def next_chunk(size: int) -> tuple[list[Record], list[list[int]]]:
        chunk = list(itertools.islice(records, size))
        return chunk, loaded.tokenize([r.sequence for r in chunk])

    ids: list[str] = []
    tokens: list[list[int]] = []
    queued = Queued([], [], 0, loaded.dim)
    read_seconds: float | None = None  # set when the first chunk arrives
    name = f"{loaded.label} {Path(input_path).name}"
    with (
        StageProgress(name, None, "frames", show_progress) as progress,
        ThreadPoolExecutor(1) as reader,
    ):
        size = FIRST_CHUNK_FRAMES
        pending = reader.submit(next_chunk, size)
        while True:
            chunk, chunk_tokens = pending.result()
            if read_seconds is None:
                read_seconds = time.perf_counter() - started
            if not chunk:
                break
            size = min(2 * size, LARGEST_CHUNK_FRAMES)
            pending = reader.submit(next_chunk, size)
            ids.extend(r.id for r in chunk)
            tokens.extend(chunk_tokens)
            queued.extend(loaded.queue(chunk_tokens, batch_tokens, progress))
        # pinned: the copy is on this stage's critical path, and DNABERT-S features are small
        features = queued.gather(dtype, pinned=True)
    frames = Frames(Path(input_path), ids, tokens, read_seconds)
    return frames, features, time.perf_counter() - started - read_seconds


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in the block. Embedding creates many short-lived
    containers (records, token lists) and almost no cycles, yet they trigger collection
    after collection, and each stops every thread, the one queuing GPU batches included:
    100-150 ms of a 2.8 s DNABERT-S pass on the H200 even with the models frozen."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    # The frames are freed when _embed_and_write returns, before the collector resumes: a
    # collection would otherwise walk every record and token list of the file once more.
    with collector_paused():
        return _embed_and_write(
            loaded, input_path, outdir, batch_tokens, feature_dtype, show_progress
        )


def _embed_and_write(
    loaded: LoadedModel,
    input_path: Path,
    outdir: Path,
    batch_tokens: int | None,
    feature_dtype: str,
    show_progress: bool,
) -> Path:
    budget = batch_tokens or default_batch_tokens(loaded.device, loaded.dim)
    dtype = FEATURE_DTYPES[feature_dtype]
    if loaded.kind == "dnabert":
        frames, features, seconds = embed_while_reading(
            loaded, input_path, budget, show_progress, dtype
        )
    else:  # ESM-2 batches sequences of one length together: it needs the whole file first
        frames = read_frames(loaded, input_path)
        started = time.perf_counter()
        features = embed_frames(loaded, frames, budget, show_progress, dtype)
        seconds = time.perf_counter() - started
    return write_frames(loaded, frames, features, budget, seconds, outdir, feature_dtype)
