"""virnucpro predict: every stage on this machine, on all its GPUs.

The input is split into shards in OUTDIR/virnucpro-work (which checks the whole input before
any model is loaded). Worker processes, one per GPU (or --workers on the CPU), each load the models
once and take shards from a queue: prepare (the stage command, in its own process) ->
embed-dna -> embed-protein -> classify, with the functions the stage commands use.
summarize then writes the outputs. A shard that fails is listed in failed_files.txt and its
sequences are `unfinished` in the summary; the other shards finish. With --resume, shards
finished by an earlier run with the same input, models and parameters are reused.

Nothing of the user's is deleted: the work directory carries an owner file, is removed only
after a run succeeded, and finished shards survive every failure; results already in OUTDIR
are replaced only by a --resume of that run.
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
from virnucpro.device import no_gpu_error, select_device, select_precision
from virnucpro.errors import VirnucproError
from virnucpro.fileio import atomic_writer
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
WORK_DIRNAME = "virnucpro-work"
OWNER_FILE = "virnucpro-work.json"  # in the work directory: made by predict, and with what
RESULT_FILES = ("prediction_results.txt", "prediction_results_highestscore.csv",
                "virnucpro_summary.tsv", "run.json", FAILED_FILES)  # fmt: skip


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
        if not visible:
            raise VirnucproError(f"--gpus {gpus}: no GPU is visible on this machine")
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
    work = outdir / WORK_DIRNAME
    started = time.perf_counter()
    devices = plan_devices(device, gpus, workers)
    check_outdir(outdir, resume, input_path)
    created = _first_missing(outdir)  # removed again if the input is rejected
    earlier = _read_owner(work)  # the run that left its intermediates there, if any
    threads = threads or max(1, (os.cpu_count() or 1) // len(devices))
    on_cpu = devices[0] == "cpu"
    # What a finished shard must have been made with to be reused by --resume: anything
    # that can change a digit of the results (on the CPU, the thread count does).
    parameters = {
        "virnucpro": __version__,
        "models": [sha256(p) for p in (models.esm2, models.dnabert, models.classifier)],
        "chunk_size": chunk_size, "feature_dtype": feature_dtype, "compile": compile,
        "precision": select_precision(torch.device(devices[0]), precision),
        "device_type": "cpu" if on_cpu else "cuda", "threads": threads if on_cpu else None,
    }  # fmt: skip
    try:
        if earlier is None:
            work.mkdir(parents=True, exist_ok=True)
            _write_owner(work, input_path, parameters)  # ours from the start
        shards = split(input_path, shard_size, work / "shards")  # checks the whole input
    except VirnucproError:
        if created is not None:  # a rejected input leaves nothing behind
            shutil.rmtree(created, ignore_errors=True)
        elif earlier is None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    split_seconds = time.perf_counter() - started
    _write_owner(work, input_path, parameters)  # what the next --resume compares with
    log.info("%s: %d shard(s) of about %d bp, %d worker(s) on %s", input_path, len(shards),
             shard_size, len(devices), ", ".join(sorted(set(devices))))  # fmt: skip
    run_key = json.dumps(parameters, sort_keys=True)
    reused = {s for s in shards if resume and is_finished(work, s, run_key)}
    pending = [s for s in shards if s not in reused]
    if resume:
        log.info("resume: %s", explain_resume(earlier, parameters, len(reused), len(shards)))
    digests = parameters["models"]
    config = WorkerConfig(
        models=(models.esm2, models.dnabert, models.classifier),
        chunk_size=chunk_size, precision=precision, work=work,
        esm_batch_tokens=esm_batch_tokens, dna_batch_tokens=dna_batch_tokens,
        feature_dtype=feature_dtype, compile=compile, shard_key=run_key,
        threads=threads, model_digests=(digests[0], digests[1]),
        log_level=logging.getLogger().getEffectiveLevel(),
    )  # fmt: skip
    try:
        t = time.perf_counter()
        outcomes, ready_seconds = {}, 0.0
        if pending:
            with WorkerProgress(len(pending)) as progress:
                outcomes, ready_seconds = run_shards(pending, devices, config, progress)
        shards_seconds = time.perf_counter() - t
    except BaseException as e:
        kept = len(list(work.glob("*.done.json")))
        if not kept and earlier is None:  # nothing worth keeping: leave no trace
            shutil.rmtree(created or work, ignore_errors=True)
            raise
        hint = f"{kept} finished shard(s) kept in {work}; rerun the same command with --resume"
        if isinstance(e, KeyboardInterrupt):
            log.warning("interrupted: %s", hint)
            raise
        if isinstance(e, VirnucproError):
            raise VirnucproError(f"{e} ({hint})") from None
        raise

    failed = [o for o in outcomes.values() if o.failed_stage]
    failed_path = outdir / FAILED_FILES
    if failed:
        with atomic_writer(failed_path) as out:
            for o in sorted(failed, key=lambda o: o.prefix):
                out.write(f"{o.shard}|{o.failed_stage}|{o.error}\n")
    else:
        failed_path.unlink(missing_ok=True)
    failed_shards = {o.shard for o in failed}
    finished = [s for s in shards if s not in failed_shards]
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
    stale = [name for name in RESULT_FILES[:-1] if (outdir / name).exists()]
    if not finished and stale:  # a --resume in which every shard failed
        log.warning("%s: %s are an earlier run's results, not this run's", outdir,
                    ", ".join(stale))  # fmt: skip
    if failed:
        log.error("%d of %d shard(s) failed: %s; the finished ones are kept in %s for --resume",
                  len(failed), len(shards), failed_path, work)  # fmt: skip
    elif not keep_work:  # the run succeeded: its intermediates go
        shutil.rmtree(work, ignore_errors=True)
    log.info("virnucpro %s: done in %.1f s", __version__, time.perf_counter() - started)
    return PredictResult(paths, len(failed), len(shards))


def check_outdir(outdir: Path, resume: bool, input_path: Path) -> None:
    """Refuse an OUTDIR whose files this run would replace or delete: results of an earlier
    run (unless --resume finishes that run: same input, its work directory still there), a
    work directory that is not predict's own."""
    if outdir.exists() and not outdir.is_dir():
        raise VirnucproError(f"--outdir {outdir}: exists and is not a directory")
    work = outdir / WORK_DIRNAME
    earlier = _read_owner(work)
    if work.exists() and earlier is None:
        raise VirnucproError(f"{work}: exists but was not made by virnucpro predict; "
                             "choose another --outdir")  # fmt: skip
    if earlier is not None:
        if not resume:
            raise VirnucproError(f"{work}: holds an earlier run's intermediates; add --resume "
                                 "to reuse its finished shards, or remove it")  # fmt: skip
        if earlier.get("input") != str(input_path.resolve()):
            raise VirnucproError(f"{work}: holds a run of {earlier.get('input')}; --resume "
                                 f"continues only that input (not {input_path})")  # fmt: skip
        return
    present = [name for name in RESULT_FILES if (outdir / name).exists()]
    if present:
        nothing = "; nothing to resume there" if resume else ""
        raise VirnucproError(f"{outdir}: already holds results ({', '.join(present)}){nothing}; "
                             "choose another --outdir or remove them")  # fmt: skip


