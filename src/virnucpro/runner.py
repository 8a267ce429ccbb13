"""Worker processes for predict: one per GPU (or --workers on the CPU).

Each worker is handed a shard as it starts (prepared while it loads the models) and then
holds three at a time (one finishing on the GPU, the next queued behind it, the third being
prepared): the main process hands the next shard to whichever worker reports back
(done, with its timings and peak memory, or failed, with the stage and message), so a slow
device never holds the others back, and the main process always knows which shards each
worker holds and which it has put on its device. A worker that dies is replaced and the
shards it had on its device get one more try; a retried shard runs alone.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import logging.handlers
import multiprocessing
import os
import queue
import subprocess
import threading
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

STAGES = {"dnabert": "embed-dna", "esm2": "embed-protein"}  # in the order they run
# Shards a worker holds at once: one finishing on the GPU, one queued behind it (queuing
# blocks once the GPU's launch queue is full, so it is under way too), one being prepared.
SHARDS_PER_WORKER = 3


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
    model_digests: tuple[str, str] | None = None  # sha256 of esm2, dnabert (else hashed here)
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


def prepare_in_subprocess(shard: Path, config: WorkerConfig, prefix: str):
    """`virnucpro prepare` of one shard, in a process of its own: translation is pure Python,
    and in a thread of the worker it would hold the interpreter lock that the GPU thread needs
    to launch its kernels (on the CPU, small torch calls ran 30x slower beside it)."""
    import sys

    import virnucpro
    from virnucpro.prepare import prepare_outputs, read_counts

    package_root = str(Path(virnucpro.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "virnucpro", "-q", "prepare", str(shard),
               "--chunk-size", str(config.chunk_size), "--outdir", str(config.work),
               "--prefix", prefix]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})  # fmt: skip
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise VirnucproError(lines[-1] if lines else f"prepare exited with {done.returncode}")
    return read_counts(prepare_outputs(config.work, prefix)[2])


def _worker(
    name: str, device: str, config: WorkerConfig, tasks, results, log_queue
) -> None:  # fmt: skip
    """Worker process body; Ctrl-C is the main process's to report."""
    if config.compile:
        _thread_lock_for_progress_bars()
    try:
        _work(name, device, config, tasks, results, log_queue)
    except KeyboardInterrupt:
        os._exit(130)
    # Everything is reported: leave without the interpreter's orderly teardown of the models
    # and the compiler's helpers (2 s on the GPU host, all of it on the run's wall time).
    for outbox in (results, log_queue):
        outbox.close()
        outbox.join_thread()
    os._exit(0)


@dataclass
class _Shard:
    """One shard on its way through a worker: prepared and tokenized by the feeder thread,
    embedded by the GPU thread, classified and written by the finisher thread."""

    path: Path
    attempt: int
    started: float
    stage: str = "prepare"  # the stage running, or the one that failed
    error: Exception | None = None
    counts: object = None
    frames: dict = field(default_factory=dict)  # kind -> embed.Frames
    features: dict = field(default_factory=dict)  # kind -> features (N, dim) on the CPU
    peak_gpu: int = 0
    seconds: dict = field(default_factory=dict)  # where the time went, for run.json

    @property
    def prefix(self) -> str:
        return self.path.name.removesuffix(".fa")


def _return_free_memory() -> None:
    """Give the C heap's free pages back to the system. Without it a worker's memory crept
    up from shard to shard (glibc keeps the fragments of each shard's differently sized
    buffers, one heap per thread); with it, it stays level (benchmarks/README.md)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _rss_mib() -> int:
    """This process's resident memory now (not its peak), in MiB; 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20
    except OSError:
        return 0


def _thread_lock_for_progress_bars() -> None:
    """torch.compile makes (hidden) tqdm progress bars, and tqdm's default lock holds a named
    semaphore that the worker's os._exit leaves behind: the resource tracker would then warn
    of a leaked semaphore at the end of the run. One process needs only a thread lock."""
    try:
        from tqdm import tqdm
    except ImportError:  # no tqdm, no bars
        return
    tqdm.set_lock(threading.RLock())


