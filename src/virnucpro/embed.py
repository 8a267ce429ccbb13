"""Stages embed-dna and embed-protein: mean DNABERT-S / ESM-2 features of prepared frames.

One Embedder per model holds VirNucPro's rules for it (input, tokens, pooling, blocks);
embed_file streams a prepared file through it. Both share one loop: tokenize, sort by
length, cut into batches of at most ``batch_tokens`` padded tokens, run the model, put the
rows back in file order. A CUDA out-of-memory error halves the budget and retries the batch.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import logging
import os
import re
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from virnucpro.device import DTYPES, model_dtype, setup
from virnucpro.errors import VirnucproError
from virnucpro.fasta import _open_text, count_records, read_fasta
from virnucpro.features import (
    CHUNK_SIZE,
    FEATURE_DTYPE,
    FEATURE_DTYPES,
    KIND,
    MODEL_SHA256,
    PRECISION,
    UNKNOWN,
    FeatureWriter,
)
from virnucpro.models.compile import compile_model
from virnucpro.models.dnabert import DnaBert
from virnucpro.models.files import sha256
from virnucpro.models.fp8 import to_fp8
from virnucpro.models.load import load_dnabert, load_esm2
from virnucpro.models.tokenizers import PAD_IDX, DnaTokenizer, tokenize_protein
from virnucpro.paths import CHUNK_SIZE_NOTE, features_file
from virnucpro.progress import StageProgress

log = logging.getLogger(__name__)

BatchFn = Callable[[list[list[int]]], torch.Tensor]

CPU_BATCH_TOKENS = 8192
# Largest GPU batch, as tokens x hidden width: 65,536 tokens for ESM-2 3B (the budget of all
# its measurements), 218,453 for DNABERT-S, whose batches are cheap enough that launching
# them held the GPU back (larger batches cut its model time; benchmarks/README.md).
MAX_GPU_BATCH_ACTIVATIONS = 65536 * 2560
# embed-dna reads and tokenizes its input in chunks of frames, each while the GPU runs the ones
# before. The first is small, so the GPU starts early; each next one is twice as large (up to
# the last size), which keeps the GPU fed (a chunk is read in less time than the model
# takes on it) and lets longer runs of one length fill batches of their own.
FIRST_CHUNK_FRAMES = 1024
LARGEST_CHUNK_FRAMES = 32768
# embed-protein reads, batches and writes its input in blocks of this many frames, so that its
# memory is bounded by a block, not by the file (ESM-2 3B features of a block: 335 MB as
# float16). Batches of one length need many frames to fill: a block holds as many as
# possible, and a Nextflow shard of the default size (20 Mbp, ~32,000 frames) fits in one.
ESM_BLOCK_FRAMES = 65536
# The original VirNucPro averages at most this many residues per protein.
MEAN_WINDOW = 1024
# embed-protein refuses input whose every sequence is only these letters (a nucleotide file
# given by mistake), if it holds at least MIN_NUCLEOTIDE_LETTERS of them: a few short
# peptides such as 'GA' or 'TAG' are no evidence.
_NOT_NUCLEOTIDE = re.compile(r"[^ACGTUNacgtun]")
MIN_NUCLEOTIDE_LETTERS = 100
_CHUNK_SIZE_FIELD = re.compile(
    r"(?:^|\s)" + CHUNK_SIZE_NOTE.format(chunk_size="([0-9]+)") + r"(?:\s|$)"
)
_PRECISION_OF = {dtype: name for name, dtype in DTYPES.items()}


def plan_batches(
    lengths: Sequence[int], batch_tokens: int, one_length: bool = True
) -> list[list[int]]:
    """Indices grouped into batches of at most batch_tokens padded tokens, longest first.

    With ``one_length``, sequences of one length fill batches of their own, which need no
    padding mask (ESM-2's fastest attention kernels take none) and waste no work on padding
    (DNABERT-S ran faster on them). What is left of each length when it cannot fill an
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
        host only copies them. ``pinned``: into page-locked memory, much faster to copy into than
        ordinary memory; the allocator keeps such memory for reuse, so it suits small
        results."""
        if not self.outputs:
            return torch.empty(self.rows, self.dim, dtype=dtype)
        ran = torch.cat([output.to(dtype) for output in self.outputs])
        position = torch.empty(self.rows, dtype=torch.long)  # of each input row in ``ran``
        position[torch.tensor(self.order)] = torch.arange(self.rows)
        ordered = ran[position.to(ran.device)]
        if pinned and ordered.is_cuda:
            return torch.empty(ordered.shape, dtype=dtype, pin_memory=True).copy_(ordered)
        return ordered.cpu()


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


def default_batch_tokens(device: torch.device, hidden: int, concurrent: int = 1) -> int:
    """Tokens per batch: fixed on CPU; on a GPU sized from free memory (about 48 bytes of
    activations per token and hidden unit at the widest point, half the free memory, shared
    by ``concurrent`` batches in flight at once)."""
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    free, _ = torch.cuda.mem_get_info(device)
    budget = free // 2 // concurrent // (hidden * 48)
    return int(max(1024, min(MAX_GPU_BATCH_ACTIVATIONS // hidden, budget)))


class Embedder(ABC):
    """A loaded model with VirNucPro's rules for it: which input it reads, how sequences are
    tokenized, batched, run and pooled into one feature row each, and in which blocks a file
    is streamed. One subclass per model."""

    kind: ClassVar[str]  # "dnabert" or "esm2": the features' model_kind
    label: ClassVar[str]  # for logs and progress
    stage: ClassVar[str]  # the CLI stage
    nucleotide: ClassVar[bool]  # reads nucleotide FASTA (else protein)
    pinned: ClassVar[bool]  # gathered features go to page-locked memory (small results)

    def __init__(
        self,
        model: nn.Module,
        path: Path | None = None,
        device: torch.device | None = None,
        precision: str | None = None,
    ) -> None:
        self.model = model
        self.path = Path(path) if path is not None else None
        parameter = next(model.parameters())
        self.device = device if device is not None else parameter.device
        self.precision = precision or _PRECISION_OF.get(parameter.dtype, str(parameter.dtype))
        self.load_seconds = 0.0
        self.compiled = False  # set by load_embedder's compile

    @classmethod
    @abstractmethod
    def load(cls, path: Path, device: torch.device, precision: str) -> Embedder:
        """The model at ``path`` on ``device`` in ``precision`` (a key of DTYPES, or fp8)."""

    @classmethod
    def runs_at(cls, precision: str) -> str:
        """The precision this model runs at when ``precision`` is asked for: the same."""
        return precision

    @property
    @abstractmethod
    def dim(self) -> int:
        """Features per row."""

    @property
    @abstractmethod
    def warm_up_vocab(self) -> int:
        """warm_up draws token ids from 5 up to (not including) this."""

    @classmethod
    @abstractmethod
    def block_sizes(cls) -> Iterator[int]:
        """Frames per block, block after block, as embed_file streams a file."""

    @abstractmethod
    def tokenize(self, sequences: list[str]) -> list[list[int]]:
        """Token ids of each sequence."""

    @abstractmethod
    def run(self, tokens: list[list[int]]) -> torch.Tensor:
        """Features (B, dim) of one batch, float32, left on the model's device (the caller can
        queue more work before waiting)."""

    @functools.cached_property
    def model_sha256(self) -> str:
        """The model files' checksum, for the record in each output (computed once)."""
        return sha256(self.path)

    def queue(
        self, tokens: list[list[int]], batch_tokens: int, progress: StageProgress | None = None
    ) -> Queued:
        """queue_tokens with this model."""
        progress = progress or StageProgress(self.label, 0, "frames", enabled=False)
        return queue_tokens(tokens, self.run, self.dim, batch_tokens, progress)


