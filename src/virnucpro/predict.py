"""virnucpro predict: every stage on this machine, on all its GPUs.

The input is split into shards in OUTDIR/virnucpro-work (which checks the whole input before
any model is loaded). Worker processes, one per GPU (or --workers on the CPU), each load the models
once and take shards from a queue: prepare (in a process of the worker's own) -> embed-dna ->
embed-protein -> classify, with the entry functions the stage commands call (runner.py).
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
from virnucpro.paths import (
    DONE,
    FAILED_FILES,
    OWNER_FILE,
    RESULT_FILES,
    WORK_DIRNAME,
    shard_prefix,
    shard_results,
)
from virnucpro.progress import WorkerProgress
from virnucpro.runner import ShardOutcome, WorkerConfig, is_finished, run_shards
from virnucpro.split import split
from virnucpro.summarize import DEFAULT_THRESHOLD, summarize

log = logging.getLogger(__name__)

# Smaller than the Nextflow default: here a shard is the unit of work for the queue, so
# several per GPU keep every GPU busy to the end.
PREDICT_SHARD_SIZE = 500_000


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


@dataclass
class _Plan:
    """What a predict run works with, decided before any shard runs."""

    input_path: Path
    outdir: Path
    work: Path
    devices: list[str]
    threads: int
    parameters: dict  # what a finished shard must have been made with to be reused
    earlier: dict | None  # the run that left its intermediates in work, if any
    created: Path | None  # the topmost directory this run made (removed on a rejected input)
    started: float


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
    lanes: int | None = None,
) -> PredictResult:
    """Whole pipeline on this machine; returns the outputs and how many shards failed.
    ``lanes``: shards each worker embeds at once (runner.py; default 2 on a GPU, 1 on the
    CPU)."""
    started = time.perf_counter()
    devices = plan_devices(device, gpus, workers)
    options = {"chunk_size": chunk_size, "feature_dtype": feature_dtype, "compile": compile,
               "precision": precision, "threads": threads}  # fmt: skip
    plan = _plan(Path(input_path), Path(outdir), models, devices, resume, options, started)
    shards = _split(plan, shard_size)
    split_seconds = time.perf_counter() - started
    log.info("%s: %d shard(s) of about %d bp, %d worker(s) on %s", plan.input_path, len(shards),
             shard_size, len(plan.devices), ", ".join(sorted(set(plan.devices))))  # fmt: skip
    run_key = json.dumps(plan.parameters, sort_keys=True)
    reused = {s for s in shards if resume and is_finished(plan.work, s, run_key)}
    if resume:
        log.info("resume: %s", explain_resume(plan.earlier, plan.parameters, len(reused),
                                              len(shards)))  # fmt: skip
    digests = plan.parameters["models"]
    config = WorkerConfig(
        models=(models.esm2, models.dnabert, models.classifier),
        chunk_size=chunk_size, precision=precision, work=plan.work,
        esm_batch_tokens=esm_batch_tokens, dna_batch_tokens=dna_batch_tokens,
        feature_dtype=feature_dtype, compile=compile, shard_key=run_key,
        threads=plan.threads, model_digests=(digests[0], digests[1]), lanes=lanes,
        log_level=logging.getLogger().getEffectiveLevel(),
    )  # fmt: skip
    pending = [s for s in shards if s not in reused]
    outcomes, ready_seconds, shards_seconds = _run(plan, pending, config)
    failed = [o for o in outcomes.values() if o.failed_stage]
    _write_failures(plan.outdir, failed)
    run_info = {
        "command": "predict",
        "input": str(plan.input_path),
        "parameters": {
            "shard_size": shard_size, "feature_dtype": feature_dtype,
            "precision_requested": precision, "device_requested": device,
            "workers": plan.devices, "threads": config.threads, "compile": compile,
            "resume": resume,
        },
        "shards_reused": len(reused),
        "shards_failed": len(failed),
        "shard_seconds": {o.prefix: o.stats for o in outcomes.values() if o.stats},
    }  # fmt: skip
    wall = {"split": split_seconds, "workers_ready": ready_seconds, "shards": shards_seconds}
    paths = _summarize(plan, shards, failed, threshold, run_info, wall)
    _clean_up(plan, paths, failed, len(shards), keep_work)
    log.info("virnucpro %s: done in %.1f s", __version__, time.perf_counter() - started)
    return PredictResult(paths, len(failed), len(shards))


def _plan(input_path: Path, outdir: Path, models: ModelPaths, devices: list[str], resume: bool,
          options: dict, started: float) -> _Plan:  # fmt: skip
    """The parameters and the state of OUTDIR, checked before anything is written."""
    import torch

    check_outdir(outdir, resume, input_path)
    # every worker's device must take the precision (fp8: FP8 tensor cores), checked before
    # anything is written; the first worker's is the run's
    precisions = [select_precision(torch.device(d), options["precision"])
                  for d in dict.fromkeys(devices)]  # fmt: skip
    created = _first_missing(outdir)  # removed again if the input is rejected
    work = outdir / WORK_DIRNAME
    threads = options["threads"] or max(1, (os.cpu_count() or 1) // len(devices))
    on_cpu = devices[0] == "cpu"
    # What a finished shard must have been made with to be reused by --resume: anything
    # that can change a digit of the results (on the CPU, the thread count does).
    parameters = {
        "virnucpro": __version__,
        "models": [sha256(p) for p in (models.esm2, models.dnabert, models.classifier)],
        "chunk_size": options["chunk_size"], "feature_dtype": options["feature_dtype"],
        "compile": options["compile"],
        "precision": precisions[0],
        "device_type": "cpu" if on_cpu else "cuda", "threads": threads if on_cpu else None,
    }  # fmt: skip
    return _Plan(input_path, outdir, work, devices, threads, parameters, _read_owner(work),
                 created, started)  # fmt: skip


def _split(plan: _Plan, shard_size: int) -> list[Path]:
    """The input split into shards in the work directory (which checks the whole input); a
    rejected input leaves nothing behind."""
    work = plan.work
    try:
        if plan.earlier is None:
            work.mkdir(parents=True, exist_ok=True)
            _write_owner(work, plan.input_path, plan.parameters)  # ours from the start
        shards = split(plan.input_path, shard_size, work / "shards")  # checks the whole input
    except VirnucproError:
        if plan.created is not None:  # a rejected input leaves nothing behind
            shutil.rmtree(plan.created, ignore_errors=True)
        elif plan.earlier is None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    _write_owner(work, plan.input_path, plan.parameters)  # what the next --resume compares with
    return shards


def _run(plan: _Plan, pending: list[Path], config: WorkerConfig) -> tuple[dict, float, float]:
    """The shards through the workers: their outcomes, the seconds until the first worker
    was ready, the seconds of it all. On an error or Ctrl-C the finished shards are kept
    (and the run says how to resume), unless there are none and nothing was there before."""
    work = plan.work
    try:
        started = time.perf_counter()
        outcomes, ready_seconds = {}, 0.0
        if pending:
            with WorkerProgress(len(pending)) as progress:
                outcomes, ready_seconds = run_shards(pending, plan.devices, config, progress)
        return outcomes, ready_seconds, time.perf_counter() - started
    except BaseException as e:
        kept = len(list(work.glob(f"*{DONE}")))
        if not kept and plan.earlier is None:  # nothing worth keeping: leave no trace
            shutil.rmtree(plan.created or work, ignore_errors=True)
            raise
        hint = f"{kept} finished shard(s) kept in {work}; rerun the same command with --resume"
        if isinstance(e, KeyboardInterrupt):
            log.warning("interrupted: %s", hint)
            raise
        if isinstance(e, VirnucproError):
            raise VirnucproError(f"{e} ({hint})") from None
        raise


def _write_failures(outdir: Path, failed: list[ShardOutcome]) -> None:
    """failed_files.txt lists the failed shards; a run without failures removes it."""
    failed_path = outdir / FAILED_FILES
    if failed:
        with atomic_writer(failed_path) as out:
            for o in sorted(failed, key=lambda o: o.prefix):
                out.write(f"{o.shard}|{o.failed_stage}|{o.error}\n")
    else:
        failed_path.unlink(missing_ok=True)


def _summarize(plan: _Plan, shards: list[Path], failed: list[ShardOutcome], threshold: float,
               run_info: dict, wall: dict[str, float]) -> dict[str, Path]:  # fmt: skip
    """The outputs from every finished shard (none if every shard failed)."""
    failed_shards = {o.shard for o in failed}
    finished = [s for s in shards if s not in failed_shards]
    if not finished:  # with every shard failed there is nothing to summarize
        return {}
    files = [f for s in finished for f in shard_results(plan.work, shard_prefix(s))]
    paths = summarize(files, plan.outdir, threshold, run_info, [o.shard for o in failed])
    wall = {**wall, "total": time.perf_counter() - plan.started}
    _add_wall_times(paths["run"], {key: round(value, 3) for key, value in wall.items()})
    return paths


def _clean_up(plan: _Plan, paths: dict, failed: list[ShardOutcome], shards: int,
              keep_work: bool) -> None:  # fmt: skip
    """Say what is whose; remove the intermediates of a run that succeeded."""
    outdir = plan.outdir
    stale = [name for name in RESULT_FILES[:-1] if (outdir / name).exists()]
    if not paths and stale:  # a --resume in which every shard failed
        log.warning("%s: %s are an earlier run's results, not this run's", outdir,
                    ", ".join(stale))  # fmt: skip
    if failed:
        log.error("%d of %d shard(s) failed: %s; the finished ones are kept in %s for --resume",
                  len(failed), shards, outdir / FAILED_FILES, plan.work)  # fmt: skip
    elif not keep_work:  # the run succeeded: its intermediates go
        shutil.rmtree(plan.work, ignore_errors=True)


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
