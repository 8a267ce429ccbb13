"""The embedding loop without a model: batch planning, out-of-memory halving, and the
feature files that carry frame IDs with their rows."""

from __future__ import annotations

import gc
import json
import logging
import math
import random

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


def test_queued_parts_extend_in_input_order_and_gather_as_any_dtype():
    """embed-dna queues a file chunk by chunk and gathers once: the chunks' rows follow each
    other, each chunk in its own input order, converted to the feature file's type."""
    tokens = sequences(150, seed=7)
    quiet = StageProgress("fake", 0, "frames", enabled=False)
    whole = queue_tokens([], FakeModel(), 2, 40, quiet)
    for chunk in (tokens[:10], tokens[10:60], tokens[60:]):
        whole.extend(queue_tokens(chunk, FakeModel(), 2, 40, quiet))
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