def _pad(token_batch: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The token ids as one (B, longest) array padded with pad_id, and their lengths."""
    lengths = np.array([len(ids) for ids in token_batch])
    padded = np.full((len(token_batch), lengths.max()), pad_id, dtype=np.int64)
    for row, ids in zip(padded, token_batch, strict=True):
        row[: len(ids)] = ids
    return padded, lengths


def _to_device(device: torch.device, *host: torch.Tensor) -> list[torch.Tensor]:
    if device.type == "cuda":
        # pinned and non-blocking: the host goes on to the next batch while this one runs
        # (a copy from ordinary memory would wait for the GPU to finish its queue)
        host = tuple(tensor.pin_memory() for tensor in host)
    return [tensor.to(device, non_blocking=True) for tensor in host]


class DnaBertEmbedder(Embedder):
    """DNABERT-S on nucleotide frames: the mean of the last hidden state over every real token,
    [CLS] and [SEP] included (VirNucPro's rule)."""

    kind, label, stage = "dnabert", "DNABERT-S", "embed-dna"
    nucleotide = True
    pinned = True  # the copy is on the critical path, and DNABERT-S features are small

    def __init__(
        self,
        model: DnaBert,
        tokenizer: DnaTokenizer,
        path: Path | None = None,
        device: torch.device | None = None,
        precision: str | None = None,
    ) -> None:
        super().__init__(model, path, device, precision)
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, path: Path, device: torch.device, precision: str) -> DnaBertEmbedder:
        precision = cls.runs_at(precision)
        model, tokenizer = load_dnabert(path, device, DTYPES[precision])
        return cls(model, tokenizer, path, device, precision)

    @classmethod
    def runs_at(cls, precision: str) -> str:
        """fp8 is ESM-2's: DNABERT-S runs at bf16 under it (about 5% of the compute, too
        little for FP8 to pay), and its features record bf16."""
        if precision != "fp8":
            return precision
        log.info("DNABERT-S runs at bf16 under --precision fp8 (FP8 is for ESM-2 only)")
        return "bf16"

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def warm_up_vocab(self) -> int:
        return self.model.config.vocab_size

    @classmethod
    def block_sizes(cls) -> Iterator[int]:
        size = FIRST_CHUNK_FRAMES
        while True:
            yield size
            size = min(2 * size, LARGEST_CHUNK_FRAMES)

    def tokenize(self, sequences: list[str]) -> list[list[int]]:
        return self.tokenizer.encode_batch(sequences)

    def run(self, tokens: list[list[int]]) -> torch.Tensor:
        device = self.device
        input_ids, lengths = _pad(tokens, self.tokenizer.pad_id)
        mask = np.arange(lengths.max())[None, :] < lengths[:, None]
        # every tensor made in inference mode, whoever calls: with --compile, a CPU batch's
        # tensors (no copy to a device) would otherwise compile the encoder a second time
        with torch.inference_mode():
            ids, keep = _to_device(device, torch.from_numpy(input_ids), torch.from_numpy(mask))
            hidden = self.model(ids, keep, padded=bool(lengths.min() != lengths.max()))
            weights = (keep / keep.sum(1, keepdim=True)).float()
            return torch.bmm(weights[:, None, :], hidden.float()).squeeze(1)


class Esm2Embedder(Embedder):
    """ESM-2 on protein frames: per protein, the mean last-layer representation over residues
    1..min(L, 1024), BOS and EOS excluded. The model sees the whole sequence; the 1024 limit
    applies to the mean only (the original VirNucPro rule)."""

    kind, label, stage = "esm2", "ESM-2", "embed-protein"
    nucleotide = False
    pinned = False

    @classmethod
    def load(cls, path: Path, device: torch.device, precision: str) -> Esm2Embedder:
        """fp8: loaded in bf16, then every layer's four linear layers swapped for FP8 ones
        (models/fp8.py); the rest of the model runs in bf16."""
        # from the ready-to-load copy `models prepare` made, if there is one
        model = load_esm2(path, device, model_dtype(precision))
        if precision == "fp8":
            to_fp8(model)
        return cls(model, path, device, precision)

    @property
    def dim(self) -> int:
        return self.model.config.embed_dim

    @property
    def warm_up_vocab(self) -> int:
        return 24  # residue letters only

    @classmethod
    def block_sizes(cls) -> Iterator[int]:
        while True:
            yield ESM_BLOCK_FRAMES

    def tokenize(self, sequences: list[str]) -> list[list[int]]:
        return [tokenize_protein(s) for s in sequences]

    def run(self, tokens: list[list[int]]) -> torch.Tensor:
        device = self.device
        padded, lengths = _pad(tokens, PAD_IDX)
        if lengths.min() < 3:
            raise ValueError("every token list needs BOS, at least one residue and EOS")
        with torch.inference_mode():
            (ids,) = _to_device(device, torch.from_numpy(padded))
            hidden = self.model(ids, bool(lengths.min() != lengths.max()))
            # mean weights made on the device, from the tokens: no other copy to the GPU
            window = (ids.ne(PAD_IDX).sum(1, keepdim=True) - 2).clamp(max=MEAN_WINDOW)
            positions = torch.arange(padded.shape[1], device=device)
            weights = ((positions >= 1) & (positions <= window)) / window
            # weighted sum in float32: (B, 1, T) @ (B, T, D)
            return torch.bmm(weights.float()[:, None, :], hidden.float()).squeeze(1)


EMBEDDERS: dict[str, type[Embedder]] = {"dnabert": DnaBertEmbedder, "esm2": Esm2Embedder}


def warm_up(embedder: Embedder) -> None:
    """Run what --compile compiles once, at realistic sizes (the compiler picks its kernel
    settings from the first shapes it sees), with and without padding. The length is a prime
    and the row count odd: a size equal to a model dimension would be tied to it by the
    compiler, and a later batch without that coincidence would compile again."""
    length = 131
    # about a full batch, as most batches are
    rows = max(61, default_batch_tokens(embedder.device, embedder.dim) // length) | 1
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, embedder.warm_up_vocab, (rows, length), generator=gen).tolist()
    ragged = [row[: length - i % 7] for i, row in enumerate(ids)]
    with torch.inference_mode():
        for batch in (ids, ragged):
            embedder.run(batch).cpu()


def load_embedder(
    kind: str,
    path: Path,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
    simulate_fp8: bool = False,
) -> Embedder:
    """Load a model for embedding: "dnabert" (a DNABERT-S directory) or "esm2" (an ESM-2
    checkpoint, from the ready-to-load copy `models prepare` made, if there is one).
    ``precision`` as device.select_precision takes it; fp8 is ESM-2's (DNABERT-S runs bf16),
    and on the CPU only with ``simulate_fp8`` (check-precision).
    ``compile``: the model's compiled parts through torch.compile (models/compile.py), warmed
    up here, so the load time includes the compile (fp8's kernels likewise)."""
    if kind not in EMBEDDERS:
        raise ValueError(f"unknown model kind {kind!r}")
    dev, prec = setup(device, EMBEDDERS[kind].runs_at(precision), simulate_fp8)
    started = time.perf_counter()
    embedder = EMBEDDERS[kind].load(path, dev, prec)
    if compile:
        compile_model(embedder.model)
        embedder.compiled = True
    # fp8's Triton kernels (models/fp8_kernels.py) are compiled at their first use: warmed up
    # here too, so that predict's two lanes never compile them at once mid-run
    if compile or (prec == "fp8" and dev.type == "cuda"):
        warm_up(embedder)
    # The model, and with compile the compiler's state, live as long as the process: frozen,
    # they are no longer walked by every full garbage collection (a compiled model leaves a
    # great many tracked objects, and such a collection stops every thread mid-run).
    gc.collect()
    gc.freeze()
    embedder.load_seconds = time.perf_counter() - started
    log.info("%s loaded from %s in %.1f s", kind, path, embedder.load_seconds)
    return embedder


def prepared_chunk_size(path: Path) -> int | None:
    """The chunk size prepare wrote into the prepared file's headers (`>ID chunk_size=500`,
    read from the first), or None: a file written otherwise, or empty (no frame kept)."""
    with _open_text(Path(path)) as handle:
        first = handle.readline()
    found = _CHUNK_SIZE_FIELD.search(first[1:]) if first.startswith(">") else None
    return int(found.group(1)) if found else None


def check_output(kind: str, input_path: Path, outdir: Path) -> Path:
    """The feature file's path, after the checks that can be made before any embedding:
    the output directory is a directory (or can be made) and writable, and the output path
    is not a directory. Creates nothing (a failed check leaves no empty directory)."""
    outdir = Path(outdir)
    out = features_file(kind, input_path, outdir)
    existing = outdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise VirnucproError(f"{existing}: not a directory (output directory {outdir})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VirnucproError(f"{existing}: cannot write there (output directory {outdir})")
    if out.is_dir():
        raise VirnucproError(f"{out}: is a directory, not a feature file")
    return out


def looks_nucleotide(sequences: Sequence[str]) -> bool:
    """Every sequence only A/C/G/T/U/N (either case), and at least MIN_NUCLEOTIDE_LETTERS
    letters in all: a nucleotide file where proteins are expected."""
    letters = 0
    for sequence in sequences:
        if _NOT_NUCLEOTIDE.search(sequence):
            return False
        letters += len(sequence)
    return letters >= MIN_NUCLEOTIDE_LETTERS


def _refuse_nucleotide(path: Path, sequences: Sequence[str]) -> None:
    if looks_nucleotide(sequences):
        raise VirnucproError(
            f"{path}: every sequence is only A/C/G/T/N: nucleotides, not proteins (give "
            "embed-protein the .protein.faa from prepare; --allow-nucleotide-letters embeds "
            "such a file as protein)"
        )


def check_input(kind: str, input_path: Path, allow_nucleotide_letters: bool = False) -> None:
    """Read the input's first block of frames as embedding will (no model needed): a missing,
    empty or malformed file, or a nucleotide file given to embed-protein, is an error before
    a model is loaded. embed_file makes the same checks on the same block."""
    embedder = EMBEDDERS[kind]
    size = next(embedder.block_sizes())
    records = read_fasta(Path(input_path), nucleotide=embedder.nucleotide, allow_empty=True)
    block = [r.sequence for r in itertools.islice(records, size)]
    if not embedder.nucleotide and not allow_nucleotide_letters:
        _refuse_nucleotide(Path(input_path), block)


def provenance(embedder: Embedder, chunk_size: int | None, feature_dtype: str) -> dict[str, str]:
    """What made a feature file, in its metadata: classify compares the two files' records."""
    return {
        KIND: embedder.kind,
        MODEL_SHA256: embedder.model_sha256,
        PRECISION: embedder.precision,
        FEATURE_DTYPE: feature_dtype,
        CHUNK_SIZE: str(chunk_size) if chunk_size else UNKNOWN,
    }


def _info(embedder: Embedder, batch_tokens: int, frames: int, tokens: int,
          read_seconds: float, embed_seconds: float) -> dict:  # fmt: skip
    return {
        "stage": embedder.stage,
        "model": str(embedder.path),
        "model_sha256": embedder.model_sha256,
        "device": str(embedder.device),
        "precision": embedder.precision,
        "compiled": embedder.compiled,
        "batch_tokens": batch_tokens,
        "frames": frames,
        "tokens": tokens,
        "load_seconds": round(embedder.load_seconds, 3),
        "read_seconds": round(read_seconds, 3),
        "embed_seconds": round(embed_seconds, 3),
        "seconds": round(read_seconds + embed_seconds, 3),  # writing excluded
    }


@dataclass
class Streamed:
    """What embed_stream did: frames, tokens, and where the time went."""

    frames: int = 0
    tokens: int = 0
    read_seconds: float = 0.0  # the wait for the first block of frames
    embed_seconds: float = 0.0  # the rest, writing excluded
    write_seconds: float = 0.0


def embed_stream(
    embedder: Embedder,
    input_path: Path,
    batch_tokens: int,
    write: Callable[[list[str], torch.Tensor], None],
    show_progress: bool = True,
    dtype: torch.dtype = torch.float32,
    allow_nucleotide_letters: bool = False,
) -> Streamed:
    """Embed a prepared file block by block (the embedder's block_sizes), handing each block's
    IDs and features (as ``dtype``, in file order) to ``write`` as it is done: memory holds a
    few blocks, never the file. A second thread reads and tokenizes the next block (DNABERT-S's
    tokenizer runs in Rust, without the interpreter lock) while this one queues the last
    block's batches; the block before is gathered and written while the device runs those.
    A file within one block gets exactly the batches of a whole-file pass. For protein input
    the first block is checked not to be nucleotides (unless ``allow_nucleotide_letters``)."""
    started = time.perf_counter()
    path = Path(input_path)
    records = read_fasta(path, nucleotide=embedder.nucleotide, allow_empty=True)
    check = not embedder.nucleotide and not allow_nucleotide_letters

    def next_block(size: int, first: bool) -> tuple[list[str], list[list[int]]]:
        block = list(itertools.islice(records, size))
        sequences = [r.sequence for r in block]
        if first and check:
            _refuse_nucleotide(path, sequences)
        return [r.id for r in block], embedder.tokenize(sequences)

    done = Streamed()
    read_seconds: float | None = None

    def flush(ids: list[str], queued: Queued) -> None:
        features = queued.gather(dtype, pinned=embedder.pinned)
        began = time.perf_counter()
        write(ids, features)
        done.write_seconds += time.perf_counter() - began

    name = f"{embedder.label} {path.name}"
    sizes = embedder.block_sizes()
    with (
        StageProgress(
            name, count_records(path) if show_progress else None, "frames", show_progress
        ) as progress,  # fmt: skip
        ThreadPoolExecutor(1) as reader,
    ):
        pending = reader.submit(next_block, next(sizes), True)
        in_flight: tuple[list[str], Queued] | None = None
        while True:
            ids, tokens = pending.result()
            if read_seconds is None:
                read_seconds = time.perf_counter() - started
            if not ids:
                break
            pending = reader.submit(next_block, next(sizes), False)
            queued = embedder.queue(tokens, batch_tokens, progress)
            done.frames += len(ids)
            done.tokens += sum(len(t) for t in tokens)
            del tokens
            if in_flight is not None:
                flush(*in_flight)
            in_flight = (ids, queued)
        if in_flight is not None:
            flush(*in_flight)
    done.read_seconds = read_seconds
    done.embed_seconds = time.perf_counter() - started - read_seconds - done.write_seconds
    return done


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in the block. Embedding creates many short-lived
    containers (records, token lists) and almost no cycles, yet they trigger collection
    after collection, and each stops every thread, the one queuing GPU batches included
    (a noticeable share of a DNABERT-S pass, even with the models frozen)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def embed_file(
    embedder: Embedder,
    input_path: Path,
    outdir: Path,
    batch_tokens: int | None = None,
    feature_dtype: str = "float16",
    show_progress: bool = True,
    allow_nucleotide_letters: bool = False,
) -> Path:
    """Stage entry: features of every frame of a prepared file, written with their IDs, block
    by block (memory is bounded by a block, not by the file). An empty prepared file (no
    frame kept in the shard) gives a file with zero rows. The output is checked writable
    (its temporary file created) before any frame is embedded.

    ESM-2 refuses a file whose sequences are all nucleotide letters (see looks_nucleotide)
    unless ``allow_nucleotide_letters``."""
    # The frames are freed when _embed_and_write returns, before the collector resumes: a
    # collection would otherwise walk every record and token list of a block once more.
    with collector_paused():
        return _embed_and_write(embedder, input_path, outdir, batch_tokens, feature_dtype,
                                show_progress, allow_nucleotide_letters)  # fmt: skip


def _embed_and_write(
    embedder: Embedder,
    input_path: Path,
    outdir: Path,
    batch_tokens: int | None,
    feature_dtype: str,
    show_progress: bool,
    allow_nucleotide_letters: bool,
) -> Path:
    out = check_output(embedder.kind, input_path, outdir)
    chunk_size = prepared_chunk_size(input_path)  # also: the input can be read
    try:
        Path(outdir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VirnucproError(f"{outdir}: cannot make the output directory ({e.strerror})") from None
    budget = batch_tokens or default_batch_tokens(embedder.device, embedder.dim)
    metadata = provenance(embedder, chunk_size, feature_dtype)
    with FeatureWriter(out, embedder.dim, feature_dtype, metadata) as writer:
        done = embed_stream(embedder, input_path, budget, writer.append, show_progress,
                            FEATURE_DTYPES[feature_dtype], allow_nucleotide_letters)  # fmt: skip
        info = _info(embedder, budget, done.frames, done.tokens, done.read_seconds,
                     done.embed_seconds)  # fmt: skip
        began = time.perf_counter()
        writer.finish({"info": json.dumps(info)})
    seconds = done.read_seconds + done.embed_seconds + done.write_seconds
    _log_written(embedder, done.frames, done.tokens, seconds + time.perf_counter() - began, out)
    return out


def _log_written(embedder: Embedder, frames: int, tokens: int, seconds: float, out: Path) -> None:
    log.info(
        "%s: %d frames, %d tokens in %.1f s (%.0f tokens/s) -> %s",
        embedder.label, frames, tokens, seconds, tokens / max(seconds, 1e-9), out,
    )  # fmt: skip