def _work(
    name: str, device: str, config: WorkerConfig, tasks, results, log_queue
) -> None:  # fmt: skip
    """Load the models once, then shard after shard, in three threads so that the GPU never
    waits on the host: a feeder prepares and tokenizes the next shard (the main process
    hands each worker three shards at a time), this thread queues its batches on the GPU
    before it waits for the previous shard's features, a finisher writes the features,
    classifies and reports the shard."""
    root = logging.getLogger()
    root.handlers = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(config.log_level)

    def tag(record: logging.LogRecord) -> bool:
        record.msg = f"[{name} {device}] {record.msg}"
        return True

    root.handlers[0].addFilter(tag)
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from virnucpro.classify import classify
    from virnucpro.embed import (
        collector_paused,
        default_batch_tokens,
        load_embedder,
        read_frames,
        write_frames,
    )
    from virnucpro.features import FEATURE_DTYPES
    from virnucpro.models.classifier import load_classifier
    from virnucpro.prepare import prepare_outputs

    def set_threads() -> None:
        # per thread: OpenMP gives each new thread the default count, and the count
        # changes the rounding of CPU results
        if config.threads:
            torch.set_num_threads(config.threads)

    set_threads()
    vlog = logging.getLogger("virnucpro")
    fail = os.environ.get(FAIL_ENV, "")
    crash = os.environ.get(CRASH_ENV, "")

    def check_hook(shard: _Shard) -> None:
        if fail == f"{shard.prefix}:{shard.stage}":
            raise RuntimeError("test failure")

    def report_failure(shard: _Shard) -> None:
        e = shard.error
        message = " ".join(str(e).split()) or type(e).__name__
        if not isinstance(e, VirnucproError):
            vlog.debug("".join(traceback.format_exception(e)))
        results.put(("failed", name, shard.prefix, shard.stage, message))

    def feed(ready: queue.Queue) -> None:
        """Feeder thread: prepare + read + tokenize each shard handed to this worker."""
        set_threads()
        while (task := tasks.get()) is not None:
            shard = _Shard(Path(task[0]), task[1], time.perf_counter())
            # the files are about to be rewritten
            done_marker(config.work, shard.prefix).unlink(missing_ok=True)
            try:
                check_hook(shard)
                with preparing:
                    if load_failed:
                        return
                    shard.counts = prepare_in_subprocess(shard.path, config, shard.prefix)
                waiting_since = time.perf_counter()
                models_loaded.wait()  # prepare runs beside the load; tokenizing needs it
                if load_failed:
                    return
                shard.seconds["models_waited"] = time.perf_counter() - waiting_since
                nucleotide, protein, _ = prepare_outputs(config.work, shard.prefix)
                shard.frames = {"dnabert": read_frames(dna, nucleotide),
                                "esm2": read_frames(esm, protein)}  # fmt: skip
            except Exception as e:  # a failed shard must not stop the others
                shard.error = e
            shard.seconds["prepare"] = (time.perf_counter() - shard.started
                                        - shard.seconds.get("models_waited", 0))  # fmt: skip
            ready.put(shard)
        ready.put(None)

    # The feeder starts on its first shard (prepare needs no model) while the models load.
    models_loaded, load_failed = threading.Event(), False
    preparing = threading.Lock()  # held while a prepare process runs
    ready: queue.Queue = queue.Queue(maxsize=1)  # one shard prepared ahead
    threading.Thread(target=feed, args=(ready,), name="feeder", daemon=True).start()
    esm_path, dna_path, classifier_path = config.models
    try:
        classifier = load_classifier(classifier_path)
        # --compile is ESM-2's (~95 % of the GPU time): DNABERT-S's whole-encoder compile
        # costs 20-40 s per worker and pays back only past ~1 Gbp per GPU (docs/usage.md)
        dna = load_embedder("dnabert", dna_path, device, config.precision)
        esm = load_embedder("esm2", esm_path, device, config.precision, compile=config.compile)
        if config.model_digests:
            esm.model_sha256, dna.model_sha256 = config.model_digests
        if dna.dim + esm.dim != classifier.input_dim:
            raise VirnucproError(
                f"{classifier_path}: classifier expects {classifier.input_dim} features, "
                f"DNABERT-S + ESM-2 give {dna.dim} + {esm.dim}"
            )
    except Exception as e:  # noqa: BLE001 (any load failure: report it, do not restart)
        message = str(e) if isinstance(e, VirnucproError) else f"{device}: {type(e).__name__}: "
        if not isinstance(e, VirnucproError):
            message += " ".join(str(e).split())[:300]
        with preparing:  # a prepare under way ends before the main process cleans up
            load_failed = True
        models_loaded.set()
        results.put(("broken", name, message))
        return
    models = {"dnabert": dna, "esm2": esm}
    budgets = {
        "dnabert": config.dna_batch_tokens or default_batch_tokens(dna.device, dna.dim),
        "esm2": config.esm_batch_tokens or default_batch_tokens(esm.device, esm.dim),
    }
    cuda = esm.device.type == "cuda"
    total_memory = torch.cuda.get_device_properties(esm.device).total_memory if cuda else 0
    vlog.info("worker ready: batches of %d (ESM-2) and %d (DNABERT-S) tokens", budgets["esm2"],
              budgets["dnabert"])  # fmt: skip

    def finish(shard: _Shard) -> None:
        """Finisher thread: features written, classified, marked done and reported."""
        started = time.perf_counter()
        try:
            outputs = {}
            for kind, features in shard.features.items():
                shard.stage = STAGES[kind]
                outputs[kind] = write_frames(models[kind], shard.frames[kind], features,
                                             budgets[kind], shard.seconds[STAGES[kind]],
                                             config.work, config.feature_dtype)  # fmt: skip
            shard.stage = "classify"
            classify(outputs["dnabert"], outputs["esm2"], classifier, classifier_path,
                     config.chunk_size, config.work)  # fmt: skip
            marker = done_marker(config.work, shard.prefix)
            tmp = marker.with_name(marker.name + ".tmp")
            tmp.write_text(json.dumps({"key": shard_key(shard.path, config.shard_key)}))
            os.replace(tmp, marker)
        except Exception as e:  # a failed shard must not stop the others
            shard.error = e
            report_failure(shard)
            return
        shard.seconds["finish"] = time.perf_counter() - started
        stats = {"device": device, "seconds": round(time.perf_counter() - shard.started, 3),
                 "sequences": shard.counts.sequences,
                 "frames": shard.counts.frames_kept,
                 **{key: round(value, 3) for key, value in shard.seconds.items()}}  # fmt: skip
        stats["worker_rss_mib"] = _rss_mib()  # memory must not grow from shard to shard
        if cuda:
            stats["peak_gpu_gib"] = round(shard.peak_gpu / 2**30, 2)
            if shard.peak_gpu > 0.9 * total_memory:
                vlog.warning("%s used %.1f of %.1f GiB of GPU memory (over 90%%); lower "
                             "--esm-batch-size", shard.prefix, shard.peak_gpu / 2**30,
                             total_memory / 2**30)  # fmt: skip
        results.put(("done", name, shard.prefix, stats))
        gc.collect()  # the worker loop runs with the collector paused: once per shard here
        _return_free_memory()

    def launch(shard: _Shard) -> dict | None:
        """Queue both models' batches of a shard (DNABERT-S, then ESM-2) without waiting for
        the GPU; None if that failed (reported)."""
        results.put(("launched", name, shard.prefix))
        if crash == shard.prefix and shard.attempt == 0:
            results.close()  # the report above goes out first, as it would before a crash
            results.join_thread()
            os._exit(70)  # test hook: a worker that dies mid-shard
        try:
            queued = {}
            for kind, stage in STAGES.items():
                shard.stage = stage
                check_hook(shard)
                started = time.perf_counter()
                queued[kind] = models[kind].queue(shard.frames[kind].tokens, budgets[kind])
                shard.seconds[stage] = time.perf_counter() - started
            vlog.debug("%s: batches queued", shard.prefix)
            return queued
        except Exception as e:  # a failed shard must not stop the others
            shard.error = e
            report_failure(shard)
            return None

    def collect(shard: _Shard, queued: dict) -> bool:
        """Wait for a launched shard's features and hand it to the finisher."""
        try:
            for kind, stage in STAGES.items():
                shard.stage = stage
                started = time.perf_counter()
                shard.features[kind] = queued[kind].gather(FEATURE_DTYPES[config.feature_dtype])
                shard.seconds[stage] += time.perf_counter() - started
        except Exception as e:  # a failed shard must not stop the others
            shard.error = e
            report_failure(shard)
            return False
        if cuda:  # the peak since the last shard was collected
            shard.peak_gpu = torch.cuda.max_memory_allocated(esm.device)
            torch.cuda.reset_peak_memory_stats(esm.device)
        vlog.debug("%s: features gathered", shard.prefix)
        finisher.submit(finish, shard)
        return True

    if cuda:  # shards' peaks leave out the load and the compile warm-up
        torch.cuda.reset_peak_memory_stats(esm.device)
    models_loaded.set()
    results.put(("ready", name))
    failures_in_a_row = 0
    # One shard in flight: the next shard's batches are queued before the last one's are
    # waited for, so the GPU goes from shard to shard without waiting for the host.
    in_flight: tuple[_Shard, dict] | None = None

    def collect_in_flight() -> None:
        nonlocal in_flight, failures_in_a_row
        if in_flight is not None:
            ok = collect(*in_flight)
            in_flight = None
            # two failures in a row: the device may be broken; this worker ends and the
            # main process starts a fresh one
            failures_in_a_row = 0 if ok else failures_in_a_row + 1

    # Collections would stop the thread queuing GPU batches (see collector_paused); the
    # finisher collects once per shard instead.
    with collector_paused(), ThreadPoolExecutor(1, "finisher", set_threads) as finisher:
        while failures_in_a_row < 2:
            if ready.empty():  # nothing to queue behind the shard in flight: finish it
                collect_in_flight()
            waiting_since = time.perf_counter()
            if (shard := ready.get()) is None:
                break
            shard.seconds["gpu_waited"] = time.perf_counter() - waiting_since
            if shard.error is not None:
                report_failure(shard)
                continue
            if shard.attempt > 0:  # a retry runs alone: if it kills the worker again, it
                collect_in_flight()  # is the only shard charged for it
            queued = launch(shard)
            collect_in_flight()
            if queued is None:
                failures_in_a_row += 1
                continue
            in_flight = (shard, queued)
            if shard.attempt > 0:
                collect_in_flight()
        collect_in_flight()


