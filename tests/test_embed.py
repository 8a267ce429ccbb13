"""The embedding loop without a model: batch planning, out-of-memory halving, and the
feature files that carry frame IDs with their rows; then embed_file with the demo models:
block by block, checked before it embeds, provenance recorded, nucleotides refused."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import stat

import pytest
import torch
from safetensors.torch import save_file

from virnucpro.embed import collector_paused, plan_batches, queue_tokens
from virnucpro.errors import VirnucproError
from virnucpro.features import read_features, write_features
from virnucpro.progress import StageProgress

# --------------------------------------------------------------------------------------
# plan_batches
# --------------------------------------------------------------------------------------

LENGTH_CASES = [
    ([], 100),
    ([7], 3),  # a sequence longer than the budget gets a batch of its own
    ([5, 5, 5, 5], 20),
    ([5, 5, 5, 5], 19),
    ([1, 200, 3, 200, 50, 2], 100),
    ([10] * 33, 10),
    *(
        ([rng.randint(1, 300) for _ in range(rng.randint(1, 400))], budget)
        for rng, budget in ((random.Random(seed), b) for seed, b in enumerate([64, 500, 4096]))
    ),
]


@pytest.mark.parametrize("one_length", [True, False])
@pytest.mark.parametrize(("lengths", "budget"), LENGTH_CASES)
def test_plan_batches(lengths, budget, one_length):
    batches = plan_batches(lengths, budget, one_length)
    order = [i for batch in batches for i in batch]
    assert sorted(order) == list(range(len(lengths)))  # every index exactly once
    assert all(batches)
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == longest  # each batch starts with its longest
        assert len(batch) == 1 or len(batch) * longest <= budget, batch
    firsts = [lengths[batch[0]] for batch in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest batches first
    if not one_length:  # packed by length: each batch holds as many rows as fit
        for batch in batches[:-1]:
            assert (len(batch) + 1) * lengths[batch[0]] > budget


def test_plan_batches_one_length():
    # 30 of length 10 and 3 of length 9, budget 100: three full batches of 10s, and the 9s
    # (27 tokens, over an eighth of the budget) in a batch of their own
    lengths = [10] * 30 + [9] * 3
    assert plan_batches(lengths, 100) == [list(range(0, 10)), list(range(10, 20)),
                                          list(range(20, 30)), [30, 31, 32]]  # fmt: skip
    # a leftover 10 and a 9 (each under an eighth of the budget) are packed together
    assert plan_batches([10] * 11 + [9], 100) == [list(range(0, 10)), [10, 11]]
    # three leftover 10s (30 tokens) fill an eighth: a batch of their own
    assert plan_batches([10] * 13 + [9], 100) == [list(range(0, 10)), [10, 11, 12], [13]]
    # without one_length the 10s and 9s share batches as they come
    assert plan_batches([10] * 13 + [9] * 2, 100, one_length=False) == [
        list(range(0, 10)), [10, 11, 12, 13, 14]]  # fmt: skip
    assert plan_batches([10] * 9 + [9] * 3, 100, one_length=False) == [
        [*range(0, 9), 9], [10, 11]]  # fmt: skip


# --------------------------------------------------------------------------------------
# queue_tokens: row order and CUDA out-of-memory halving, with a fake model
# --------------------------------------------------------------------------------------


def sequences(n: int, seed: int) -> list[list[int]]:
    """Token lists whose first token is their index, of varied lengths."""
    rng = random.Random(seed)
    return [[i] * rng.randint(1, 40) for i in range(n)]


class FakeModel:
    """Row i of the output encodes its sequence: (first token, length). Raises CUDA OOM
    when a call holds more than ``limit`` padded tokens (rows x longest)."""

    def __init__(self, limit: float = math.inf) -> None:
        self.limit = limit
        self.calls: list[int] = []  # padded tokens of every successful call
        self.ooms = 0

    def __call__(self, batch: list[list[int]]) -> torch.Tensor:
        padded = len(batch) * max(len(t) for t in batch)
        if padded > self.limit:
            self.ooms += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        self.calls.append(padded)
        return torch.tensor([[t[0], len(t)] for t in batch], dtype=torch.float32)


def embed(tokens: list[list[int]], model: FakeModel, budget: int) -> torch.Tensor:
    progress = StageProgress("fake", len(tokens), "frames", enabled=False)
    with progress:
        out = queue_tokens(tokens, model, 2, budget, progress).gather()
    assert progress.done == len(tokens)
    return out


def expected(tokens: list[list[int]]) -> torch.Tensor:
    return torch.tensor([[t[0], len(t)] for t in tokens], dtype=torch.float32)


@pytest.mark.parametrize("budget", [1, 40, 200, 10_000])
def test_queue_tokens_returns_rows_in_input_order(budget):
    tokens = sequences(150, seed=budget)
    model = FakeModel()
    assert torch.equal(embed(tokens, model, budget), expected(tokens))
    assert model.ooms == 0


@pytest.mark.parametrize(("budget", "limit"), [(2000, 500), (2000, 41), (800, 799), (5000, 64)])
def test_queue_tokens_halves_on_oom_and_keeps_order(budget, limit):
    tokens = sequences(150, seed=limit)
    reference = embed(tokens, FakeModel(), budget)
    model = FakeModel(limit)
    out = embed(tokens, model, budget)
    planned = plan_batches([len(t) for t in tokens], budget)
    if any(len(b) * len(tokens[b[0]]) > limit for b in planned):
        assert model.ooms > 0  # the budget really was too big
    assert torch.equal(out, reference)
    assert torch.equal(out, expected(tokens))
    assert max(model.calls) <= limit


def test_oom_budget_is_halved_only_as_far_as_needed():
    tokens = [[i] * (5 + i % 3) for i in range(40)]  # 40 sequences of 5-7 tokens
    budget, limit = 100, 40
    model = FakeModel(limit)
    embed(tokens, model, budget)
    # 100 -> 50 -> 25 fits; two halvings, after which nothing should OOM again
    assert model.ooms <= math.ceil(math.log2(budget / limit))
    # By hand: the 7-token group (13 sequences) runs first: 13x7=91 OOMs -> budget 45,
    # 6x7=42 OOMs -> budget 21, which then holds 3 rows of 7, 3 of 6, 4 of 5. Calls:
    # ceil(13/3) + ceil(13/3) + ceil(14/4) = 5 + 5 + 4 = 14, not one sequence per call.
    assert model.ooms == 2
    assert len(model.calls) == 14


def test_single_sequence_that_does_not_fit_is_an_error():
    model = FakeModel(limit=30)
    with pytest.raises(VirnucproError, match="single sequence of 31 tokens"):
        embed([[0] * 31], model, 1000)


def test_long_sequence_among_short_ones_that_does_not_fit_is_an_error():
    tokens = [[i] * 5 for i in range(20)] + [[20] * 50]
    with pytest.raises(VirnucproError, match="out of GPU memory"):
        embed(tokens, FakeModel(limit=49), 1000)


def test_queue_tokens_without_sequences():
    out = embed([], FakeModel(), 100)
    assert out.shape == (0, 2)


def test_queued_rows_gather_in_input_order_as_any_dtype():
    """Queued batches gather in input order, converted to the feature file's type."""
    tokens = sequences(150, seed=7)
    quiet = StageProgress("fake", 0, "frames", enabled=False)
    whole = queue_tokens(tokens, FakeModel(), 2, 40, quiet)
    assert whole.rows == len(tokens)
    assert torch.equal(whole.gather(), expected(tokens))
    half = whole.gather(torch.float16)
    assert half.dtype == torch.float16
    assert torch.equal(half, expected(tokens).half())
    empty = queue_tokens([], FakeModel(), 2, 40, quiet).gather(torch.float16)
    assert empty.shape == (0, 2) and empty.dtype == torch.float16


