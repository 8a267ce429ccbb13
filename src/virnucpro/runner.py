"""Worker processes for predict: one per GPU (or --workers on the CPU).

Each worker loads the models once on its device, says it is ready, and then gets one shard
at a time: the main process hands the next shard to whichever worker reports back (done,
with its peak memory, or failed, with the stage and message), so a slow device never holds
the others back, and the main process always knows which shard each worker holds. A worker
that dies is replaced and its shard gets one more try.
"""

from __future__ import annotations

import gc
import json
import logging
import logging.handlers
import multiprocessing
import os
import queue
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from virnucpro.errors import VirnucproError

log = logging.getLogger(__name__)

# Test hooks (documented in tests/test_workers.py): make a shard fail at a stage, or make
# the worker holding a shard die on the first try.
FAIL_ENV = "VIRNUCPRO_TEST_FAIL"  # "shard_00002:embed-dna"
CRASH_ENV = "VIRNUCPRO_TEST_CRASH"  # "shard_00003"


@dataclass(frozen=True)
class WorkerConfig:
    models: tuple[Path, Path, Path]  # esm2, dnabert, classifier
    chunk_size: int
    precision: str
    work: Path
    esm_batch_tokens: int | None
    dna_batch_tokens: int | None
    feature_dtype: str
    compile: bool
    shard_key: str  # what a finished shard must match to be reused: models + parameters
    threads: int | None  # torch threads per CPU worker
    log_level: int = logging.INFO


@dataclass
class ShardOutcome:
    prefix: str
    shard: Path
    failed_stage: str | None = None
    error: str | None = None
    attempts: int = 0
    stats: dict = field(default_factory=dict)


def done_marker(work: Path, prefix: str) -> Path:
    return work / f"{prefix}.done.json"


def shard_files(work: Path, prefix: str) -> list[Path]:
    return [work / f"{prefix}.{k}" for k in ("sequences.tsv", "scores.tsv", "scores.json")]


def shard_key(shard: Path, run_key: str) -> str:
    import hashlib

    return hashlib.sha256(run_key.encode() + b"\0" + shard.read_bytes()).hexdigest()


