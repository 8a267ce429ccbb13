"""Stage summarize: all shards' frame scores -> the final outputs (docs/outputs.md).

Shards are read in natural order of their names (shard_2 before shard_10) whatever order the
files are given in; shards are contiguous runs of the input, so per-sequence rows come out in
input order and the result does not depend on how the input was sharded. Memory is bounded
by the largest shard, not by the run (benchmarks/README.md, "Memory at 1 Gbp"); this module
does not import torch.
"""

from __future__ import annotations

import heapq
import json
import logging
import re
import shutil
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from virnucpro import __version__
from virnucpro.errors import VirnucproError
from virnucpro.fasta import read_fasta
from virnucpro.fileio import atomic_writer
from virnucpro.paths import (
    HIGHEST_SCORE,
    HIGHEST_SCORE_HEADER,
    MANIFEST_HEADER,
    RESULTS,
    RESULTS_HEADER,
    RUN_RECORD,
    SCORES,
    SCORES_HEADER,
    SCORES_META,
    SEQUENCES,
    SEQUENCES_HEADER,
    SUMMARY,
    SUMMARY_HEADER,
    shard_prefix,
)

log = logging.getLogger(__name__)

SUFFIXES = {"sequences": SEQUENCES, "scores": SCORES, "meta": SCORES_META}
DEFAULT_THRESHOLD = 0.5
CALLS = ("virus", "not_virus", "unscored", "unfinished")
MERGE_FAN_IN = 64  # sorted chunk runs open at once in the final merge


def natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def group_shard_files(
    files: list[Path],
    unfinished: dict[str, list[tuple[str, int]]] | None = None,
    manifest: dict[str, int | list[tuple[str, int]]] | None = None,
) -> list[dict]:
    """{kind: path} per shard, in natural order of the shard prefix; every shard needs all
    three files. An ``unfinished`` shard ({prefix: [(sequence_id, length)]}) is
    {"unfinished": rows} instead. With a ``manifest`` (split's shards.tsv: {prefix: its
    rows, or just their number}) every shard it lists is expected: one without all three
    files is unfinished ({"unfinished": rows}, or None when only the number was given), and
    files of a shard it does not list are refused. Each shard also has its "prefix"."""
    shards: dict[str, dict] = defaultdict(dict)
    for path in map(Path, files):
        kind = next((k for k, s in SUFFIXES.items() if path.name.endswith(s)), None)
        if kind is None:
            raise VirnucproError(
                f"{path}: not a shard file (expected *.sequences.tsv, *.scores.tsv or "
                "*.scores.json)"
            )
        prefix = path.name[: -len(SUFFIXES[kind])]
        if kind in shards[prefix]:
            raise VirnucproError(f"{path}: shard '{prefix}' given twice")
        if manifest is not None and prefix not in manifest:
            raise VirnucproError(f"{path}: shard '{prefix}' is not in the shard manifest")
        shards[prefix][kind] = path
    for prefix, rows in (unfinished or {}).items():
        shards[prefix] = {"unfinished": rows}
    for prefix, rows in (manifest or {}).items():
        if len(shards.get(prefix, {})) < len(SUFFIXES):
            count = rows if isinstance(rows, int) else len(rows)
            log.warning("shard '%s' has no results: its %d sequences are unfinished", prefix,
                        count)  # fmt: skip
            shards[prefix] = {"unfinished": None if isinstance(rows, int) else rows}
    if not shards:
        raise VirnucproError("summarize: no shard files given")
    for prefix, found in shards.items():
        if "unfinished" in found:
            continue
        missing = [SUFFIXES[k] for k in SUFFIXES if k not in found]
        if missing:
            raise VirnucproError(f"shard '{prefix}': missing {prefix}{missing[0]}")
    return [{**shards[p], "prefix": p} for p in sorted(shards, key=natural_key)]