def run_shards(
    shards: list[Path], devices: list[str], config: WorkerConfig, progress
) -> tuple[dict[str, ShardOutcome], float]:
    """Run every shard on a pool of workers (one per device entry); returns the outcome of
    each shard and the seconds until the first worker was ready (its models loaded). Failed
    shards are reported, not raised."""
    started, ready_seconds = time.perf_counter(), 0.0
    context = multiprocessing.get_context("spawn")
    results, log_queue = context.Queue(), context.Queue()
    listener = logging.handlers.QueueListener(log_queue, *logging.getLogger().handlers,
                                              respect_handler_level=True)  # fmt: skip
    listener.start()
    outcomes = {s.name.removesuffix(".fa"): ShardOutcome(s.name.removesuffix(".fa"), s)
                for s in shards}  # fmt: skip
    waiting = [(prefix, 0) for prefix in outcomes]  # (shard, attempt), in order
    workers: dict[str, tuple[multiprocessing.Process, str, object]] = {}
    holding: dict[str, list[str]] = {}  # worker -> the shards it was handed, unreported
    launched: dict[str, set[str]] = {}  # worker -> the shards of those it put on its device
    serial = 0

    def start(device: str) -> None:
        nonlocal serial
        serial += 1
        name, tasks = f"worker{serial}", context.Queue()
        args = (name, device, config, tasks, results, log_queue)
        process = context.Process(target=_worker, name=name, args=args, daemon=True)
        process.start()
        workers[name], holding[name], launched[name] = (process, device, tasks), [], set()
        # one shard to prepare while it loads the models; the rest once it is ready, so that
        # on a small input the shards spread over every GPU
        hand_out(name, 1)

    def hand_out(name: str, up_to: int = SHARDS_PER_WORKER) -> None:
        while waiting and len(holding[name]) < up_to:
            prefix, attempt = waiting.pop(0)
            outcomes[prefix].attempts = attempt + 1
            holding[name].append(prefix)
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
                if kind == "ready" and not ready_seconds:
                    ready_seconds = time.perf_counter() - started
                if kind == "broken":  # a model failed to load: nothing can run
                    fatal = message[2]
                    break
                if kind == "launched" and name in launched:
                    launched[name].add(message[2])
                if kind in ("failed", "done") and message[2] in holding.get(name, []):
                    holding[name].remove(message[2])
                    launched[name].discard(message[2])
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
                lost, under_way = holding.pop(name), launched.pop(name)
                restarts += 1
                if restarts > 2 * len(devices) + len(shards):
                    fatal = f"workers keep dying (last exit code {process.exitcode})"
                log.warning("%s (%s) died (exit code %s); starting a new one", name, device,
                            process.exitcode)  # fmt: skip
                # A shard on the device when the worker died had a try (unless the worker
                # retired after failures); the others go back to the queue as they were.
                for prefix in reversed(lost):
                    outcome = outcomes[prefix]
                    tried = prefix in under_way and process.exitcode != 0
                    attempt = outcome.attempts if tried else outcome.attempts - 1
                    if attempt < 2:
                        waiting.insert(0, (prefix, attempt))
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
    return outcomes, ready_seconds