def is_finished(work: Path, shard: Path, run_key: str) -> bool:
    """A shard's outputs are reusable iff its marker names this shard's content with these
    models and parameters, and the files are there."""
    prefix = shard.name.removesuffix(".fa")
    marker = done_marker(work, prefix)
    try:
        key = json.loads(marker.read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return key == shard_key(shard, run_key) and all(p.is_file() for p in shard_files(work, prefix))


def _worker(
    name: str, device: str, config: WorkerConfig, tasks, results, log_queue
) -> None:  # fmt: skip
    """Worker process body; Ctrl-C is the main process's to report."""
    try:
        _work(name, device, config, tasks, results, log_queue)
    except KeyboardInterrupt:
        os._exit(130)


def _work(
    name: str, device: str, config: WorkerConfig, tasks, results, log_queue
) -> None:  # fmt: skip
    """Load the models once, then shard after shard."""
    root = logging.getLogger()
    root.handlers = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(config.log_level)

    def tag(record: logging.LogRecord) -> bool:
        record.msg = f"[{name} {device}] {record.msg}"
        return True

    root.handlers[0].addFilter(tag)
    import torch

    from virnucpro.classify import classify
    from virnucpro.embed import embed_file, load_model
    from virnucpro.models.classifier import load_classifier
    from virnucpro.prepare import prepare, prepare_outputs

    if config.threads:
        torch.set_num_threads(config.threads)
    esm_path, dna_path, classifier_path = config.models
    try:
        classifier = load_classifier(classifier_path)
        dna = load_model("dnabert", dna_path, device, config.precision)
        esm = load_model("esm2", esm_path, device, config.precision, compile=config.compile)
        if dna.dim + esm.dim != classifier.input_dim:
            raise VirnucproError(
                f"{classifier_path}: classifier expects {classifier.input_dim} features, "
                f"DNABERT-S + ESM-2 give {dna.dim} + {esm.dim}"
            )
    except Exception as e:  # noqa: BLE001 (any load failure: report it, do not restart)
        message = str(e) if isinstance(e, VirnucproError) else f"{device}: {type(e).__name__}: "
        if not isinstance(e, VirnucproError):
            message += " ".join(str(e).split())[:300]
        results.put(("broken", name, message))
        return
    cuda = esm.device.type == "cuda"
    total_memory = torch.cuda.get_device_properties(esm.device).total_memory if cuda else 0
    logging.getLogger("virnucpro").info(
        "worker ready: precision %s, ESM-2 batch %s tokens", esm.precision,
        config.esm_batch_tokens or "sized from free memory",
    )  # fmt: skip
    fail = os.environ.get(FAIL_ENV, "")
    crash = os.environ.get(CRASH_ENV, "")
    results.put(("ready", name))
    failures_in_a_row = 0
    while failures_in_a_row < 2 and (task := tasks.get()) is not None:
        shard, attempt = Path(task[0]), task[1]
        prefix = shard.name.removesuffix(".fa")
        if crash == prefix and attempt == 0:
            os._exit(70)  # test hook: a worker that dies mid-shard
        stage = "prepare"
        started = time.perf_counter()
        marker = done_marker(config.work, prefix)
        marker.unlink(missing_ok=True)  # the files are about to be rewritten
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats(esm.device)
            if fail == f"{prefix}:{stage}":
                raise RuntimeError("test failure")
            counts = prepare(shard, config.chunk_size, config.work, prefix)
            nucleotide, protein, _ = prepare_outputs(config.work, prefix)
            stage = "embed-dna"
            if fail == f"{prefix}:{stage}":
                raise RuntimeError("test failure")
            dna_out = embed_file(dna, nucleotide, config.work, config.dna_batch_tokens,
                                 config.feature_dtype, show_progress=False)  # fmt: skip
            stage = "embed-protein"
            if fail == f"{prefix}:{stage}":
                raise RuntimeError("test failure")
            esm_out = embed_file(esm, protein, config.work, config.esm_batch_tokens,
                                 config.feature_dtype, show_progress=False)  # fmt: skip
            stage = "classify"
            classify(dna_out, esm_out, classifier, classifier_path, config.chunk_size,
                     config.work)  # fmt: skip
            tmp = marker.with_name(marker.name + ".tmp")
            tmp.write_text(json.dumps({"key": shard_key(shard, config.shard_key)}))
            os.replace(tmp, marker)
        except Exception as e:  # a failed shard must not stop the others
            message = " ".join(str(e).split()) or type(e).__name__
            if not isinstance(e, VirnucproError):
                logging.getLogger("virnucpro").debug("".join(traceback.format_exception(e)))
            results.put(("failed", name, prefix, stage, message))
            # two failures in a row: the device may be broken; this worker ends and the
            # main process starts a fresh one
            failures_in_a_row += 1
            continue
        failures_in_a_row = 0
        stats = {"seconds": round(time.perf_counter() - started, 3),
                 "sequences": counts.sequences, "frames": counts.frames_kept}  # fmt: skip
        if cuda:
            peak = torch.cuda.max_memory_allocated(esm.device)
            stats["peak_gpu_gib"] = round(peak / 2**30, 2)
            if peak > 0.9 * total_memory:
                logging.getLogger("virnucpro").warning(
                    "%s used %.1f of %.1f GiB of GPU memory (over 90%%); lower "
                    "--esm-batch-size", prefix, peak / 2**30, total_memory / 2**30,
                )  # fmt: skip
        results.put(("done", name, prefix, stats))


def run_shards(
    shards: list[Path], devices: list[str], config: WorkerConfig, progress
) -> dict[str, ShardOutcome]:
    """Run every shard on a pool of workers (one per device entry); returns the outcome of
    each shard. Failed shards are reported, not raised."""
    context = multiprocessing.get_context("spawn")
    results, log_queue = context.Queue(), context.Queue()
    listener = logging.handlers.QueueListener(log_queue, *logging.getLogger().handlers,
                                              respect_handler_level=True)  # fmt: skip
    listener.start()
    outcomes = {s.name.removesuffix(".fa"): ShardOutcome(s.name.removesuffix(".fa"), s)
                for s in shards}  # fmt: skip
    waiting = [(prefix, 0) for prefix in outcomes]  # (shard, attempt), in order
    workers: dict[str, tuple[multiprocessing.Process, str, object]] = {}
    holding: dict[str, str | None] = {}
    serial = 0

    def start(device: str) -> None:
        nonlocal serial
        serial += 1
        name, tasks = f"worker{serial}", context.Queue()
        args = (name, device, config, tasks, results, log_queue)
        process = context.Process(target=_worker, name=name, args=args, daemon=True)
        process.start()
        workers[name], holding[name] = (process, device, tasks), None

    def hand_out(name: str) -> None:
        holding[name] = None
        if waiting:
            prefix, attempt = waiting.pop(0)
            outcomes[prefix].attempts = attempt + 1
            holding[name] = prefix
            workers[name][2].put((str(outcomes[prefix].shard), attempt))

    def finish(name: str, sequences: int) -> None:
        nonlocal remaining
        remaining -= 1
        device = workers[name][1] if name in workers else "?"
        progress.shard_done(name, device, sequences)

    for device in devices:
        start(device)
    remaining, restarts = len(shards), 0
    fatal: str | None = None
    try:
        while remaining:
            try:
                message = results.get(timeout=1.0)
            except queue.Empty:
                message = None
            if message is not None:
                kind, name = message[0], message[1]
                if kind == "broken":  # a model failed to load: nothing can run
                    fatal = message[2]
                    break
                if kind == "failed":
                    prefix, stage, error = message[2:5]
                    outcomes[prefix].failed_stage, outcomes[prefix].error = stage, error
                    log.error("%s failed at %s: %s", prefix, stage, error)
                    finish(name, 0)
                elif kind == "done":
                    outcomes[message[2]].stats = message[3]
                    finish(name, message[3]["sequences"])
                if name in workers:
                    hand_out(name)
                continue
            for name, (process, device, _) in list(workers.items()):
                if process.is_alive():
                    continue
                del workers[name]
                lost = holding.pop(name)
                restarts += 1
                if restarts > 2 * len(devices) + len(shards):
                    fatal = f"workers keep dying (last exit code {process.exitcode})"
                log.warning("%s (%s) died (exit code %s); starting a new one", name, device,
                            process.exitcode)  # fmt: skip
                if lost is not None:
                    outcome = outcomes[lost]
                    if outcome.attempts < 2:
                        waiting.insert(0, (lost, outcome.attempts))
                    else:
                        outcome.failed_stage = "worker"
                        outcome.error = f"worker died twice (exit code {process.exitcode})"
                        finish(name, 0)
                if remaining and fatal is None:
                    start(device)
            if fatal is not None:
                break
    finally:
        for _, _, tasks in workers.values():
            tasks.put(None)
        for process, _, _ in workers.values():
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        listener.stop()
    if fatal is not None:
        # raised once the queues are gone, so no traceback keeps their semaphores alive
        workers.clear()
        results = log_queue = tasks = process = None  # noqa: F841
        gc.collect()
        raise VirnucproError(fatal)
    return outcomes
