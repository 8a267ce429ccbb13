"""summarize on its own: multi-shard outputs against expectations computed here from the
shards' contents (docs/outputs.md), memory bounded by the shard, no torch, the call counts."""

from __future__ import annotations

import json
import logging
import random
import statistics
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from virnucpro import summarize as summarize_module
from virnucpro.summarize import summarize

FRAMES = ("F1", "F2", "F3", "R1", "R2", "R3")


@dataclass
class Sequence:
    id: str
    length: int
    chunks: int
    frames: list[tuple[str, np.float32, np.float32]]  # (frame ID, score1, score2)


def make_sequence(
    rng: random.Random, sequence_id: str, max_chunks: int = 13, empty: bool = False
) -> Sequence:
    """A sequence of 1..max_chunks chunks (chunk 10 sorts before chunk 2 as a string), each
    with 0-3 kept frames (none if ``empty``); some scores tie."""
    chunks = rng.randint(1, max_chunks)
    frames = []
    for k in range(1, chunks + 1):
        kept = 0 if empty else rng.choice((0, 1, 1, 2, 3))
        for frame in sorted(rng.sample(FRAMES, kept), key=FRAMES.index):
            virus = np.float32(rng.random())
            others = np.float32(1) - virus
            if rng.random() < 0.05:
                others = virus = np.float32(0.5)  # a tie: the frame says others, the chunk virus
            frames.append((f"{sequence_id}_chunk_{k}{frame}", others, virus))
    return Sequence(sequence_id, chunks * 500 - rng.randint(0, 499), chunks, frames)


def write_shard(directory: Path, prefix: str, sequences: list[Sequence], rng: random.Random):
    """The three files prepare and classify write for one shard (frames shuffled: summarize
    joins by ID)."""
    with open(directory / f"{prefix}.sequences.tsv", "w") as out:
        out.write("sequence_id\tlength\tchunks\tchunks_with_frames\tframes_kept\n")
        for s in sequences:
            with_frames = len({frame_id[:-2] for frame_id, _, _ in s.frames})
            out.write(f"{s.id}\t{s.length}\t{s.chunks}\t{with_frames}\t{len(s.frames)}\n")
    frames = [f for s in sequences for f in s.frames]
    rng.shuffle(frames)
    with open(directory / f"{prefix}.scores.tsv", "w") as out:
        out.write("frame_id\tprediction\tscore1\tscore2\n")
        for frame_id, others, virus in frames:
            label = "virus" if virus > others else "others"
            out.write(f"{frame_id}\t{label}\t{others}\t{virus}\n")
    meta = {
        "virnucpro_version": "test",
        "shard": prefix,
        "chunk_size": 500,
        "frames_scored": len(frames),
        "classifier": {"path": "/m/500_model.safetensors", "sha256": "c" * 64},
        "stages": {
            "embed-dna": {
                "model": "/m/dnabert",
                "model_sha256": "d" * 64,
                "device": "cpu",
                "precision": "fp32",
                "seconds": 1.25,
            },  # fmt: skip
            "embed-protein": {
                "model": "/m/esm2.pt",
                "model_sha256": "e" * 64,
                "device": "cpu",
                "precision": "fp32",
                "seconds": 2.5,
            },  # fmt: skip
            "classify": {"seconds": 0.5},
        },
    }
    (directory / f"{prefix}.scores.json").write_text(json.dumps(meta))
    return [directory / f"{prefix}{s}" for s in (".sequences.tsv", ".scores.tsv", ".scores.json")]


def expected_outputs(shards: list[tuple[Path | None, list[Sequence]]], threshold: float) -> dict:
    """The three result files from the shards' contents: (scores file, sequences) per shard in
    the order the outputs must follow; a shard without a scores file is unfinished."""
    results = ["Sequence_ID\tPrediction\tscore1\tscore2\n"]
    summary = [summarize_module.SUMMARY_HEADER]
    chunk_best: dict[str, list[np.float32]] = {}
    for scores, sequences in shards:
        if scores is None:
            summary += [f"{s.id}\t{s.length}\t" + "NA\t" * 7 + "unfinished\n" for s in sequences]
            continue
        results += scores.read_text().splitlines(keepends=True)[1:]  # frames as classify wrote
        for s in sequences:
            best: dict[str, list[np.float32]] = {}
            for frame_id, others, virus in s.frames:
                chunk = best.setdefault(frame_id[:-2], [others, virus])
                chunk[:] = [max(chunk[0], others), max(chunk[1], virus)]
            chunk_best.update(best)
            viral = sum(bool(virus >= others) for others, virus in best.values())
            scored = len(best)
            if scored:
                fraction = str(round(viral / scored, 4))
                top = str(max(virus for _, _, virus in s.frames))
                mean = str(np.float32(statistics.fmean(float(v) for _, v in best.values())))
                verdict = "virus" if viral / scored >= threshold else "not_virus"
            else:
                fraction = top = mean = "NA"
                verdict = "unscored"
            summary.append(
                f"{s.id}\t{s.length}\t{s.chunks}\t{scored}\t{len(s.frames)}\t{viral}\t"
                f"{fraction}\t{top}\t{mean}\t{verdict}\n"
            )
    highest = ["Modified_ID\tIs_Virus\n"] + [
        f"{chunk}\t{bool(chunk_best[chunk][1] >= chunk_best[chunk][0])}\n"
        for chunk in sorted(chunk_best)
    ]
    return {
        "prediction_results.txt": "".join(results),
        "prediction_results_highestscore.csv": "".join(highest),
        "virnucpro_summary.tsv": "".join(summary),
    }


