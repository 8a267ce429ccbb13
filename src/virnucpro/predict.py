"""virnucpro predict: every stage in one process, models loaded once.

The input is split into shards in a work directory under the output directory (which also
checks the whole input before any model is loaded). Each shard goes through prepare ->
embed-dna -> embed-protein -> classify with the functions the CLI stage commands use, while
the next shard is prepared in a separate process; summarize writes the outputs. The work
directory is removed afterwards unless asked to keep it, and on failure.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from virnucpro import __version__
from virnucpro.classify import classify
from virnucpro.embed import LoadedModel, embed_file, load_model
from virnucpro.errors import VirnucproError
from virnucpro.fasta import atomic_writer
from virnucpro.models.classifier import load_classifier
from virnucpro.models.files import ModelPaths
from virnucpro.prepare import prepare, prepare_outputs
from virnucpro.split import split
from virnucpro.summarize import DEFAULT_THRESHOLD, summarize

log = logging.getLogger(__name__)

# Smaller than the Nextflow default: here a shard is only the unit of overlap between host
# work (prepare) and the GPU, so the first, un-overlapped shard should be short.
PREDICT_SHARD_SIZE = 500_000


def predict(
    input_path: Path,
    outdir: Path,
    models: ModelPaths,
    chunk_size: int = 500,
    device: str = "auto",
    precision: str = "auto",
    shard_size: int = PREDICT_SHARD_SIZE,
    esm_batch_tokens: int | None = None,
    dna_batch_tokens: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    feature_dtype: str = "float16",
    keep_work: bool = False,
    compile: bool = False,
) -> dict[str, Path]:
    """Whole pipeline on this machine; returns the output paths."""
    input_path, outdir = Path(input_path), Path(outdir)
    work = outdir / "work"
    wall: dict[str, float] = defaultdict(float)
    started = time.perf_counter()
    if work.exists():
        shutil.rmtree(work)
    try:
        shards = split(input_path, shard_size, work / "shards")
        wall["split"] = time.perf_counter() - started
        log.info("%s: %d shard(s) of about %d bp", input_path, len(shards), shard_size)

        t = time.perf_counter()
        classifier = load_classifier(models.classifier)
        dna = load_model("dnabert", models.dnabert, device, precision)
        esm = load_model("esm2", models.esm2, device, precision, compile=compile)
        if dna.dim + esm.dim != classifier.input_dim:
            raise VirnucproError(
                f"{models.classifier}: classifier expects {classifier.input_dim} features, "
                f"DNABERT-S + ESM-2 give {dna.dim} + {esm.dim}"
            )
        wall["load_models"] = time.perf_counter() - t

        shard_files: list[Path] = []
        # prepare is pure-Python host work: a separate process keeps it from competing with
        # this one (which feeds the GPU) for the interpreter lock.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            prefixes = [shard.name.removesuffix(".fa") for shard in shards]
            pending = [
                pool.submit(prepare, shard, chunk_size, work, prefix)
                for shard, prefix in zip(shards, prefixes, strict=True)
            ]
            for number, (prefix, job) in enumerate(zip(prefixes, pending, strict=True), 1):
                log.info("shard %d/%d (%s)", number, len(shards), prefix)
                t = time.perf_counter()
                job.result()
                wall["prepare_wait"] += time.perf_counter() - t
                nucleotide, protein, sequences = prepare_outputs(work, prefix)
                scores, meta = _score_shard(
                    nucleotide, protein, work, dna, esm, classifier, models.classifier,
                    chunk_size, dna_batch_tokens, esm_batch_tokens, feature_dtype, wall,
                )  # fmt: skip
                shard_files += [sequences, scores, meta]

        t = time.perf_counter()
        run_info = {
            "command": "predict",
            "input": str(input_path),
            "parameters": {
                "shard_size": shard_size,
                "feature_dtype": feature_dtype,
                "precision_requested": precision,
                "device_requested": device,
                "compile": compile,
            },
            "load_seconds": {
                "dnabert": round(dna.load_seconds, 3),
                "esm2": round(esm.load_seconds, 3),
            },
        }
        paths = summarize(shard_files, outdir, threshold, run_info)
        wall["summarize"] = time.perf_counter() - t
        wall["total"] = time.perf_counter() - started
        _add_wall_times(paths["run"], wall)
    finally:
        if not keep_work:  # intermediate files must not be mistaken for results
            shutil.rmtree(work, ignore_errors=True)
    log.info("virnucpro %s: outputs in %s (%.1f s)", __version__, outdir, wall["total"])
    return paths


def _score_shard(
    nucleotide: Path,
    protein: Path,
    work: Path,
    dna: LoadedModel,
    esm: LoadedModel,
    classifier,
    classifier_path: Path,
    chunk_size: int,
    dna_batch_tokens: int | None,
    esm_batch_tokens: int | None,
    feature_dtype: str,
    wall: dict[str, float],
) -> tuple[Path, Path]:
    """embed-dna, embed-protein and classify of one prepared shard."""
    t = time.perf_counter()
    dna_features = embed_file(dna, nucleotide, work, dna_batch_tokens, feature_dtype)
    wall["embed-dna"] += time.perf_counter() - t
    t = time.perf_counter()
    esm_features = embed_file(esm, protein, work, esm_batch_tokens, feature_dtype)
    wall["embed-protein"] += time.perf_counter() - t
    t = time.perf_counter()
    result = classify(dna_features, esm_features, classifier, classifier_path, chunk_size, work)
    wall["classify"] += time.perf_counter() - t
    return result


def _add_wall_times(run_json: Path, wall: dict[str, float]) -> None:
    """Wall time per stage, known only once summarize has written run.json."""
    record = json.loads(run_json.read_text())
    record["wall_seconds"] = {k: round(v, 3) for k, v in wall.items()}
    with atomic_writer(run_json) as out:
        json.dump(record, out, indent=2)
        out.write("\n")
