"""virnucpro check-precision: how far ESM-2 at another precision (fp8, bf16, ...) moves the
features and the calls away from a reference precision (fp32), on a sample of the user's own
input, before a run relies on it.

A seeded sample of the input's sequences, spread over the whole file, is prepared as the
prepare stage prepares a shard; DNABERT-S embeds the frames once, at the reference precision
(so the rows differ only in ESM-2's precision), ESM-2 at the reference and at each compared
precision, and the classifier scores each. Per compared precision the report gives the
per-frame cosine between its ESM-2 features and the reference's, the largest change of a
virus score, and how many frame and chunk calls changed (made as classify and summarize make
them). It reports and does not judge (its exit status is 0), but says whether fp8 meets the
project's bar for it (FP8_BAR_MIN_COSINE, FP8_BAR_MAX_CHUNK_CHANGES). Nothing is written but
the --json file: the prepared frames and features live in a temporary directory.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from virnucpro import __version__
from virnucpro.classify import join_features, score, viral_frames
from virnucpro.device import describe_device, fp8_missing, select_device, select_precision
from virnucpro.embed import embed_file, load_embedder
from virnucpro.errors import VirnucproError
from virnucpro.fasta import Record, read_fasta
from virnucpro.features import read_features
from virnucpro.fileio import atomic_writer
from virnucpro.models.classifier import MLPClassifier, load_classifier
from virnucpro.models.files import ModelPaths
from virnucpro.paths import prepared_files
from virnucpro.prepare import prepare_records, write_prepared
from virnucpro.summarize import chunk_calls

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = 200
REFERENCES = ("fp32", "bf16", "fp16")
COMPARABLE = ("fp32", "bf16", "fp16", "fp8")
DEFAULT_COMPARED = ("bf16", "fp8")
# The project's bar for --precision fp8 (issue 21): ESM-2's features of every frame at least
# this close (cosine) to fp32's, and at most this share of chunk calls changed.
FP8_BAR_MIN_COSINE = 0.9995
FP8_BAR_MAX_CHUNK_CHANGES = 0.001
# below this many chunks, one changed call is already more than FP8_BAR_MAX_CHUNK_CHANGES
MIN_CHUNKS_TO_JUDGE = round(1 / FP8_BAR_MAX_CHUNK_CHANGES)
BAR = (
    f"min cosine >= {FP8_BAR_MIN_COSINE} and at most {FP8_BAR_MAX_CHUNK_CHANGES:.1%} of chunk "
    "calls changed"
)
SIMULATED = (
    "run on the CPU through torch's FP8 kernel (the GPU's FP8 quantization, with exact float32 "
    "accumulation where the GPU accumulates fast): its agreement is close to an FP8 GPU's, its "
    "time is not"
)


def sample_records(path: Path, count: int, seed: int) -> tuple[list[Record], int]:
    """``count`` records drawn uniformly from the whole file (reservoir sampling, seeded: the
    same file and seed give the same sample), in input order, and how many records the file
    holds. Reads the file once, checking it as every stage does."""
    rng = random.Random(seed)
    kept: list[tuple[int, Record]] = []
    total = 0
    for index, record in enumerate(read_fasta(Path(path))):
        total += 1
        if index < count:
            kept.append((index, record))
        else:
            slot = rng.randrange(index + 1)
            if slot < count:
                kept[slot] = (index, record)
    return [record for _, record in sorted(kept, key=lambda pair: pair[0])], total


def compared_precisions(device: torch.device, requested: list[str] | None) -> list[str]:
    """What to compare with the reference: each precision asked for, checked as the embed
    stages check it (fp8 refused on a GPU without FP8 tensor cores; on the CPU simulated); by
    default bf16 and fp8, fp8 left out (with a warning) on a GPU without it."""
    if requested:
        for precision in requested:
            if precision not in COMPARABLE:
                raise VirnucproError(
                    f"--precision: '{precision}' is not one of {', '.join(COMPARABLE)}"
                )
            select_precision(device, precision, simulate_fp8=True)
        return list(dict.fromkeys(requested))
    chosen = []
    for precision in DEFAULT_COMPARED:
        missing = fp8_missing(device) if precision == "fp8" and device.type == "cuda" else None
        if missing:
            log.warning("fp8 not compared: %s", missing.removeprefix("--precision fp8: "))
            continue
        chosen.append(precision)
    return chosen


@dataclass
class Pass:
    """The sample's frames scored with ESM-2 at one precision."""

    precision: str
    ids: list[str]
    esm2: torch.Tensor  # ESM-2's features, the embedder's output rows (frames, dim)
    scores: np.ndarray  # the classifier's (frames, 2): score1 (others), score2 (virus)
    info: dict  # the ESM-2 pass as embed records it: seconds, load_seconds, tokens, ...