@pytest.fixture(scope="module")
def run_input(tmp_path_factory):
    """Five shards in input order shard_1, shard_2, shard_5 (no results: unfinished),
    shard_10, shard_11, files given shuffled; sequence IDs c1..c60 so that chunk IDs of
    different shards interleave when sorted (c1_, c10_, c11_, ...)."""
    directory = tmp_path_factory.mktemp("shards")
    rng = random.Random(11)
    order = ["shard_1", "shard_2", "shard_5", "shard_10", "shard_11"]
    sequences = {p: [make_sequence(rng, f"c{12 * i + j + 1}", empty=j % 5 == 4)
                     for j in range(12)] for i, p in enumerate(order)}  # fmt: skip
    files = []
    for prefix in order:
        if prefix != "shard_5":
            files += write_shard(directory, prefix, sequences[prefix], rng)
    manifest = directory / "shards.tsv"
    manifest.write_text("shard\tsequence_id\tlength\n" + "".join(
        f"{p}.fa\t{s.id}\t{s.length}\n" for p in order for s in sequences[p]))  # fmt: skip
    shards = [
        (None if p == "shard_5" else directory / f"{p}.scores.tsv", sequences[p]) for p in order
    ]
    rng.shuffle(files)
    return files, manifest, shards


@pytest.mark.parametrize("fan_in", [64, 2], ids=["one-merge", "merge-in-rounds"])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_multi_shard_outputs_match_expectations(run_input, tmp_path, monkeypatch, fan_in,
                                                threshold):  # fmt: skip
    files, manifest, shards = run_input
    monkeypatch.setattr(summarize_module, "MERGE_FAN_IN", fan_in)
    paths = summarize(files, tmp_path / "out", threshold, manifest=manifest)
    expected = expected_outputs(shards, threshold)
    for name, text in expected.items():
        assert (tmp_path / "out" / name).read_text() == text, name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*expected, "run.json"])
    assert set(paths) == {"results", "highestscore", "summary", "run"}
    assert paths["run"] == tmp_path / "out" / "run.json"


def test_chunk_calls_are_the_calls_summarize_writes(run_input, tmp_path):
    """chunk_calls (what check-precision compares) calls chunks as summarize does, ties
    included, from the frame scores as classify gives them."""
    files, manifest, shards = run_input
    summarize(files, tmp_path, 0.5, manifest=manifest)
    lines = (tmp_path / "prediction_results_highestscore.csv").read_text().splitlines()[1:]
    written = {chunk: call == "True" for chunk, call in (line.split("\t") for line in lines)}
    frames = [f for scores, sequences in shards if scores for s in sequences for f in s.frames]
    scores = np.array([[others, virus] for _, others, virus in frames], dtype=np.float32)
    called = summarize_module.chunk_calls([frame_id for frame_id, _, _ in frames], scores)
    assert called == written
    assert any(others == virus for _, others, virus in frames)  # ties were there
    assert summarize_module.chunk_calls([], np.zeros((0, 2), dtype=np.float32)) == {}


def test_run_json_and_log_line_give_the_calls(run_input, tmp_path, caplog):
    files, manifest, _ = run_input
    with caplog.at_level(logging.INFO, logger="virnucpro"):
        result = summarize(files, tmp_path, 0.5, manifest=manifest)
    rows = [line.split("\t") for line in (tmp_path / "virnucpro_summary.tsv").read_text()
            .splitlines()[1:]]  # fmt: skip
    calls = {c: sum(row[-1] == c for row in rows) for c in summarize_module.CALLS}
    assert calls["unfinished"] == 12 and calls["unscored"] > 0 and calls["virus"] > 0
    assert sum(calls.values()) == len(rows) == 60
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["sequences"] == 60 and run["calls"] == calls
    assert list(run["calls"]) == ["virus", "not_virus", "unscored", "unfinished"]
    assert run["counts"]["sequences"] == 60
    assert run["counts"]["call_unfinished"] == 12
    assert run["shards"] == 5
    assert result.sequences == 60 and result.calls == calls
    message = (f"60 sequences: {calls['virus']} virus, {calls['not_virus']} not_virus, "
               f"{calls['unscored']} unscored, 12 unfinished; outputs in {tmp_path}")  # fmt: skip
    assert result.message == message
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [message]