def read_manifest(path: Path, only: set[str] | None = None) -> dict[str, list[tuple[str, int]]]:
    """split's shards.tsv as {shard prefix: [(sequence_id, length)]}; with ``only``, the rows
    of those shards alone (the file is checked whole either way)."""
    shards: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for prefix, sequence_id, length in _manifest_rows(path):
        if only is None or prefix in only:
            shards[prefix].append((sequence_id, length))
    return shards


def manifest_counts(path: Path) -> dict[str, int]:
    """split's shards.tsv as {shard prefix: number of sequences}: what summarize keeps of it
    (the rows of a shard without results are read again when its rows are written)."""
    counts: dict[str, int] = defaultdict(int)
    for prefix, _, _ in _manifest_rows(path):
        counts[prefix] += 1
    return counts


def _manifest_rows(path: Path) -> Iterator[tuple[str, str, int]]:
    for number, (shard, sequence_id, length) in _iter_rows(path, MANIFEST_HEADER):
        if not length.isdigit():
            raise VirnucproError(f"{path}: line {number}: length '{length}' is not a number")
        yield shard_prefix(shard), sequence_id, int(length)


def _open_table(path: Path, header: str) -> IO[str]:
    """``path`` opened after its header line, which must be ``header``."""
    try:
        handle = open(path)
        first = handle.readline()
    except OSError as e:
        raise VirnucproError(f"{path}: cannot read ({e.strerror})") from None
    if first.removesuffix("\n") != header.rstrip("\n"):
        handle.close()
        raise VirnucproError(f"{path}: unexpected header (not written by virnucpro?)")
    return handle