# --------------------------------------------------------------------------------------
# Feature files
# --------------------------------------------------------------------------------------

IDS = [f"seq{i}_chunk_{i % 3 + 1}{'FR'[i % 2]}{i % 3 + 1}" for i in range(37)]


def features(n: int, dim: int = 24) -> torch.Tensor:
    """Values of magnitude 0.01..100 with both signs (float16 keeps them within 1e-3)."""
    g = torch.Generator().manual_seed(n * 1000 + dim)
    magnitude = 10 ** (torch.rand(n, dim, generator=g) * 4 - 2)
    sign = torch.where(torch.rand(n, dim, generator=g) < 0.5, -1.0, 1.0)
    return magnitude * sign


def test_features_round_trip_float32_exact(tmp_path):
    path = tmp_path / "x.esm2.safetensors"
    x = features(len(IDS))
    write_features(path, IDS, x, {"info": json.dumps({"stage": "embed-protein"})}, "float32")
    ids, y, meta = read_features(path)
    assert ids == IDS
    assert y.dtype == torch.float32 and torch.equal(y, x)
    assert json.loads(meta["info"]) == {"stage": "embed-protein"}


def test_features_round_trip_float16_close(tmp_path):
    path = tmp_path / "x.dnabert.safetensors"
    x = features(len(IDS))
    write_features(path, IDS, x, {}, "float16")
    ids, y, _ = read_features(path)
    assert ids == IDS
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert ((y - x).abs() <= 1e-3 * x.abs()).all()


