"""The torch.compile path (--compile) against the eager one, on the CPU with the demo
models: the same features, and no compile after the load-time warm-up, whatever the batch
lengths and row counts (padded batches, one-length batches, a single long sequence)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from virnucpro.embed import load_embedder
from virnucpro.models.demo import write_demo_models
from virnucpro.paths import DNABERT_DIRNAME
from virnucpro.progress import StageProgress


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    write_demo_models(directory)
    return directory


def token_lists(vocab: range, seed: int) -> list[list[int]]:
    """Mixed lengths, a few repeated often enough to fill one-length batches, and one
    sequence longer than the budget below (a batch of one row)."""
    rng = random.Random(seed)
    lengths = [rng.choice([12, 12, 12, 30, 30]) for _ in range(60)]
    lengths += [rng.randint(3, 50) for _ in range(40)] + [300]
    return [[rng.choice(vocab) for _ in range(n)] for n in lengths]


def features(loaded, tokens: list[list[int]]) -> torch.Tensor:
    with StageProgress("test", len(tokens), "frames", enabled=False) as progress:
        return loaded.queue(tokens, 256, progress).gather()


@pytest.mark.parametrize("kind", ["esm2", "dnabert"])
def test_compiled_matches_eager_and_never_recompiles(models: Path, kind: str) -> None:
    path = models / ("esm2.pt" if kind == "esm2" else DNABERT_DIRNAME)
    eager = load_embedder(kind, path, "cpu", "fp32")
    # ids that are neither padding nor special: ESM-2 residues, DNABERT-S BPE pieces
    vocab = range(4, 24) if kind == "esm2" else range(5, eager.model.config.vocab_size)
    torch._dynamo.reset()
    graphs_before = counters["stats"]["unique_graphs"]
    compiled = load_embedder(kind, path, "cpu", "fp32", compile=True)
    graphs_after_warm_up = counters["stats"]["unique_graphs"]
    # ESM-2: one compiled part (projection + rotation) shared by every layer, padded or not;
    # DNABERT-S: the whole encoder, once for padded batches and once for unpadded ones
    assert graphs_after_warm_up - graphs_before == (1 if kind == "esm2" else 2)
    for seed in range(3):
        tokens = token_lists(vocab, seed)
        expected, got = features(eager, tokens), features(compiled, tokens)
        assert (got - expected).abs().max().item() <= 1e-5
    assert counters["stats"]["unique_graphs"] == graphs_after_warm_up


@pytest.mark.parametrize("kind", ["esm2", "dnabert"])
def test_attention_never_takes_cudnn(models: Path, kind: str, monkeypatch) -> None:
    """cuDNN attention plans anew for every batch shape (up to a second each on the H100):
    attention must run with that backend switched off, switched off once for the process when
    the model is built and never switched back: the switches are process-wide, not per thread,
    so a forward pass that restored them changed them under another thread's (predict's lanes;
    models/attention.py)."""
    cudnn_allowed: list[bool] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        cudnn_allowed.append(torch.backends.cuda.cudnn_sdp_enabled())
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    path = models / ("esm2.pt" if kind == "esm2" else DNABERT_DIRNAME)
    torch.backends.cuda.enable_cudnn_sdp(True)  # as a fresh process starts
    loaded = load_embedder(kind, path, "cpu", "fp32")
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    features(loaded, [[5, 6, 7, 8], [5, 6, 7]])
    assert cudnn_allowed and not any(cudnn_allowed)
    assert not torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.parametrize("kind", ["esm2", "dnabert"])
def test_embedding_runs_with_the_model_frozen_and_the_collector_paused(
    models: Path, kind: str, tmp_path: Path
) -> None:
    """A full garbage collection walks every object, the loaded (and compiled) model's
    included, and stops every thread: the model is frozen at load, and no collection runs
    while a file is embedded."""
    import gc

    from virnucpro.embed import embed_file

    path = models / ("esm2.pt" if kind == "esm2" else DNABERT_DIRNAME)
    gc.unfreeze()
    loaded = load_embedder(kind, path, "cpu", "fp32")
    assert gc.get_freeze_count() > 0
    collector_enabled: list[bool] = []
    run = loaded.run

    def recording_run(tokens: list[list[int]]) -> torch.Tensor:
        collector_enabled.append(gc.isenabled())
        return run(tokens)

    loaded.run = recording_run  # the instance attribute shadows the method
    fasta = tmp_path / ("x.protein.faa" if kind == "esm2" else "x.nucleotide.fa")
    fasta.write_text(">a\nMKV\n>b\nMKVLA\n" if kind == "esm2" else ">a\nACGT\n>b\nACGTAC\n")
    embed_file(loaded, fasta, tmp_path / "out", 64, show_progress=False)
    assert collector_enabled and not any(collector_enabled)
    assert gc.isenabled()


@pytest.mark.parametrize("kind", ["esm2", "dnabert"])
def test_no_collection_walks_the_frames_of_an_embedded_file(
    models: Path, kind: str, tmp_path: Path
) -> None:
    """The records and token lists of a file are freed before the collector resumes: with
    them alive, the first allocation after the pass would start a collection."""
    import gc

    from virnucpro.embed import embed_file

    path = models / ("esm2.pt" if kind == "esm2" else DNABERT_DIRNAME)
    loaded = load_embedder(kind, path, "cpu", "fp32")
    fasta = tmp_path / ("x.protein.faa" if kind == "esm2" else "x.nucleotide.fa")
    letters = "MKVLA" if kind == "esm2" else "ACGT"
    fasta.write_text("".join(f">s{i}\n{letters * (1 + i % 5)}\n" for i in range(3000)))
    collections: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(record)
    try:
        embed_file(loaded, fasta, tmp_path / "out", 256, show_progress=False)
        assert collections == []
        [[i] for i in range(100)]  # allocations after the pass start no collection either
        assert collections == []
    finally:
        gc.callbacks.remove(record)