def _iter_rows(path: Path, header: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each line of a table after its header, read as needed."""
    width = header.count("\t") + 1
    with _open_table(path, header) as handle:
        for number, line in enumerate(handle, start=2):
            row = line.removesuffix("\n").split("\t")
            if len(row) != width:
                raise VirnucproError(f"{path}: line {number} has {len(row)} columns, not {width}")
            yield number, row


def _rows(path: Path, header: str) -> list[list[str]]:
    return [row for _, row in _iter_rows(path, header)]


@dataclass
class SequenceScores:
    """One sequence's frames in one shard: scores as read (float), rounded to float32 (the
    classifier's precision, like the original) once the shard is read."""

    frames: int = 0
    # chunk id -> [max score1, max score2] over its frames
    chunks: dict[str, list[float]] = field(default_factory=dict)
    max_virus: float | None = None


def _sequence_of(frame_id: str) -> tuple[str, str]:
    """frame ID '{seq}_chunk_{k}{F|R}{f}' -> (sequence ID, chunk ID)."""
    chunk_id = frame_id[:-2]
    return chunk_id.rsplit("_chunk_", 1)[0], chunk_id


def call_chunks(best: np.ndarray) -> np.ndarray:
    """Each chunk's call from its [max score1, max score2] over its frames (rows of a float32
    array, like the original): viral iff max score2 >= max score1."""
    return best[:, 1] >= best[:, 0]


def chunk_calls(frame_ids: Iterable[str], scores: np.ndarray) -> dict[str, bool]:
    """{chunk ID: viral} of frames and their scores (N, 2: score1, score2), as summarize
    calls chunks (call_chunks), in the order the chunks first appear."""
    best: dict[str, list[float]] = {}
    for frame_id, (score1, score2) in zip(frame_ids, np.asarray(scores).tolist(), strict=True):
        chunk = best.setdefault(_sequence_of(frame_id)[1], [score1, score2])
        chunk[0], chunk[1] = max(chunk[0], score1), max(chunk[1], score2)
    maxima = np.array(list(best.values()), dtype=np.float32).reshape(len(best), 2)
    return dict(zip(best, call_chunks(maxima).tolist(), strict=True))


def call(viral_chunks: int, chunks_scored: int, threshold: float) -> str:
    """virus iff the fraction of scored chunks called viral is >= threshold."""
    if chunks_scored == 0:
        return "unscored"
    return "virus" if viral_chunks / chunks_scored >= threshold else "not_virus"


def _fmt(value: float | None) -> str:
    return "NA" if value is None else str(np.float32(value))


class Summary(dict):
    """What summarize returns: {output name: path} as before ("results", "highestscore",
    "summary", "run"), plus the run's per-sequence calls for an end-of-run message."""

    def __init__(self, paths: dict[str, Path], sequences: int, calls: dict[str, int]):
        super().__init__(paths)
        self.sequences = sequences
        self.calls = calls  # {"virus": n, "not_virus": n, "unscored": n, "unfinished": n}

    @property
    def message(self) -> str:
        calls = ", ".join(f"{self.calls[c]:,} {c}" for c in CALLS)
        return f"{self.sequences:,} sequences: {calls}; outputs in {self['run'].parent}"


def summarize(
    files: list[Path],
    outdir: Path,
    threshold: float = DEFAULT_THRESHOLD,
    run_info: dict | None = None,
    unfinished: list[Path] = (),
    manifest: Path | None = None,
) -> Summary:
    """Stage entry: write the four outputs from the shards' three files each. Sequences of
    ``unfinished`` shards (their FASTA files: shards that failed in predict) get summary rows
    with the call ``unfinished`` and nothing else; so do those of every shard in split's
    ``manifest`` whose results are missing (a pipeline task that failed and was ignored).

    Memory is bounded by the largest shard: frame rows and summary rows are written as each
    shard is read, and each shard's chunk calls go to a sorted run file in a hidden
    directory in ``outdir``; the runs are merged into prediction_results_highestscore.csv
    (sorted by chunk ID over the whole run) at the end."""
    if not 0.0 <= threshold <= 1.0:
        raise VirnucproError(f"--threshold must be between 0 and 1 (got {threshold})")
    failed = {
        shard_prefix(path): [(r.id, len(r.sequence)) for r in read_fasta(path)]
        for path in unfinished
    }
    expected = manifest_counts(Path(manifest)) if manifest is not None else None
    shards = group_shard_files(files, failed, expected)
    if expected is None and all("unfinished" in shard for shard in shards):
        raise VirnucproError("no shard finished: nothing to summarize")
    no_results = {s["prefix"] for s in shards if "unfinished" in s and s["unfinished"] is None}
    if no_results:  # a shard split listed without results: its rows from the manifest
        rows = read_manifest(Path(manifest), only=no_results)
        for shard in shards:
            if shard["prefix"] in no_results:
                shard["unfinished"] = rows[shard["prefix"]]
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": outdir / RESULTS,
        "highestscore": outdir / HIGHEST_SCORE,
        "summary": outdir / SUMMARY,
        "run": outdir / RUN_RECORD,
    }
    counts: dict[str, int] = defaultdict(int)
    stage_seconds: dict[str, float] = defaultdict(float)
    metas: list[dict] = []
    staging = Path(tempfile.mkdtemp(prefix=".summarize-", dir=outdir))
    try:
        runs = []
        with (
            atomic_writer(paths["results"]) as results,
            atomic_writer(paths["summary"]) as summary,
        ):
            results.write(RESULTS_HEADER)
            summary.write(SUMMARY_HEADER)
            for shard in shards:
                if "unfinished" in shard:
                    for sequence_id, length in shard["unfinished"]:
                        summary.write(f"{sequence_id}\t{length}\t" + "NA\t" * 7 + "unfinished\n")
                        counts["sequences"] += 1
                        counts["call_unfinished"] += 1
                    continue
                chunks = _summarize_shard(
                    shard, results, summary, threshold, counts, stage_seconds, metas
                )
                runs.append(staging / f"run_{len(runs)}.tsv")
                with open(runs[-1], "w") as out:
                    out.writelines(f"{c}\t{chunks[c]}\n" for c in sorted(chunks))
                del chunks
        with atomic_writer(paths["highestscore"]) as out:
            # The original's pandas groupby: chunks sorted as strings, True/False per chunk.
            out.write(HIGHEST_SCORE_HEADER)
            out.writelines(_merge_runs(runs, staging))
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    calls = {c: counts.get(f"call_{c}", 0) for c in CALLS}
    run = _run_record(metas, counts, stage_seconds, threshold, len(shards), run_info or {})
    with atomic_writer(paths["run"]) as out:
        json.dump(run, out, indent=2)
        out.write("\n")
    result = Summary(paths, counts.get("sequences", 0), calls)
    log.info("%s", result.message)
    return result