def test_features_float16_is_half_the_size(tmp_path):
    x = features(200, 256)
    ids = [f"f{i}" for i in range(200)]
    write_features(tmp_path / "a.safetensors", ids, x, {}, "float16")
    write_features(tmp_path / "b.safetensors", ids, x, {}, "float32")
    small, big = ((tmp_path / n).stat().st_size for n in ("a.safetensors", "b.safetensors"))
    assert small < 0.6 * big


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_features_zero_rows(tmp_path, dtype):
    path = tmp_path / "empty.safetensors"
    write_features(path, [], torch.zeros(0, 48), {}, dtype)
    ids, y, _ = read_features(path)
    assert ids == [] and tuple(y.shape) == (0, 48)


def test_write_features_needs_one_id_per_row(tmp_path):
    with pytest.raises(ValueError):
        write_features(tmp_path / "x.safetensors", ["a"], torch.zeros(2, 3), {})
    assert list(tmp_path.iterdir()) == []  # nothing written


def good_file(path):
    write_features(path, IDS, features(len(IDS)), {}, "float32")
    return path


def headered(tensor: torch.Tensor, ids: str):
    return lambda p: save_file({"features": tensor}, str(p), {"ids": ids})


CORRUPT = {
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(b"\x00\x01 this is not safetensors " * 10),
    "truncated": lambda p: p.write_bytes(good_file(p).read_bytes()[:-100]),
    "header-only-length": lambda p: p.write_bytes((10**9).to_bytes(8, "little")),
    "no-ids": lambda p: save_file({"features": torch.zeros(2, 3)}, str(p)),
    "no-features": lambda p: save_file({"other": torch.zeros(2, 3)}, str(p), {"ids": '["a","b"]'}),
    "ids-not-json": headered(torch.zeros(2, 3), "a,b"),
    "ids-count": headered(torch.zeros(2, 3), '["a"]'),
    "one-dimensional": headered(torch.zeros(2), '["a","b"]'),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_feature_file_is_a_user_error(case, tmp_path):
    path = tmp_path / "shard_00001.esm2.safetensors"
    CORRUPT[case](path)
    with pytest.raises(VirnucproError, match=str(path)):
        read_features(path)


def test_missing_feature_file_is_a_user_error(tmp_path):
    with pytest.raises(VirnucproError, match="no such file"):
        read_features(tmp_path / "nope.safetensors")


@pytest.mark.parametrize(("total", "expected"), [(None, "DNA: 7 frames"), (9, "DNA: 7/9 frames")])
def test_stage_progress_logs_done_with_or_without_a_total(total, expected, monkeypatch, caplog):
    """Without a terminal, progress is logged; embed-dna reads its input as it goes, so it
    knows no total up front and logs the frames done alone."""
    import virnucpro.progress as progress_module

    monkeypatch.setattr(progress_module, "LOG_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="virnucpro"):
        with StageProgress("DNA", total, "frames") as progress:
            progress.advance(7)
    assert any(record.getMessage().startswith(expected) for record in caplog.records)


# --------------------------------------------------------------------------------------
# collector_paused
# --------------------------------------------------------------------------------------


def test_collector_paused_restores_the_collector_as_it_was():
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("a failed pass")
    assert gc.isenabled()  # re-enabled after an error too
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # paused by the caller: left paused
    finally:
        gc.enable()


# --------------------------------------------------------------------------------------
# embed_file with the demo models
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(demo):
    from virnucpro.embed import load_embedder
    from virnucpro.paths import DNABERT_DIRNAME

    return {"esm2": load_embedder("esm2", demo / "esm2.pt", "cpu", "fp32"),
            "dnabert": load_embedder("dnabert", demo / DNABERT_DIRNAME, "cpu", "fp32")}  # fmt: skip


def prepared(tmp_path, n: int = 300, chunk_size: int | None = 500):
    """A nucleotide and a protein file as prepare writes them: n frames of varied lengths."""
    rng = random.Random(n)
    note = f" chunk_size={chunk_size}" if chunk_size else ""
    nucleotide, protein = tmp_path / "P.nucleotide.fa", tmp_path / "P.protein.faa"
    with open(nucleotide, "w") as nuc, open(protein, "w") as prot:
        for i in range(n):
            length = rng.choice([5, 17, 40, 40, 40, 120])
            dna = "".join(rng.choices("ACGT", k=3 * length + 1))
            aa = "".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=length))
            nuc.write(f">s{i}_chunk_1F1{note}\n{dna}\n")
            prot.write(f">s{i}_chunk_1F1{note}\n{aa}\n")
    return {"dnabert": nucleotide, "esm2": protein}