def explain_resume(earlier: dict | None, parameters: dict, reused: int, total: int) -> str:
    """Why --resume reuses what it reuses, in one line."""
    if earlier is None:
        return "no earlier run's intermediates in the output directory: running every shard"
    if reused:
        return f"reusing {reused} of {total} finished shard(s)"
    before = earlier.get("parameters", {})
    changed = [f"{key} was {before.get(key)}, now {value}" for key, value in parameters.items()
               if key != "models" and before.get(key) != value]  # fmt: skip
    if before.get("models") != parameters["models"]:
        changed.append("other model files")
    if changed:
        return "reusing nothing: " + "; ".join(changed)
    return "reusing nothing: no shard of this input was finished by the earlier run"


def _first_missing(path: Path) -> Path | None:
    """The topmost directory of ``path`` that does not exist yet (None if it exists)."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _read_owner(work: Path) -> dict | None:
    try:
        record = json.loads((work / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return (
        record
        if isinstance(record, dict) and record.get("made_by") == "virnucpro predict"
        else None
    )


def _write_owner(work: Path, input_path: Path, parameters: dict) -> None:
    with atomic_writer(work / OWNER_FILE) as out:
        json.dump({"made_by": "virnucpro predict", "input": str(input_path.resolve()),
                   "parameters": parameters}, out, indent=2)  # fmt: skip
        out.write("\n")


def _add_wall_times(run_json: Path, wall: dict[str, float]) -> None:
    """Wall times, known only once summarize has written run.json."""
    record = json.loads(run_json.read_text())
    record["wall_seconds"] = wall
    with atomic_writer(run_json) as out:
        json.dump(record, out, indent=2)
        out.write("\n")