def _free(device: torch.device) -> None:
    """Let a model go before the next one loads (load_embedder froze its objects out of the
    collector's reach; a compiled model holds reference cycles)."""
    gc.unfreeze()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _embed(
    kind: str,
    model: Path,
    device: torch.device,
    precision: str,
    prepared: Path,
    outdir: Path,
    compile: bool = False,
) -> Path:
    """One embedding pass with the stage's own functions; features stored as float32."""
    embedder = load_embedder(kind, model, str(device), precision, compile, simulate_fp8=True)
    try:
        return embed_file(embedder, prepared, outdir, feature_dtype="float32")
    finally:
        del embedder
        _free(device)


def _score(
    dna: Path, dna_dim: int, esm: Path, classifier: MLPClassifier, classifier_path: Path,
    precision: str,
) -> Pass:  # fmt: skip
    """Both feature files joined by frame ID (classify's join) and scored (classify's score)."""
    ids, features, _, esm_meta = join_features(dna, esm)
    if features.shape[1] != classifier.input_dim:
        raise VirnucproError(
            f"{classifier_path}: classifier expects {classifier.input_dim} features, the "
            f"models give {features.shape[1]} (DNABERT-S + ESM-2: wrong models for it?)"
        )
    info = json.loads(esm_meta.get("info", "{}"))
    return Pass(precision, ids, features[:, dna_dim:], score(classifier, features).numpy(), info)


def compare(reference: Pass, other: Pass, simulated: bool = False) -> dict:
    """One row of the report: ``other`` against ``reference``, frame by frame."""
    if other.ids != reference.ids:  # the same prepared files, joined the same way
        raise RuntimeError("the passes scored different frames")
    # per frame; a vector with itself can come out a rounding above 1
    cosine = F.cosine_similarity(other.esm2.double(), reference.esm2.double(), dim=1)
    cosine = cosine.clamp(-1.0, 1.0)
    virus = np.abs(other.scores[:, 1].astype(np.float64) - reference.scores[:, 1])
    frames_changed = int((viral_frames(other.scores) != viral_frames(reference.scores)).sum())
    before = chunk_calls(reference.ids, reference.scores)
    after = chunk_calls(other.ids, other.scores)
    chunks_changed = sum(before[chunk] != after[chunk] for chunk in before)
    frames, chunks = len(reference.ids), len(before)
    return {
        "precision": other.precision,
        "simulated": simulated,
        "frames": frames,
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
        "max_virus_score_difference": float(virus.max()),
        "frame_calls_changed": frames_changed,
        "frame_calls_changed_percent": _percent(frames_changed, frames),
        "chunks": chunks,
        "chunk_calls_changed": chunks_changed,
        "chunk_calls_changed_percent": _percent(chunks_changed, chunks),
        "esm2_seconds": other.info.get("seconds"),
        "esm2_load_seconds": other.info.get("load_seconds"),
        "esm2_tokens": other.info.get("tokens"),
        "compiled": other.info.get("compiled"),
    }


def _percent(count: int, total: int) -> float:
    return round(100.0 * count / total, 4) if total else 0.0


def meets_bar(row: dict, reference: str) -> bool | None:
    """Whether a row meets the project's bar for fp8 (FP8_BAR_MIN_COSINE and
    FP8_BAR_MAX_CHUNK_CHANGES); None where that cannot be told: the bar is against fp32, and
    below MIN_CHUNKS_TO_JUDGE chunks a single changed call is more than 0.1%."""
    if reference != "fp32":
        return None
    if row["min_cosine"] < FP8_BAR_MIN_COSINE:
        return False
    if row["chunks"] < MIN_CHUNKS_TO_JUDGE:
        return None
    return row["chunk_calls_changed"] <= FP8_BAR_MAX_CHUNK_CHANGES * row["chunks"]