@pytest.mark.parametrize("kind", ["esm2", "dnabert"])
def test_embed_file_gives_the_whole_file_features_bit_for_bit(models, tmp_path, kind):
    """Written block by block as batches finish, the features are those of the whole-file
    path (every record read, tokenized and batched at once, then put in file order), bit for
    bit."""
    from virnucpro.embed import embed_file
    from virnucpro.fasta import read_fasta

    loaded, path = models[kind], prepared(tmp_path)[kind]
    out = embed_file(loaded, path, tmp_path / "out", 256, "float32", show_progress=False)
    ids, x, meta = read_features(out)
    records = list(read_fasta(path, nucleotide=kind == "dnabert"))
    tokens = loaded.tokenize([r.sequence for r in records])
    assert ids == [r.id for r in records]
    assert torch.equal(x, loaded.queue(tokens, 256).gather())
    info = json.loads(meta["info"])
    assert info["frames"] == len(ids) and info["tokens"] == sum(map(len, tokens))


def test_embed_protein_holds_a_block_not_the_file(models, tmp_path, monkeypatch):
    """Each block's features go to the file as soon as they are done: with blocks of 64
    frames, 300 frames make 5 writes, and the rows are the file's, in order."""
    from virnucpro import embed
    from virnucpro.features import FeatureWriter

    loaded, path = models["esm2"], prepared(tmp_path)["esm2"]
    whole = embed.embed_file(loaded, path, tmp_path / "whole", 256, "float32", show_progress=False)
    monkeypatch.setattr(embed, "ESM_BLOCK_FRAMES", 64)
    appended: list[int] = []
    append = FeatureWriter.append

    def counting(self, ids, features):
        appended.append(len(ids))
        append(self, ids, features)

    monkeypatch.setattr(FeatureWriter, "append", counting)
    out = embed.embed_file(loaded, path, tmp_path / "blocks", 256, "float32", show_progress=False)
    assert appended == [64, 64, 64, 64, 44]
    (ids, x, _), (whole_ids, y, _) = read_features(out), read_features(whole)
    assert ids == whole_ids
    assert torch.allclose(x, y, atol=1e-5, rtol=0)  # other batches: float rounding only


def cosines(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=1)


def test_esm2_at_fp8_is_bf16_with_fp8_linear_layers_and_says_fp8(demo, models, tmp_path):
    """Loaded in bf16, then each layer's qkv, out_proj, fc1 and fc2 in FP8 (on the CPU through
    torch's FP8 kernel); its features record fp8, and are near the fp32 ones, not equal."""
    from virnucpro.embed import Esm2Embedder, embed_file
    from virnucpro.models.fp8 import Fp8Linear

    fp8 = Esm2Embedder.load(demo / "esm2.pt", torch.device("cpu"), "fp8")
    assert fp8.precision == "fp8"
    for layer in fp8.model.layers:
        linears = (layer.qkv, layer.out_proj, layer.fc1, layer.fc2)
        assert all(isinstance(linear, Fp8Linear) for linear in linears)
    assert {p.dtype for p in fp8.model.parameters()} == {torch.bfloat16}
    path = prepared(tmp_path, 40)["esm2"]
    out = embed_file(fp8, path, tmp_path / "fp8", 256, "float32", show_progress=False)
    ids, x, meta = read_features(out)
    assert meta["precision"] == "fp8" and json.loads(meta["info"])["precision"] == "fp8"
    reference = embed_file(models["esm2"], path, tmp_path / "fp32", 256, "float32",
                           show_progress=False)  # fmt: skip
    agreement = cosines(x, read_features(reference)[1])
    assert 0.9 < agreement.min() and agreement.min() < 1.0