def test_large_counts_in_the_log_line_have_thousands_separators(tmp_path):
    result = summarize_module.Summary(
        {"run": tmp_path / "run.json"}, 12345,
        {"virus": 1234, "not_virus": 10000, "unscored": 1100, "unfinished": 11},
    )  # fmt: skip
    assert result.message == (
        f"12,345 sequences: 1,234 virus, 10,000 not_virus, 1,100 unscored, 11 unfinished; "
        f"outputs in {tmp_path}"
    )


def test_a_chunk_in_two_shards_keeps_the_later_shards_call(tmp_path):
    """A dict updated shard by shard (the former implementation) kept the later shard's
    value for a repeated chunk ID; the merge of sorted runs does the same."""
    first = Sequence("dup", 500, 1, [("dup_chunk_1F1", np.float32(0.9), np.float32(0.1))])
    second = Sequence("dup", 500, 1, [("dup_chunk_1F1", np.float32(0.1), np.float32(0.9))])
    rng = random.Random(1)
    files = write_shard(tmp_path, "shard_1", [first], rng)
    files += write_shard(tmp_path, "shard_2", [second], rng)
    summarize(files, tmp_path / "out")
    assert (tmp_path / "out" / "prediction_results_highestscore.csv").read_text() == (
        "Modified_ID\tIs_Virus\ndup_chunk_1\tTrue\n"
    )


def test_no_temporary_files_are_left_after_an_error(run_input, tmp_path):
    files, _, _ = run_input
    broken = tmp_path / "in"
    broken.mkdir()
    copies = []
    for path in files:
        copies.append(broken / path.name)
        text = path.read_text()
        if path.name == "shard_10.scores.tsv":
            text = text.replace("\t0.", "\tx.", 1)
        copies[-1].write_text(text)
    with pytest.raises(summarize_module.VirnucproError, match="has a non-number score"):
        summarize(copies, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("how", ["function", "cli"])
def test_summarize_does_not_import_torch(run_input, tmp_path, how):
    files, manifest, _ = run_input
    out = tmp_path / "out"
    args = [*map(str, files), "--manifest", str(manifest), "--outdir", str(out)]
    if how == "function":
        code = (
            "import sys\nfrom virnucpro.summarize import summarize\n"
            f"summarize({[str(f) for f in files]!r}, {str(out)!r}, manifest={str(manifest)!r})\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'safetensors')]\n"
            "assert not heavy, sorted(heavy)\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
    else:
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "virnucpro", "summarize", *args],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:")]  # fmt: skip
        assert "virnucpro.summarize" in imported
        assert not [m for m in imported if m.split(".")[0] == "torch"]
    assert (out / "run.json").is_file()


def test_memory_is_bounded_by_the_shard_not_the_run(tmp_path):
    """Peak Python allocations with 16 shards are about those with 4 shards of the same
    size (the former implementation kept every chunk of the run: ~4x)."""
    rng = random.Random(5)
    peaks = {}
    for n_shards in (4, 16):
        directory = tmp_path / f"in{n_shards}"
        directory.mkdir()
        files = []
        for index in range(1, n_shards + 1):
            sequences = [make_sequence(rng, f"s{index}_{j}", max_chunks=30) for j in range(60)]
            files += write_shard(directory, f"shard_{index}", sequences, rng)
        tracemalloc.start()
        try:
            summarize(files, tmp_path / f"out{n_shards}")
            peaks[n_shards] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[16] < 1.3 * peaks[4], peaks


def test_manifest_is_checked_whole(run_input, tmp_path):
    files, manifest, _ = run_input
    bad = tmp_path / "shards.tsv"
    lines = manifest.read_text().splitlines(keepends=True)
    lines[-1] = lines[-1].rsplit("\t", 1)[0] + "\t12x\n"  # a shard with results, last line
    bad.write_text("".join(lines))
    with pytest.raises(summarize_module.VirnucproError, match=f"{len(lines)}: length '12x'"):
        summarize(files, tmp_path / "out", manifest=bad)


def test_a_run_without_sequences_has_zero_calls(tmp_path):
    files = write_shard(tmp_path, "shard_1", [], random.Random(1))
    result = summarize(files, tmp_path / "out")
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["sequences"] == result.sequences == 0
    assert run["calls"] == result.calls == dict.fromkeys(summarize_module.CALLS, 0)
    assert "sequences" not in run["counts"]  # as before: counts has only what was counted
    assert (tmp_path / "out" / "virnucpro_summary.tsv").read_text() == (
        summarize_module.SUMMARY_HEADER
    )
