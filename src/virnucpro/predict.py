"""virnucpro predict: every stage on this machine, on all its GPUs.

The input is split into shards in OUTDIR/work (which checks the whole input before any model
is loaded). Worker processes, one per GPU (or --workers on the CPU), each load the models
once and take shards from a queue: prepare (the stage command, in its own process) ->
embed-dna -> embed-protein -> classify, with the functions the stage commands use.
summarize then writes the outputs. A shard that fails is listed in failed_files.txt and its
sequences are `unfinished` in the summary; the other shards finish. With --resume, shards
finished by an earlier run with the same input, models and parameters are reused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from virnucpro import __version__
from virnucpro.device import describe_device, no_gpu_error, select_device, select_precision
from virnucpro.errors import VirnucproError
from virnucpro.fasta import atomic_writer
from virnucpro.models.files import ModelPaths, sha256
from virnucpro.progress import WorkerProgress
from virnucpro.runner import WorkerConfig, is_finished, run_shards, shard_files
from virnucpro.split import split
from virnucpro.summarize import DEFAULT_THRESHOLD, summarize

log = logging.getLogger(__name__)

# Smaller than the Nextflow default: here a shard is the unit of work for the queue, so
# several per GPU keep every GPU busy to the end.
PREDICT_SHARD_SIZE = 500_000
FAILED_FILES = "failed_files.txt"


@dataclass
class PredictResult:
    outputs: dict[str, Path]
    failed: int
    shards: int


def plan_devices(device: str, gpus: str | None, workers: int | None) -> list[str]:
    """One entry per worker: every visible GPU (or those of --gpus), else --workers CPUs
    ('auto'; 'cuda' requires a GPU), or the one device given ('cpu', 'cuda:N')."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        try:
            ids = [int(part) for part in gpus.split(",") if part.strip()]
        except ValueError:
            raise VirnucproError(f"--gpus: expected GPU numbers like 0,2 (got '{gpus}')") from None
        bad = [i for i in ids if not 0 <= i < visible]
        if not ids or bad:
            raise VirnucproError(f"--gpus {gpus}: {visible} GPU(s) visible (0..{visible - 1})")
        return [f"cuda:{i}" for i in dict.fromkeys(ids)]
    if device in ("auto", "cuda") and visible:
        return [f"cuda:{i}" for i in range(visible)]
    if device == "cuda":  # a GPU is required
        raise no_gpu_error(device)
    if device in ("auto", "cpu"):
        return ["cpu"] * (workers or 1)
    return [str(select_device(device))]


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
    gpus: str | None = None,
    workers: int | None = None,
    resume: bool = False,
    threads: int | None = None,
) -> PredictResult:
    """Whole pipeline on this machine; returns the outputs and how many shards failed."""
    import torch

    input_path, outdir = Path(input_path), Path(outdir)
    work = outdir / "work"
    started = time.perf_counter()
    devices = plan_devices(device, gpus, workers)
    if work.exists() and not resume:
        shutil.rmtree(work)
    cleanup = not keep_work
    try:
        shards = split(input_path, shard_size, work / "shards")  # checks the whole input
        split_seconds = time.perf_counter() - started
        for name in dict.fromkeys(devices):
            dev = torch.device(name)
            log.info("device %s, precision %s", describe_device(dev),
                     select_precision(dev, precision))  # fmt: skip
        log.info("%s: %d shard(s) of about %d bp, %d worker(s)", input_path, len(shards),
                 shard_size, len(devices))  # fmt: skip
        threads = threads or max(1, (os.cpu_count() or 1) // len(devices))
        on_cpu = devices[0] == "cpu"
        # hashed once here, not by every worker (read from `models prepare`'s sidecars)
        digests = [sha256(p) for p in (models.esm2, models.dnabert, models.classifier)]
        # What a finished shard must have been made with to be reused by --resume: anything
        # that can change a digit of the results (on the CPU, the thread count does).
        run_key = json.dumps({
            "virnucpro": __version__,
            "models": digests,
            "chunk_size": chunk_size, "feature_dtype": feature_dtype, "compile": compile,
            "precision": select_precision(torch.device(devices[0]), precision),
            "device_type": "cpu" if on_cpu else "cuda", "threads": threads if on_cpu else None,
        }, sort_keys=True)  # fmt: skip
        reused = [s for s in shards if resume and is_finished(work, s, run_key)]
        pending = [s for s in shards if s not in reused]
        if reused:
            log.info("resume: reusing %d finished shard(s), %d to run", len(reused), len(pending))
        config = WorkerConfig(
            models=(models.esm2, models.dnabert, models.classifier),
            chunk_size=chunk_size, precision=precision, work=work,
            esm_batch_tokens=esm_batch_tokens, dna_batch_tokens=dna_batch_tokens,
            feature_dtype=feature_dtype, compile=compile, shard_key=run_key,
            threads=threads, model_digests=(digests[0], digests[1]),
            log_level=logging.getLogger().getEffectiveLevel(),
        )  # fmt: skip
        t = time.perf_counter()
        outcomes, ready_seconds = {}, 0.0
        if pending:
            with WorkerProgress(len(pending)) as progress:
                outcomes, ready_seconds = run_shards(pending, devices, config, progress)
        shards_seconds = time.perf_counter() - t

        failed = [o for o in outcomes.values() if o.failed_stage]
        failed_path = outdir / FAILED_FILES
        if failed:
            with atomic_writer(failed_path) as out:
                for o in sorted(failed, key=lambda o: o.prefix):
                    out.write(f"{o.shard}|{o.failed_stage}|{o.error}\n")
            cleanup = False  # keep the finished shards for --resume
        else:
            failed_path.unlink(missing_ok=True)
        finished = [s for s in shards if s not in {o.shard for o in failed}]
        files = [f for s in finished for f in shard_files(work, s.name.removesuffix(".fa"))]
        run_info = {
            "command": "predict",
            "input": str(input_path),
            "parameters": {
                "shard_size": shard_size, "feature_dtype": feature_dtype,
                "precision_requested": precision, "device_requested": device,
                "workers": devices, "threads": config.threads, "compile": compile,
                "resume": resume,
            },
            "shards_reused": len(reused),
            "shards_failed": len(failed),
            "shard_seconds": {o.prefix: o.stats for o in outcomes.values() if o.stats},
        }  # fmt: skip
        paths: dict[str, Path] = {}
        if finished:  # with every shard failed there is nothing to summarize
            paths = summarize(files, outdir, threshold, run_info, [o.shard for o in failed])
            _add_wall_times(paths["run"], {
                "split": round(split_seconds, 3),
                "workers_ready": round(ready_seconds, 3),
                "shards": round(shards_seconds, 3),
                "total": round(time.perf_counter() - started, 3),
            })  # fmt: skip
    except BaseException as e:
        if resume or isinstance(e, KeyboardInterrupt):
            cleanup = False  # keep the finished shards for (another) --resume
        raise
    finally:
        if cleanup:  # intermediate files must not be mistaken for results
            shutil.rmtree(work, ignore_errors=True)
    if failed:
        log.error("%d of %d shard(s) failed: %s", len(failed), len(shards), failed_path)
    log.info("virnucpro %s: outputs in %s (%.1f s)", __version__, outdir,
             time.perf_counter() - started)  # fmt: skip
    return PredictResult(paths, len(failed), len(shards))


def _add_wall_times(run_json: Path, wall: dict[str, float]) -> None:
    """Wall times, known only once summarize has written run.json."""
    record = json.loads(run_json.read_text())
    record["wall_seconds"] = wall
    with atomic_writer(run_json) as out:
        json.dump(record, out, indent=2)
        out.write("\n")