def _summarize_shard(
    shard: dict,
    results: IO[str],
    summary: IO[str],
    threshold: float,
    counts: dict[str, int],
    stage_seconds: dict[str, float],
    metas: list[dict],
) -> dict[str, bool]:
    """Write one shard's frame rows and summary rows; add to the run's counts; return its
    chunks' calls {chunk ID: viral}."""
    sequences = _rows(shard["sequences"], SEQUENCES_HEADER)
    scores = _open_table(shard["scores"], SCORES_HEADER)
    with scores:
        try:
            meta = json.loads(shard["meta"].read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise VirnucproError(f"{shard['meta']}: not a scores JSON ({e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("stages"), dict):
            raise VirnucproError(f"{shard['meta']}: not a scores JSON (no stages)")
        if metas and meta.get("chunk_size") != metas[0].get("chunk_size"):
            raise VirnucproError(
                f"{shard['meta']}: chunk size {meta.get('chunk_size')}, other shards "
                f"{metas[0].get('chunk_size')}"
            )
        metas.append(meta)
        for stage, info in meta.get("stages", {}).items():
            stage_seconds[stage] += info.get("seconds", 0.0)

        per_sequence: dict[str, SequenceScores] = defaultdict(SequenceScores)
        width = SCORES_HEADER.count("\t") + 1
        for number, line in enumerate(scores, start=2):
            row = line.removesuffix("\n").split("\t")
            if len(row) != width:
                raise VirnucproError(
                    f"{shard['scores']}: line {number} has {len(row)} columns, not {width}"
                )
            frame_id, label, score1, score2 = row
            results.write(f"{frame_id}\t{label}\t{score1}\t{score2}\n")
            try:
                # As read; max() picks the same frame as over float32 (rounding is monotonic).
                s1, s2 = float(score1), float(score2)
            except ValueError:
                raise VirnucproError(f"{shard['scores']}: '{frame_id}' has a non-number "
                                     "score") from None  # fmt: skip
            sequence_id, chunk_id = _sequence_of(frame_id)
            seq = per_sequence[sequence_id]
            seq.frames += 1
            best = seq.chunks.setdefault(chunk_id, [s1, s2])
            best[0], best[1] = max(best[0], s1), max(best[1], s2)
            seq.max_virus = s2 if seq.max_virus is None else max(seq.max_virus, s2)

    known = {row[0] for row in sequences}
    stray = next((s for s in per_sequence if s not in known), None)
    if stray is not None:
        raise VirnucproError(
            f"{shard['scores']}: scores for '{stray}', which is not in {shard['sequences'].name}"
        )
    chunk_calls: dict[str, bool] = {}
    for sequence_id, length, chunks, with_frames, frames_kept in sequences:
        seq = per_sequence.get(sequence_id, SequenceScores())
        if seq.frames != int(frames_kept):
            raise VirnucproError(
                f"{shard['scores']}: {seq.frames} frames scored for '{sequence_id}', "
                f"{frames_kept} kept by prepare (incomplete shard?)"
            )
        scored = len(seq.chunks)
        # float32 like the original: [[max score1, max score2] per chunk]
        best = np.array(list(seq.chunks.values()), dtype=np.float32).reshape(scored, 2)
        viral_chunks = call_chunks(best)
        viral = int(viral_chunks.sum())
        mean = statistics.fmean(best[:, 1].tolist()) if scored else None
        sequence_call = call(viral, scored, threshold)
        summary.write(
            f"{sequence_id}\t{length}\t{chunks}\t{with_frames}\t{seq.frames}\t{viral}\t"
            f"{'NA' if not scored else round(viral / scored, 4)}\t"
            f"{_fmt(seq.max_virus)}\t{_fmt(mean)}\t{sequence_call}\n"
        )
        counts["sequences"] += 1
        counts["chunks"] += int(chunks)
        counts["chunks_with_frames"] += int(with_frames)
        counts["frames_kept"] += int(frames_kept)
        counts["frames_scored"] += seq.frames
        counts["viral_chunks"] += viral
        counts[f"call_{sequence_call}"] += 1
        chunk_calls.update(zip(seq.chunks, viral_chunks.tolist(), strict=True))
    return chunk_calls


def _merge_runs(runs: list[Path], staging: Path) -> Iterator[str]:
    """Lines 'chunk_id\tcall' of sorted runs merged in chunk ID order; of equal IDs (a
    sequence in two shards) the last run's, as a dict updated shard by shard would keep.
    At most MERGE_FAN_IN files are open at once: more runs are merged in rounds."""
    while len(runs) > MERGE_FAN_IN:
        merged = []
        for start in range(0, len(runs), MERGE_FAN_IN):
            merged.append(staging / f"merge_{len(runs)}_{start}.tsv")
            with open(merged[-1], "w") as out:
                out.writelines(_merge_runs(runs[start : start + MERGE_FAN_IN], staging))
        for run in runs:
            run.unlink()
        runs = merged
    with ExitStack() as stack:
        handles = [stack.enter_context(open(run)) for run in runs]
        previous, previous_key = None, None
        for line in heapq.merge(*handles, key=_chunk_key):  # stable: equal keys in run order
            key = _chunk_key(line)
            if previous is not None and key != previous_key:
                yield previous
            previous, previous_key = line, key
        if previous is not None:
            yield previous


def _chunk_key(line: str) -> str:
    return line[: line.index("\t")]


def _run_record(
    metas: list[dict],
    counts: dict[str, int],
    stage_seconds: dict[str, float],
    threshold: float,
    n_shards: int,
    run_info: dict,
) -> dict:
    """run.json: what ran, on what, with which models, how much and how long."""

    def distinct(stage: str, key: str) -> list[str]:
        infos = (m["stages"].get(stage, {}) for m in metas)
        return sorted({str(info[key]) for info in infos if key in info})

    def files(pairs: set[tuple[str, str]]) -> list[dict[str, str]]:
        return [{"path": path, "sha256": digest} for path, digest in sorted(pairs)]

    models = {
        "esm2": files(_pairs(metas, "embed-protein")),
        "dnabert": files(_pairs(metas, "embed-dna")),
        "classifier": files({(m["classifier"]["path"], m["classifier"]["sha256"]) for m in metas}),
    }
    record = {
        "virnucpro_version": __version__,
        "parameters": {"chunk_size": metas[0]["chunk_size"], "threshold": threshold},
        "models": models,
        "device": {
            "embed-dna": distinct("embed-dna", "device"),
            "embed-protein": distinct("embed-protein", "device"),
        },
        "precision": {
            "embed-dna": distinct("embed-dna", "precision"),
            "embed-protein": distinct("embed-protein", "precision"),
        },
        "shards": n_shards,
        "sequences": counts.get("sequences", 0),
        "calls": {c: counts.get(f"call_{c}", 0) for c in CALLS},
        "counts": dict(sorted(counts.items())),
        "task_seconds": {k: round(v, 3) for k, v in sorted(stage_seconds.items())},
    }
    for key, value in run_info.items():  # predict adds its own parameters and timings
        record[key] = {**record.get(key, {}), **value} if isinstance(value, dict) else value
    return record


def _pairs(metas: list[dict], stage: str) -> set[tuple[str, str]]:
    return {
        (m["stages"][stage]["model"], m["stages"][stage]["model_sha256"])
        for m in metas
        if "model" in m["stages"].get(stage, {})
    }