def test_esm2_fp8_is_refused_on_the_cpu_before_the_model_loads(demo, monkeypatch):
    from virnucpro import embed

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(embed, "load_esm2", refuse)
    with pytest.raises(VirnucproError, match=r"--precision fp8: needs a GPU .*; cpu has none"):
        embed.load_embedder("esm2", demo / "esm2.pt", "cpu", "fp8")


def test_esm2_fp8_simulated_on_the_cpu_when_asked(demo):
    from virnucpro.embed import load_embedder

    loaded = load_embedder("esm2", demo / "esm2.pt", "cpu", "fp8", simulate_fp8=True)
    assert loaded.precision == "fp8"


def test_dnabert_under_fp8_runs_and_records_bf16(demo, tmp_path, caplog):
    """FP8 is ESM-2's: DNABERT-S asked for fp8 runs at bf16, anywhere bf16 runs (the CPU
    too), says so once, and its features record bf16."""
    from virnucpro.embed import DnaBertEmbedder, embed_file, load_embedder
    from virnucpro.paths import DNABERT_DIRNAME

    with caplog.at_level(logging.INFO, logger="virnucpro"):
        direct = DnaBertEmbedder.load(demo / DNABERT_DIRNAME, torch.device("cpu"), "fp8")
    assert direct.precision == "bf16"
    assert {p.dtype for p in direct.model.parameters()} == {torch.bfloat16}
    said = [r.getMessage() for r in caplog.records if "DNABERT-S runs at bf16" in r.getMessage()]
    assert said == ["DNABERT-S runs at bf16 under --precision fp8 (FP8 is for ESM-2 only)"]
    loaded = load_embedder("dnabert", demo / DNABERT_DIRNAME, "cpu", "fp8")
    assert loaded.precision == "bf16"
    path = prepared(tmp_path, 20)["dnabert"]
    meta = read_features(embed_file(loaded, path, tmp_path, show_progress=False))[2]
    assert meta["precision"] == "bf16"


@pytest.mark.parametrize(("chunk_size", "recorded"), [(300, "300"), (None, "unknown")])
def test_feature_files_record_their_provenance(models, tmp_path, chunk_size, recorded):
    from virnucpro.embed import embed_file

    paths = prepared(tmp_path, 20, chunk_size)
    for kind, loaded in models.items():
        meta = read_features(embed_file(loaded, paths[kind], tmp_path, show_progress=False))[2]
        assert meta["model_kind"] == kind and meta["model_sha256"] == loaded.model_sha256
        assert (meta["precision"], meta["feature_dtype"]) == ("fp32", "float16")
        assert meta["chunk_size"] == recorded


def test_prepare_notes_the_chunk_size_in_each_header(tmp_path):
    from virnucpro.embed import prepared_chunk_size
    from virnucpro.fasta import read_fasta
    from virnucpro.prepare import prepare

    fasta = tmp_path / "in.fa"
    fasta.write_text(">orf1 some words\nATGGCCAAAGGGCTGCTG\n")
    prepare(fasta, 300, tmp_path, "P")
    lines = (tmp_path / "P.protein.faa").read_text().splitlines()
    assert lines[0] == ">orf1_chunk_1F1 chunk_size=300" and lines[1] == "MAKGLL"
    headers = [line for line in lines if line.startswith(">")]
    assert all(line.endswith(" chunk_size=300") for line in headers)
    for name in ("P.protein.faa", "P.nucleotide.fa"):
        assert prepared_chunk_size(tmp_path / name) == 300
        # record IDs are the first word: readers see the IDs alone
        assert [r.id for r in read_fasta(tmp_path / name, nucleotide=False)][0] == "orf1_chunk_1F1"


