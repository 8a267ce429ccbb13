"""virnucpro predict: every stage in one process, models loaded once.

The input is split into shards in a work directory under the output directory, each shard
goes through prepare -> embed-dna -> embed-protein -> classify with the stage functions the
CLI stage commands use, and summarize writes the outputs. The work directory is removed
after success unless asked to keep it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from virnucpro import __version__
from virnucpro.classify import classify
from virnucpro.embed import embed_file, load_model
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
    outdir = Path(outdir)
    work = outdir / "work"
    wall: dict[str, float] = defaultdict(float)
    started = time.perf_counter()

    classifier = load_classifier(models.classifier)
    dna_model = load_model("dnabert", models.dnabert, device, precision)
    esm_model = load_model("esm2", models.esm2, device, precision, compile=compile)
    if dna_model.dim + esm_model.dim != classifier.input_dim:
        raise VirnucproError(
            f"{models.classifier}: classifier expects {classifier.input_dim} features, "
            f"DNABERT-S + ESM-2 give {dna_model.dim} + {esm_model.dim}"
        )
    wall["load_models"] = time.perf_counter() - started

    if work.exists():
        shutil.rmtree(work)
    try:
        paths = _run_shards(
            input_path, outdir, work, models, classifier, dna_model, esm_model, chunk_size,
            shard_size, esm_batch_tokens, dna_batch_tokens, threshold, feature_dtype, wall,
        )  # fmt: skip
    except BaseException:
        if not keep_work:  # intermediate files must not be mistaken for results
            shutil.rmtree(work, ignore_errors=True)
        raise
    wall["total"] = time.perf_counter() - started
    _add_wall_times(paths["run"], wall, precision, device)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info("virnucpro %s: outputs in %s (%.1f s)", __version__, outdir, wall["total"])
    return paths


def _run_shards(
    input_path, outdir, work, models, classifier, dna_model, esm_model, chunk_size,
    shard_size, esm_batch_tokens, dna_batch_tokens, threshold, feature_dtype, wall,
) -> dict[str, Path]:  # fmt: skip
    t = time.perf_counter()
    shards = split(input_path, shard_size, work / "shards")
    wall["split"] = time.perf_counter() - t
    log.info("%s: %d shard(s) of about %d bp", input_path, len(shards), shard_size)

    def prepare_shard(shard: Path) -> tuple[Path, Path, Path]:
        prefix = shard.name.removesuffix(".fa")
        prepare(shard, chunk_size, work, prefix)
        return prepare_outputs(work, prefix)

    shard_files: list[Path] = []
    # The next shard is prepared in a thread while the GPU embeds this one (prepare is host
    # work; the main thread mostly waits on the GPU).
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare_shard, shards[0]) if shards else None
        for number in range(1, len(shards) + 1):
            log.info("shard %d/%d (%s)", number, len(shards), shards[number - 1].name)
            t = time.perf_counter()
            nucleotide, protein, sequences = pending.result()
            wall["prepare_wait"] += time.perf_counter() - t
            if number < len(shards):
                pending = pool.submit(prepare_shard, shards[number])
            shard_files += _embed_and_classify(
                nucleotide, protein, sequences, work, dna_model, esm_model, classifier,
                models.classifier, chunk_size, dna_batch_tokens, esm_batch_tokens,
                feature_dtype, wall,
            )  # fmt: skip
    return _summarize(input_path, outdir, shard_files, shard_size, feature_dtype, threshold,
                      dna_model, esm_model, wall)  # fmt: skip


def _embed_and_classify(
    nucleotide, protein, sequences, work, dna_model, esm_model, classifier, classifier_path,
    chunk_size, dna_batch_tokens, esm_batch_tokens, feature_dtype, wall,
) -> list[Path]:  # fmt: skip
    t = time.perf_counter()
    dna = embed_file(dna_model, nucleotide, work, dna_batch_tokens, feature_dtype)
    wall["embed-dna"] += time.perf_counter() - t
    t = time.perf_counter()
    esm = embed_file(esm_model, protein, work, esm_batch_tokens, feature_dtype)
    wall["embed-protein"] += time.perf_counter() - t
    t = time.perf_counter()
    scores, meta = classify(dna, esm, classifier, classifier_path, chunk_size, work)
    wall["classify"] += time.perf_counter() - t
    return [sequences, scores, meta]


def _summarize(
    input_path, outdir, shard_files, shard_size, feature_dtype, threshold, dna_model,
    esm_model, wall,
) -> dict[str, Path]:  # fmt: skip
    t = time.perf_counter()
    run_info = {
        "command": "predict",
        "input": str(input_path),
        "parameters": {"shard_size": shard_size, "feature_dtype": feature_dtype},
        "load_seconds": {
            "dnabert": round(dna_model.load_seconds, 3),
            "esm2": round(esm_model.load_seconds, 3),
        },
    }
    paths = summarize(shard_files, outdir, threshold, run_info)
    wall["summarize"] = time.perf_counter() - t
    return paths


def _add_wall_times(run_json: Path, wall: dict[str, float], precision: str, device: str) -> None:
    """Wall time per stage, known only once summarize has finished writing run.json."""
    record = json.loads(run_json.read_text())
    record["parameters"].update(precision_requested=precision, device_requested=device)
    record["wall_seconds"] = {k: round(v, 3) for k, v in wall.items()}
    with atomic_writer(run_json) as out:
        json.dump(record, out, indent=2)
        out.write("\n")
