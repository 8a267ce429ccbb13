"""Stage summarize: all shards' frame scores -> the final outputs (docs/outputs.md).

Shards are read in natural order of their names (shard_2 before shard_10) whatever order the
files are given in; shards are contiguous runs of the input, so per-sequence rows come out in
input order and the result does not depend on how the input was sharded.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from virnucpro import __version__
from virnucpro.classify import SCORES_HEADER
from virnucpro.errors import VirnucproError
from virnucpro.fasta import atomic_writer, read_fasta
from virnucpro.prepare import SEQUENCES_HEADER
from virnucpro.split import MANIFEST_HEADER

log = logging.getLogger(__name__)

SUFFIXES = {"sequences": ".sequences.tsv", "scores": ".scores.tsv", "meta": ".scores.json"}
DEFAULT_THRESHOLD = 0.5
SUMMARY_HEADER = (
    "sequence_id\tlength\tchunks\tchunks_with_frames\tframes_scored\tviral_chunks\t"
    "viral_fraction\tmax_virus_score\tmean_virus_score\tcall\n"
)


def natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def group_shard_files(
    files: list[Path],
    unfinished: dict[str, list[tuple[str, int]]] | None = None,
    manifest: dict[str, list[tuple[str, int]]] | None = None,
) -> list[dict]:
    """{kind: path} per shard, in natural order of the shard prefix; every shard needs all
    three files. An ``unfinished`` shard ({prefix: [(sequence_id, length)]}) is
    {"unfinished": rows} instead. With a ``manifest`` (split's shards.tsv, same shape) every
    shard it lists is expected: one without all three files is unfinished, and files of a
    shard it does not list are refused."""
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
            log.warning("shard '%s' has no results: its %d sequences are unfinished", prefix,
                        len(rows))  # fmt: skip
            shards[prefix] = {"unfinished": rows}
    if not shards:
        raise VirnucproError("summarize: no shard files given")
    for prefix, found in shards.items():
        if "unfinished" in found:
            continue
        missing = [SUFFIXES[k] for k in SUFFIXES if k not in found]
        if missing:
            raise VirnucproError(f"shard '{prefix}': missing {prefix}{missing[0]}")
    return [shards[p] for p in sorted(shards, key=natural_key)]


def read_manifest(path: Path) -> dict[str, list[tuple[str, int]]]:
    """split's shards.tsv as {shard prefix: [(sequence_id, length)]}."""
    shards: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for number, (shard, sequence_id, length) in enumerate(_rows(path, MANIFEST_HEADER), 2):
        if not length.isdigit():
            raise VirnucproError(f"{path}: line {number}: length '{length}' is not a number")
        shards[shard.removesuffix(".fa")].append((sequence_id, int(length)))
    return shards


def _rows(path: Path, header: str) -> list[list[str]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise VirnucproError(f"{path}: cannot read ({e.strerror})") from None
    if not lines or lines[0] != header.rstrip("\n"):
        raise VirnucproError(f"{path}: unexpected header (not written by virnucpro?)")
    width = header.count("\t") + 1
    rows = [line.split("\t") for line in lines[1:]]
    for number, row in enumerate(rows, start=2):
        if len(row) != width:
            raise VirnucproError(f"{path}: line {number} has {len(row)} columns, not {width}")
    return rows


@dataclass
class SequenceScores:
    frames: int = 0
    # chunk id -> [max score1, max score2] over its frames, as float32 like the original
    chunks: dict[str, list[np.float32]] = field(default_factory=dict)
    max_virus: np.float32 | None = None


def _sequence_of(frame_id: str) -> tuple[str, str]:
    """frame ID '{seq}_chunk_{k}{F|R}{f}' -> (sequence ID, chunk ID)."""
    chunk_id = frame_id[:-2]
    return chunk_id.rsplit("_chunk_", 1)[0], chunk_id


def call(viral_chunks: int, chunks_scored: int, threshold: float) -> str:
    """virus iff the fraction of scored chunks called viral is >= threshold."""
    if chunks_scored == 0:
        return "unscored"
    return "virus" if viral_chunks / chunks_scored >= threshold else "not_virus"


def _fmt(value: float | None) -> str:
    return "NA" if value is None else str(np.float32(value))


def summarize(
    files: list[Path],
    outdir: Path,
    threshold: float = DEFAULT_THRESHOLD,
    run_info: dict | None = None,
    unfinished: list[Path] = (),
    manifest: Path | None = None,
) -> dict[str, Path]:
    """Stage entry: write the four outputs from the shards' three files each. Sequences of
    ``unfinished`` shards (their FASTA files: shards that failed in predict) get summary rows
    with the call ``unfinished`` and nothing else; so do those of every shard in split's
    ``manifest`` whose results are missing (a pipeline task that failed and was ignored)."""
    if not 0.0 <= threshold <= 1.0:
        raise VirnucproError(f"--threshold must be between 0 and 1 (got {threshold})")
    failed = {
        Path(path).name.removesuffix(".fa"): [(r.id, len(r.sequence)) for r in read_fasta(path)]
        for path in unfinished
    }
    expected = read_manifest(Path(manifest)) if manifest is not None else None
    shards = group_shard_files(files, failed, expected)
    if expected is None and all("unfinished" in shard for shard in shards):
        raise VirnucproError("no shard finished: nothing to summarize")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": outdir / "prediction_results.txt",
        "highestscore": outdir / "prediction_results_highestscore.csv",
        "summary": outdir / "virnucpro_summary.tsv",
        "run": outdir / "run.json",
    }
    counts = defaultdict(int)
    stage_seconds: dict[str, float] = defaultdict(float)
    metas = []
    all_chunks: dict[str, list[np.float32]] = {}
    with atomic_writer(paths["results"]) as results, atomic_writer(paths["summary"]) as summary:
        results.write("Sequence_ID\tPrediction\tscore1\tscore2\n")
        summary.write(SUMMARY_HEADER)
        for shard in shards:
            if "unfinished" in shard:
                for sequence_id, length in shard["unfinished"]:
                    summary.write(f"{sequence_id}\t{length}\t" + "NA\t" * 7 + "unfinished\n")
                    counts["sequences"] += 1
                    counts["call_unfinished"] += 1
                continue
            sequences = _rows(shard["sequences"], SEQUENCES_HEADER)
            scores = _rows(shard["scores"], SCORES_HEADER)
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
            for frame_id, label, score1, score2 in scores:
                results.write(f"{frame_id}\t{label}\t{score1}\t{score2}\n")
                try:
                    s1, s2 = np.float32(score1), np.float32(score2)
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
                    f"{shard['scores']}: scores for '{stray}', which is not in "
                    f"{shard['sequences'].name}"
                )
            for sequence_id, length, chunks, with_frames, frames_kept in sequences:
                seq = per_sequence.get(sequence_id, SequenceScores())
                if seq.frames != int(frames_kept):
                    raise VirnucproError(
                        f"{shard['scores']}: {seq.frames} frames scored for '{sequence_id}', "
                        f"{frames_kept} kept by prepare (incomplete shard?)"
                    )
                viral = sum(1 for s1, s2 in seq.chunks.values() if s2 >= s1)
                scored = len(seq.chunks)
                mean = statistics.fmean(s2 for _, s2 in seq.chunks.values()) if scored else None
                summary.write(
                    f"{sequence_id}\t{length}\t{chunks}\t{with_frames}\t{seq.frames}\t{viral}\t"
                    f"{'NA' if not scored else round(viral / scored, 4)}\t"
                    f"{_fmt(seq.max_virus)}\t{_fmt(mean)}\t{call(viral, scored, threshold)}\n"
                )
                counts["sequences"] += 1
                counts["chunks"] += int(chunks)
                counts["chunks_with_frames"] += int(with_frames)
                counts["frames_kept"] += int(frames_kept)
                counts["frames_scored"] += seq.frames
                counts["viral_chunks"] += viral
                counts[f"call_{call(viral, scored, threshold)}"] += 1
                all_chunks.update(seq.chunks)

    with atomic_writer(paths["highestscore"]) as out:
        # The original's pandas groupby: chunks sorted as strings, True/False per chunk.
        out.write("Modified_ID\tIs_Virus\n")
        for chunk_id in sorted(all_chunks):
            s1, s2 = all_chunks[chunk_id]
            out.write(f"{chunk_id}\t{s2 >= s1}\n")

    run = _run_record(metas, counts, stage_seconds, threshold, len(shards), run_info or {})
    with atomic_writer(paths["run"]) as out:
        json.dump(run, out, indent=2)
        out.write("\n")
    return paths


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