def verdict(rows: list[dict], reference: str) -> str:
    """The report's last line: whether the fp8 row meets the bar, and if not, why."""
    row = next((r for r in rows if r["precision"] == "fp8"), None)
    if row is None:
        return f"fp8 not compared: no verdict on the project's bar ({BAR})"
    name = "fp8 (simulated)" if row["simulated"] else "fp8"
    if reference != "fp32":
        return (f"{name}: no verdict on the project's bar ({BAR}): it is against fp32, not "
                f"{reference}")  # fmt: skip
    enough = row["chunks"] >= MIN_CHUNKS_TO_JUDGE
    why = []
    if row["min_cosine"] < FP8_BAR_MIN_COSINE:
        why.append(f"min cosine {row['min_cosine']:.6f} < {FP8_BAR_MIN_COSINE}")
    if enough and row["chunk_calls_changed"] > FP8_BAR_MAX_CHUNK_CHANGES * row["chunks"]:
        why.append(f"{row['chunk_calls_changed_percent']:.2f}% of chunk calls changed > "
                   f"{FP8_BAR_MAX_CHUNK_CHANGES:.1%}")  # fmt: skip
    if why:
        return f"{name} does not meet the project's bar ({BAR}): {'; '.join(why)}"
    if not enough:
        return (f"{name} meets the project's bar on cosine; chunk calls not judged: "
                f"{row['chunks']:,} chunks, fewer than the {MIN_CHUNKS_TO_JUDGE:,} that tell "
                f"{FP8_BAR_MAX_CHUNK_CHANGES:.1%} (raise --sample)")  # fmt: skip
    return f"{name} meets the project's bar ({BAR})"