def test_feature_files_honour_the_umask(models, tmp_path):
    from virnucpro.embed import embed_file

    path = prepared(tmp_path, 5)["esm2"]
    old = os.umask(0o022)
    try:
        out = embed_file(models["esm2"], path, tmp_path / "out", show_progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


class Spy:
    """Counts the batches a model runs."""

    def __init__(self, loaded) -> None:
        self.loaded, self.calls = loaded, 0

    def __enter__(self):
        run = self.loaded.run

        def counted(tokens):
            self.calls += 1
            return run(tokens)

        self.loaded.run = counted
        return self

    def __exit__(self, *exc) -> None:
        del self.loaded.run


@pytest.mark.parametrize("kind", ["esm2", "dnabert"])
def test_an_output_that_cannot_be_written_fails_before_any_embedding(models, tmp_path, kind):
    """A write error after hours of GPU work loses the work: what can be checked is checked
    first (the output path a directory, the output directory a file)."""
    from virnucpro.embed import embed_file
    from virnucpro.paths import features_file

    path = prepared(tmp_path, 30)[kind]
    taken = features_file(kind, path, tmp_path / "out")
    taken.mkdir(parents=True)
    with Spy(models[kind]) as spy, pytest.raises(VirnucproError, match=f"{taken}: is a dir"):
        embed_file(models[kind], path, tmp_path / "out", show_progress=False)
    assert spy.calls == 0
    (tmp_path / "file").write_text("")
    with Spy(models[kind]) as spy, pytest.raises(VirnucproError, match="not a directory"):
        embed_file(models[kind], path, tmp_path / "file" / "out", show_progress=False)
    assert spy.calls == 0


def test_a_read_error_after_the_first_block_leaves_no_file(models, tmp_path, monkeypatch):
    from virnucpro import embed

    path = prepared(tmp_path, 30)["esm2"]
    path.write_text(path.read_text() + ">s3_chunk_1F1\nMKV\n")  # a duplicate, at the end
    monkeypatch.setattr(embed, "ESM_BLOCK_FRAMES", 8)
    with pytest.raises(VirnucproError, match="duplicate ID 's3_chunk_1F1'"):
        embed.embed_file(models["esm2"], path, tmp_path / "out", show_progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # not even the temporary file


NUCLEOTIDES = "".join(f">f{i}\n{'ACGTTGCAAN' * (1 + i % 3)}\n" for i in range(20))


def test_embed_protein_refuses_nucleotides(models, tmp_path):
    from virnucpro.embed import check_input, embed_file

    path = tmp_path / "x.nucleotide.fa"
    path.write_text(NUCLEOTIDES)
    out = tmp_path / "out"
    for check in (lambda: check_input("esm2", path),
                  lambda: embed_file(models["esm2"], path, out, show_progress=False)):  # fmt: skip
        with Spy(models["esm2"]) as spy, pytest.raises(VirnucproError) as error:
            check()
        assert spy.calls == 0
        message = str(error.value)
        assert message.startswith(f"{path}: ") and "nucleotides, not proteins" in message
        assert "--allow-nucleotide-letters" in message and "\n" not in message
    out = embed_file(models["esm2"], path, tmp_path / "out", show_progress=False,
                     allow_nucleotide_letters=True)  # fmt: skip
    assert len(read_features(out)[0]) == 20


@pytest.mark.parametrize(
    "text",
    [
        ">a\nGATTACA\n>b\nTAG\n",  # a few short peptides of those letters are no evidence
        ">a\n" + "ACGT" * 50 + "\n>b\nMKV\n",  # one real protein is enough
        ">a\n" + "acgtn" * 30 + "\n>b\nACGTE\n",
    ],
)
def test_embed_protein_takes_proteins_that_share_letters_with_dna(models, tmp_path, text):
    from virnucpro.embed import check_input, looks_nucleotide

    path = tmp_path / "x.protein.faa"
    path.write_text(text)
    check_input("esm2", path)
    assert not looks_nucleotide([line for line in text.splitlines() if line[0] != ">"])


def test_embed_dna_refuses_proteins(models, tmp_path):
    from virnucpro.embed import check_input, embed_file

    path = tmp_path / "x.protein.faa"
    path.write_text(">p1\nMKVLAAGIVEPQRSTW\n")
    out, loaded = tmp_path / "out", models["dnabert"]
    for check in (lambda: check_input("dnabert", path),
                  lambda: embed_file(loaded, path, out, show_progress=False)):  # fmt: skip
        with pytest.raises(VirnucproError, match=f"{path}: record 'p1' has 'L', which is not a"):
            check()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_cli_embed_protein_refuses_nucleotides_before_loading_the_model(tmp_path, monkeypatch,
                                                                        capsys):  # fmt: skip
    """The check comes before the model is loaded: a model file that is not one is not read."""
    from virnucpro import cli

    path, model = tmp_path / "x.protein.faa", tmp_path / "esm2.pt"
    path.write_text(NUCLEOTIDES)
    model.write_bytes(b"not a model")
    argv = ["virnucpro", "-q", "embed-protein", str(path), "--esm-model", str(model),
            "--outdir", str(tmp_path / "out"), "--device", "cpu"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    try:
        with pytest.raises(SystemExit) as done:
            cli.main()
    finally:
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"virnucpro: error: {path}: every sequence is only A/C/G/T/N")
    assert not (tmp_path / "out").exists()