def _check_json_path(path: Path | None) -> None:
    """--json can be written (checked before the work, written after it)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise VirnucproError(f"--json {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise VirnucproError(f"--json {path}: no directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VirnucproError(f"--json {path}: cannot write in {parent}")


def check_precision(
    input_path: Path,
    models: ModelPaths,
    chunk_size: int = 500,
    sample: int = DEFAULT_SAMPLE,
    precisions: list[str] | None = None,
    reference: str = "fp32",
    device: str = "auto",
    compile: bool = False,
    seed: int = 0,
    json_path: Path | None = None,
) -> dict:
    """Entry point: the report (format_report prints it), also written to ``json_path`` if
    given. Everything that can be checked without a model is checked before one loads."""
    started = time.perf_counter()
    if sample < 1:
        raise VirnucproError(f"--sample: must be at least 1 (got {sample})")
    if reference not in REFERENCES:
        raise VirnucproError(f"--reference: '{reference}' is not one of {', '.join(REFERENCES)}")
    _check_json_path(json_path)
    dev = select_device(device)
    select_precision(dev, reference)
    compared = compared_precisions(dev, precisions)
    records, total = sample_records(input_path, sample, seed)
    classifier = load_classifier(models.classifier)
    passes = _passes(input_path, records, models, classifier, chunk_size, dev,
                     [reference, *compared], compile)  # fmt: skip
    rows = [compare(passes[0], p, p.precision == "fp8" and dev.type == "cpu") for p in passes[1:]]
    report = {
        "virnucpro_version": __version__,
        "command": "check-precision",
        "input": str(input_path),
        "sequences_in_input": total,
        "sequences_sampled": len(records),
        "seed": seed,
        "chunk_size": chunk_size,
        "frames": len(passes[0].ids),
        "chunks": len(chunk_calls(passes[0].ids, passes[0].scores)),
        "device": describe_device(dev),
        "compile": compile,
        "models": {name: str(getattr(models, name)) for name in ("esm2", "dnabert", "classifier")},
        "reference": {
            "precision": reference,
            "dnabert_precision": reference,
            "esm2_seconds": passes[0].info.get("seconds"),
            "esm2_load_seconds": passes[0].info.get("load_seconds"),
            "esm2_tokens": passes[0].info.get("tokens"),
        },
        "bar": {
            "precision": "fp8",
            "min_cosine": FP8_BAR_MIN_COSINE,
            "max_chunk_calls_changed_fraction": FP8_BAR_MAX_CHUNK_CHANGES,
        },
        "rows": rows,
        "fp8_meets_bar": next(
            (meets_bar(r, reference) for r in rows if r["precision"] == "fp8"), None
        ),
        "verdict": verdict(rows, reference),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if json_path is not None:
        with atomic_writer(Path(json_path)) as out:
            json.dump(report, out, indent=2)
            out.write("\n")
    return report


def _passes(input_path: Path, records: list[Record], models: ModelPaths,
            classifier: MLPClassifier, chunk_size: int, device: torch.device,
            precisions: list[str], compile: bool) -> list[Pass]:  # fmt: skip
    """The sample prepared (as the prepare stage does), DNABERT-S's features at the first
    precision (the reference), then ESM-2's at each precision in turn, each scored; all in a
    temporary directory, removed after."""
    with tempfile.TemporaryDirectory(prefix="virnucpro-check-precision-") as tmp:
        work = Path(tmp)
        counts = write_prepared(prepare_records(records, chunk_size), work, "sample", chunk_size)
        if not counts.frames_kept:
            raise VirnucproError(
                f"{input_path}: no frame of the {len(records)} sampled sequence(s) is free of "
                "stop codons: nothing to compare (a larger --sample may find some)"
            )
        nucleotide, protein, _ = prepared_files(work, "sample")
        dna = _embed("dnabert", models.dnabert, device, precisions[0], nucleotide, work / "dna")
        dna_dim = read_features(dna)[1].shape[1]
        passes = []
        for precision in precisions:  # each its own pass, the reference too
            simulated = precision == "fp8" and device.type == "cpu"
            log.info("ESM-2 at %s%s", precision, " (simulated on the CPU)" if simulated else "")
            esm = _embed("esm2", models.esm2, device, precision, protein,
                         work / f"esm2-{len(passes)}", compile)  # fmt: skip
            passes.append(_score(dna, dna_dim, esm, classifier, models.classifier, precision))
    return passes


HEADERS = ("precision", "frames", "min cosine vs {ref}", "mean cosine vs {ref}",
           "max |virus score diff|", "frame calls changed", "chunk calls changed",
           "ESM-2 s")  # fmt: skip


def format_report(report: dict) -> str:
    """The report as the command prints it: what was compared, the table, notes, verdict."""
    ref = report["reference"]["precision"]
    lines = [
        f"check-precision: {report['sequences_sampled']:,} of {report['sequences_in_input']:,} "
        f"sequences of {report['input']} (seed {report['seed']}), {report['frames']:,} frames "
        f"in {report['chunks']:,} chunks of {report['chunk_size']} bp",
        f"device: {report['device']}; ESM-2 {'compiled' if report['compile'] else 'eager'}; "
        f"DNABERT-S at {ref} in every row",
        f"reference: ESM-2 at {ref}, {report['reference']['esm2_seconds']:.2f} s",
        "",
    ]
    table = [[h.format(ref=ref) for h in HEADERS]]
    for row in report["rows"]:
        table.append([
            row["precision"] + (" (simulated)" if row["simulated"] else ""),
            f"{row['frames']:,}",
            f"{row['min_cosine']:.6f}",
            f"{row['mean_cosine']:.6f}",
            f"{row['max_virus_score_difference']:.6f}",
            f"{row['frame_calls_changed']:,} ({row['frame_calls_changed_percent']:.2f}%)",
            f"{row['chunk_calls_changed']:,} ({row['chunk_calls_changed_percent']:.2f}%)",
            f"{row['esm2_seconds']:.2f}",
        ])  # fmt: skip
    widths = [max(len(cells[i]) for cells in table) for i in range(len(HEADERS))]
    for cells in table:  # the precision left-aligned, the numbers right-aligned
        padded = [cells[0].ljust(widths[0])]
        padded += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        lines.append("  ".join(padded).rstrip())
    if not report["rows"]:
        lines.append("(no precision compared)")
    lines.append("")
    if any(row["simulated"] for row in report["rows"]):
        lines.append(f"fp8 (simulated): {SIMULATED}.")
    lines.append(report["verdict"])
    return "\n".join(lines) + "\n"
