"""Worker processes for predict: one per GPU (or --workers on the CPU).

Each worker loads the models once and runs, shard after shard, the stage entry points that
the CLI and the Nextflow tasks call: prepare -> embed_file (DNABERT-S, then ESM-2) ->
classify. What keeps the GPU busy, with the least machinery that does it:

- prepare is pure Python: in a thread of the worker it would hold the interpreter lock that
  the thread launching GPU kernels needs, so it runs in a process of the worker's own (a
  one-process pool, forked once as the worker starts), one shard ahead of the GPU.
- embed_file returns once the features are written, so on a GPU two lanes (threads) each
  run one shard's embed -> classify chain: while one shard's host tail runs (its last
  gather, the feature writing, classify, then the next file's reading and tokenizing), the
  other's batches keep the GPU busy. On the CPU there is nothing to overlap: one lane, and
  the results stay bit-identical. Each shard's record in run.json says how long the device
  had none of this worker's work before the shard began embedding (device_idle).

The main process hands the next shard to whichever worker reports back (SHARDS_PER_WORKER
held at once: one per lane, one being prepared), so a slow device never holds the others
back, and it knows which shards each worker holds and which it has started on its device
(Launched). A worker that dies is replaced; the shards it had started get one more try, and
a retried shard runs alone. Messages are the small types below.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import logging
import logging.handlers
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from collections import deque
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from virnucpro.errors import VirnucproError
from virnucpro.fileio import atomic_writer
from virnucpro.paths import done_marker, prepared_files, shard_prefix, shard_results

if TYPE_CHECKING:  # loaded in the workers only
    from virnucpro.embed import Embedder
    from virnucpro.models.classifier import MLPClassifier

log = logging.getLogger(__name__)

# Shards a worker holds at once: one in each lane (on a GPU), one being prepared.
SHARDS_PER_WORKER = 3
FAULT_ENV = "VIRNUCPRO_FAULT"


def inject_fault(stage: str, attempt: int, *names: str, outbox=None) -> None:
    """The one fault-injection point, for the tests (tests/test_workers.py), set by
    VIRNUCPRO_FAULT="NAME:STAGE", NAME a shard ("shard_00002") or a worker ("worker1"):
    - a stage (prepare, embed-dna, embed-protein, classify): the shard, or every shard of the
      worker, fails there on every try;
    - "crash": the worker holding the shard dies (exit code 70) on its first try, right after
      reporting it launched (``outbox`` is flushed first, as a real crash would find it);
    - "kill-prepare": the prepare process dies (SIGKILL) on the shard's first try."""
    if os.environ.get(FAULT_ENV) not in {f"{name}:{stage}" for name in names}:
        return
    if stage == "crash" and attempt == 0:
        outbox.close()
        outbox.join_thread()
        os._exit(70)
    elif stage == "kill-prepare" and attempt == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    elif stage not in ("crash", "kill-prepare"):
        raise RuntimeError("test failure")


# Main process -> worker: a shard to run (None: no more).
@dataclass(frozen=True)
class Task:
    shard: Path
    attempt: int  # 0: first try; 1: its worker died with it on the device


# Worker -> main process.
@dataclass(frozen=True)
class Ready:  # models loaded
    worker: str


@dataclass(frozen=True)
class Launched:  # prepared, and put on the worker's device
    worker: str
    prefix: str


@dataclass(frozen=True)
class Done:
    worker: str
    prefix: str
    stats: dict  # for run.json's shard_seconds


@dataclass(frozen=True)
class Failed:
    worker: str
    prefix: str
    stage: str
    error: str


@dataclass(frozen=True)
class Broken:  # a model failed to load: nothing can run
    worker: str
    error: str


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
    lanes: int | None = None  # shards embedded at once per worker: default 2 on a GPU, 1 on CPU
    log_level: int = logging.INFO


@dataclass
class ShardOutcome:
    prefix: str
    shard: Path
    failed_stage: str | None = None
    error: str | None = None
    attempts: int = 0
    stats: dict = field(default_factory=dict)


def shard_key(shard: Path, run_key: str) -> str:
    return hashlib.sha256(run_key.encode() + b"\0" + shard.read_bytes()).hexdigest()


def is_finished(work: Path, shard: Path, run_key: str) -> bool:
    """A shard's outputs are reusable iff its marker names this shard's content with these
    models and parameters, and the files are there."""
    prefix = shard_prefix(shard)
    try:
        key = json.loads(done_marker(work, prefix).read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    files = shard_results(work, prefix)
    return key == shard_key(shard, run_key) and all(p.is_file() for p in files)


# ---------------------------------------------------------------------------------------
# In the worker's prepare process


def _prepare_process_setup(worker_pid: int) -> None:
    """Ctrl-C is the main process's to report; and the prepare process ends with its worker,
    however the worker ends (Linux: the parent-death signal, sent when the thread that
    started the process ends: the worker's main thread, which ends with the worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL("libc.so.6").prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker's orderly exit ends it
        pass
    if os.getppid() != worker_pid:  # the worker died before the signal was set
        os._exit(1)


def _prepare_shard(task: Task, chunk_size: int, work: Path) -> tuple[object, float, float]:
    """The prepare stage of one shard: its counts, and when it started and ended."""
    from virnucpro.prepare import prepare

    started = time.monotonic()
    prefix = shard_prefix(task.shard)
    inject_fault("kill-prepare", task.attempt, prefix)
    inject_fault("prepare", task.attempt, prefix)
    counts = prepare(task.shard, chunk_size, work, prefix)
    return counts, started, time.monotonic()


# ---------------------------------------------------------------------------------------
# In a worker


def _worker(name: str, device: str, config: WorkerConfig, first: Task | None,
            tasks, results, log_queue) -> None:  # fmt: skip
    """Worker process body. ``first``: a shard to prepare while the models load."""
    # The prepare process is forked first thing, while the worker has one thread and no
    # models: safe, quick, and its pool's semaphores are not the resource tracker's (spawn's
    # would be, and the worker's os._exit would leave them to it, with a warning of a leak).
    try:
        fork = multiprocessing.get_context("fork")
        preparer = futures.ProcessPoolExecutor(1, fork, _prepare_process_setup, (os.getpid(),))
        preparer.submit(int).result()  # the process starts with the pool's first task
        _log_through(log_queue, f"[{name} {device}]", config.log_level)
        if config.compile:
            _thread_lock_for_progress_bars()
        _Worker(name, device, config, results, preparer).serve(first, tasks)
        preparer.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:  # Ctrl-C is the main process's to report
        os._exit(130)
    # Everything is reported: leave without the interpreter's orderly teardown of the models
    # and the compiler's helpers (seconds on a GPU host, all of them on the run's wall time).
    for outbox in (results, log_queue):
        outbox.close()
        outbox.join_thread()
    os._exit(0)


def _log_through(log_queue, tag: str, level: int) -> None:
    """Every log record of the worker goes to the main process, tagged with the worker."""

    def add_tag(record: logging.LogRecord) -> bool:
        record.msg = f"{tag} {record.msg}"
        return True

    handler = logging.handlers.QueueHandler(log_queue)
    handler.addFilter(add_tag)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)


def _thread_lock_for_progress_bars() -> None:
    """torch.compile makes (hidden) tqdm progress bars, and tqdm's default lock holds a named
    semaphore that the worker's os._exit leaves behind: the resource tracker would then warn
    of a leaked semaphore at the end of the run. One process needs only a thread lock."""
    try:
        from tqdm import tqdm
    except ImportError:  # no tqdm, no bars
        return
    tqdm.set_lock(threading.RLock())


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


@dataclass
class _Models:
    dna: Embedder
    esm: Embedder
    classifier: MLPClassifier
    budgets: dict  # model kind -> batch tokens
    lanes: int  # shards embedded at once


def _load_models(device: str, config: WorkerConfig) -> _Models:
    """The three models, checked to fit together."""
    from virnucpro.embed import default_batch_tokens, load_embedder
    from virnucpro.models.classifier import load_classifier

    esm_path, dna_path, classifier_path = config.models
    classifier = load_classifier(classifier_path)
    # --compile is ESM-2's (most of the GPU time): DNABERT-S's whole-encoder compile
    # takes longer per worker than it saves on a usual run (docs/usage.md)
    dna = load_embedder("dnabert", dna_path, device, config.precision)
    esm = load_embedder("esm2", esm_path, device, config.precision, compile=config.compile)
    if config.model_digests:
        esm.model_sha256, dna.model_sha256 = config.model_digests
    if dna.dim + esm.dim != classifier.input_dim:
        raise VirnucproError(
            f"{classifier_path}: classifier expects {classifier.input_dim} features, "
            f"DNABERT-S + ESM-2 give {dna.dim} + {esm.dim}"
        )
    lanes = config.lanes or (2 if esm.device.type == "cuda" else 1)
    budgets = {  # the lanes' batches can be on the device at once: they share its memory
        "dnabert": config.dna_batch_tokens or default_batch_tokens(dna.device, dna.dim, lanes),
        "esm2": config.esm_batch_tokens or default_batch_tokens(esm.device, esm.dim, lanes),
    }
    return _Models(dna, esm, classifier, budgets, lanes)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class _DeviceUse:
    """Whether a lane is embedding, i.e. this worker has work on its device. The gap that
    ends when a shard starts embedding (none while the other lane embeds) goes into the
    shard's run.json record as ``device_idle``: on a GPU, their sum is how long the GPU had
    nothing of this worker's to run (at least; within embed_file it waits on reading too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._embedding = 0
        self._idle_since = time.monotonic()

    def begin(self) -> float:
        with self._lock:
            self._embedding += 1
            return time.monotonic() - self._idle_since if self._embedding == 1 else 0.0

    def end(self) -> None:
        with self._lock:
            self._embedding -= 1
            if not self._embedding:
                self._idle_since = time.monotonic()


@dataclass
class _ShardRun:
    """One shard in a lane: where it is, where its time went (run.json's shard_seconds)."""

    task: Task
    prefix: str
    taken: float  # when the worker took it
    stage: str = "prepare"  # the stage running, or the one that failed
    seconds: dict[str, float] = field(default_factory=dict)


class _Worker:
    """A worker's models, its prepare process and its lanes."""

    def __init__(self, name: str, device: str, config: WorkerConfig, results, preparer) -> None:
        self.name, self.device, self.config = name, device, config
        self.results, self.preparer = results, preparer
        self.models: _Models | None = None
        self.ready_at = 0.0
        self.device_use = _DeviceUse()
        self.failures_in_a_row = 0  # two: the worker retires (see serve)
        self.retiring = threading.Lock()  # the lanes count failures under it
        self.total_memory = 0  # of the GPU; 0 on the CPU
        self.jobs: list[futures.Future] = []  # the lanes' shards not yet done

    def set_threads(self) -> None:
        # per thread: OpenMP gives each new thread the default count, and the count changes
        # the rounding of CPU results
        if self.config.threads:
            import torch

            torch.set_num_threads(self.config.threads)

    def prepare(self, task: Task) -> tuple[Task, float, futures.Future]:
        """Start preparing a shard: its task, when this worker took it, the future counts."""
        done_marker(self.config.work, shard_prefix(task.shard)).unlink(missing_ok=True)
        try:
            prepared = self.preparer.submit(_prepare_shard, task, self.config.chunk_size,
                                            self.config.work)  # fmt: skip
        except BrokenProcessPool as e:  # the prepare process is gone (killed): the shard's
            prepared = futures.Future()  # lane finds out, and the worker retires
            prepared.set_exception(e)
        return task, time.monotonic(), prepared

    def serve(self, first: Task | None, tasks) -> None:
        """The first shard is prepared while the models load; then each shard handed over is
        prepared (one process, in order) and run in a lane, until None, or until two
        failures in a row (the device may be broken: the main process starts a new worker)."""
        pending = [self.prepare(first)] if first else []
        self.set_threads()
        if (error := self.load()) is not None:
            # the main process removes what this run wrote: the prepare under way ends first
            futures.wait([prepared for _, _, prepared in pending])
            self.results.put(Broken(self.name, error))
            return
        lanes = self.models.lanes
        # Collections stop every thread, the one queuing GPU batches too: once per shard
        # instead (embed_file pauses the collector too, but two lanes would undo that).
        gc.disable()
        # not a with block: on Ctrl-C the worker leaves at once, without waiting for lanes
        pool = futures.ThreadPoolExecutor(lanes, "lane", self.set_threads)
        while self.failures_in_a_row < 2:
            if not pending:
                task = tasks.get()
                if task is None or self.failures_in_a_row >= 2:  # (counted while waiting)
                    break
                pending.append(self.prepare(task))
            self.dispatch(pool, *pending.pop(0))
        # after two failures in a row, the shards not started go back to the queue (run_shard
        # leaves them unreported; the main process requeues a retired worker's shards)
        pool.shutdown(wait=True, cancel_futures=self.failures_in_a_row >= 2)

    def dispatch(self, pool, task: Task, taken: float, prepared: futures.Future) -> None:
        if task.attempt:  # a retry runs alone: if it kills the worker again, it alone is
            futures.wait(self.jobs)  # charged for it
        self.jobs = [job for job in self.jobs if not job.done()]
        self.jobs.append(pool.submit(self.run_shard, task, taken, prepared))
        if task.attempt:
            futures.wait(self.jobs)

    def load(self) -> str | None:
        """Load the models; returns why that failed (fatal for the run: no retry)."""
        try:
            self.models = _load_models(self.device, self.config)
        except Exception as e:  # noqa: BLE001 (any load failure: report it, do not restart)
            if isinstance(e, VirnucproError):
                return str(e)
            return f"{self.device}: {type(e).__name__}: {_one_line(e)[:300]}"
        esm = self.models.esm
        if esm.device.type == "cuda":  # shards' peaks leave out the load and the warm-up
            import torch

            self.total_memory = torch.cuda.get_device_properties(esm.device).total_memory
            torch.cuda.reset_peak_memory_stats(esm.device)
        logging.getLogger("virnucpro").info(
            "worker ready: batches of %d (ESM-2) and %d (DNABERT-S) tokens",
            self.models.budgets["esm2"], self.models.budgets["dnabert"])  # fmt: skip
        self.ready_at = time.monotonic()
        self.device_use = _DeviceUse()  # idle from now until the first shard
        self.results.put(Ready(self.name))
        return None

    def run_shard(self, task: Task, taken: float, prepared: futures.Future) -> None:
        """A lane: the shard's embed -> classify chain once it is prepared; reported."""
        run = _ShardRun(task, shard_prefix(task.shard), taken)
        if self.failures_in_a_row >= 2:  # retiring: left for the next worker
            return
        try:
            began = time.monotonic()
            counts, prepare_started, prepare_ended = prepared.result()
            run.seconds["prepare"] = prepare_ended - prepare_started
            run.seconds["models_waited"] = max(0.0, self.ready_at - max(prepare_ended, taken))
            run.seconds["gpu_waited"] = time.monotonic() - began  # this lane, for the shard
            self.results.put(Launched(self.name, run.prefix))
            inject_fault("crash", task.attempt, run.prefix, outbox=self.results)
            features = self.embed(run)
            run.stage, started = "classify", time.monotonic()
            inject_fault(run.stage, task.attempt, run.prefix, self.name)
            self.classify(run, features)
            run.seconds["finish"] = time.monotonic() - started
        except Exception as e:  # a failed shard must not stop the others
            self.report_failure(run, e)
            return
        self.report_done(run, counts)

    def embed(self, run: _ShardRun) -> list[Path]:
        """Both feature files of a prepared shard (DNABERT-S, then ESM-2)."""
        from virnucpro.embed import embed_file

        models, work = self.models, self.config.work
        nucleotide, protein, _ = prepared_files(work, run.prefix)
        outputs = []
        run.seconds["device_idle"] = self.device_use.begin()
        try:
            for model, run.stage, path in ((models.dna, "embed-dna", nucleotide),
                                           (models.esm, "embed-protein", protein)):  # fmt: skip
                started = time.monotonic()
                inject_fault(run.stage, run.task.attempt, run.prefix, self.name)
                budget = models.budgets[model.kind]
                outputs.append(embed_file(model, path, work, budget, self.config.feature_dtype,
                                          show_progress=False))  # fmt: skip
                run.seconds[run.stage] = time.monotonic() - started
        finally:
            self.device_use.end()
        self.failures_in_a_row = 0
        return outputs

    def classify(self, run: _ShardRun, features: list[Path]) -> None:
        """Scores of a shard's frames; then its marker: finished, with these parameters."""
        from virnucpro.classify import classify

        config = self.config
        classify(*features, self.models.classifier, config.models[2], config.chunk_size,
                 config.work)  # fmt: skip
        with atomic_writer(done_marker(config.work, run.prefix)) as out:
            out.write(json.dumps({"key": shard_key(run.task.shard, config.shard_key)}))

    def report_failure(self, run: _ShardRun, e: Exception) -> None:
        lost_preparer = isinstance(e, BrokenProcessPool)
        with self.retiring:
            if lost_preparer and self.failures_in_a_row >= 2:
                return  # another shard was charged for it: this one goes to the next worker
            if lost_preparer:  # the prepare process died on this shard: no other can run
                self.failures_in_a_row = 2
            elif run.stage in ("embed-dna", "embed-protein"):  # the device's, not the input's
                self.failures_in_a_row += 1
        if not isinstance(e, VirnucproError):
            logging.getLogger("virnucpro").debug("".join(traceback.format_exception(e)))
        self.results.put(Failed(self.name, run.prefix, run.stage, _one_line(e)))

    def report_done(self, run: _ShardRun, counts) -> None:
        prefix, wall = run.prefix, time.monotonic() - run.taken
        stats = {"device": self.device, "seconds": round(wall, 3),
                 "sequences": counts.sequences, "frames": counts.frames_kept,
                 **{key: round(value, 3) for key, value in run.seconds.items()}}  # fmt: skip
        stats["worker_rss_mib"] = _rss_mib()  # memory must not grow from shard to shard
        if self.total_memory:  # the peak since the last shard was reported
            import torch

            peak = torch.cuda.max_memory_allocated(self.models.esm.device)
            torch.cuda.reset_peak_memory_stats(self.models.esm.device)
            stats["peak_gpu_gib"] = round(peak / 2**30, 2)
            if peak > 0.9 * self.total_memory:
                logging.getLogger("virnucpro").warning(
                    "%s used %.1f of %.1f GiB of GPU memory (over 90%%); lower --esm-batch-size",
                    prefix, peak / 2**30, self.total_memory / 2**30)  # fmt: skip
        self.results.put(Done(self.name, prefix, stats))
        gc.collect()  # the worker runs with the collector paused: once per shard here
        _return_free_memory()


# ---------------------------------------------------------------------------------------
# In the main process


@dataclass
class _Handle:
    """The main process's view of one worker."""

    process: multiprocessing.Process
    device: str
    tasks: object  # its queue of Task | None
    holding: list[str] = field(default_factory=list)  # shards handed to it, unreported
    launched: set[str] = field(default_factory=set)  # those of them it put on its device


class _Pool:
    """Workers, the shards each holds, the shards waiting; see the module docstring."""

    def __init__(self, shards: list[Path], devices: list[str], config: WorkerConfig,
                 progress) -> None:  # fmt: skip
        self.devices, self.config, self.progress = devices, config, progress
        self.context = multiprocessing.get_context("spawn")
        self.results, self.log_queue = self.context.Queue(), self.context.Queue()
        self.outcomes = {shard_prefix(s): ShardOutcome(shard_prefix(s), s) for s in shards}
        self.waiting = deque((prefix, 0) for prefix in self.outcomes)  # (shard, attempt)
        self.workers: dict[str, _Handle] = {}
        self.remaining, self.restarts, self.serial = len(shards), 0, 0
        self.started, self.ready_seconds = time.perf_counter(), 0.0

    def start(self, device: str) -> None:
        """A new worker, handed one shard to prepare while it loads the models (the rest once
        it is ready, so that on a small input the shards spread over every GPU)."""
        self.serial += 1
        name, tasks = f"worker{self.serial}", self.context.Queue()
        handle = _Handle(None, device, tasks)
        self.workers[name] = handle
        first = self.take(name) if self.waiting else None
        args = (name, device, self.config, first, tasks, self.results, self.log_queue)
        # not daemonic: a worker has a prepare process of its own; stop() ends it
        handle.process = self.context.Process(target=_worker, name=name, args=args)
        handle.process.start()

    def take(self, name: str) -> Task:
        prefix, attempt = self.waiting.popleft()
        self.outcomes[prefix].attempts = attempt + 1
        self.workers[name].holding.append(prefix)
        return Task(self.outcomes[prefix].shard, attempt)

    def hand_out(self, name: str) -> None:
        while self.waiting and len(self.workers[name].holding) < SHARDS_PER_WORKER:
            self.workers[name].tasks.put(self.take(name))

    def finish(self, name: str, sequences: int) -> None:
        self.remaining -= 1
        device = self.workers[name].device if name in self.workers else "?"
        self.progress.shard_done(name, device, sequences)

    def receive(self, message) -> str | None:
        """Act on a worker's report; returns a fatal error, if it is one."""
        if isinstance(message, Broken):
            return message.error
        handle = self.workers.get(message.worker)
        if isinstance(message, Ready) and not self.ready_seconds:
            self.ready_seconds = time.perf_counter() - self.started
        elif isinstance(message, Launched) and handle:
            handle.launched.add(message.prefix)
        elif isinstance(message, (Done, Failed)):
            if handle and message.prefix in handle.holding:
                handle.holding.remove(message.prefix)
                handle.launched.discard(message.prefix)
            outcome = self.outcomes[message.prefix]
            if isinstance(message, Failed):
                outcome.failed_stage, outcome.error = message.stage, message.error
                log.error("%s failed at %s: %s", message.prefix, message.stage, message.error)
                self.finish(message.worker, 0)
            else:
                outcome.stats = message.stats
                self.finish(message.worker, message.stats["sequences"])
        if handle:
            self.hand_out(message.worker)
        return None

    def replace_dead(self) -> str | None:
        """Start a worker in place of each that died; its shards go back to the queue (those
        it had started: for their last try, unless it retired after failures). Returns a
        fatal error if workers keep dying."""
        fatal = None
        for name, handle in list(self.workers.items()):
            if handle.process.is_alive():
                continue
            del self.workers[name]
            code = handle.process.exitcode
            self.restarts += 1
            if self.restarts > 2 * len(self.devices) + len(self.outcomes):
                fatal = f"workers keep dying (last exit code {code})"
            log.warning("%s (%s) died (exit code %s); starting a new one", name, handle.device,
                        code)  # fmt: skip
            for prefix in reversed(handle.holding):
                outcome = self.outcomes[prefix]
                tried = prefix in handle.launched and code != 0
                attempt = outcome.attempts if tried else outcome.attempts - 1
                if attempt < 2:
                    self.waiting.appendleft((prefix, attempt))
                else:
                    outcome.failed_stage = "worker"
                    outcome.error = f"worker died twice (exit code {code})"
                    self.finish(name, 0)
            if self.remaining and fatal is None:
                self.start(handle.device)
        return fatal

    def stop(self) -> None:
        """Every worker ends (asked, else killed) and is waited for: on success, failure and
        Ctrl-C alike."""
        for handle in self.workers.values():
            handle.tasks.put(None)
        for handle in self.workers.values():
            handle.process.join(timeout=30)
            if handle.process.is_alive():
                handle.process.kill()
                handle.process.join()


def run_shards(
    shards: list[Path], devices: list[str], config: WorkerConfig, progress
) -> tuple[dict[str, ShardOutcome], float]:
    """Run every shard on a pool of workers (one per device entry); returns the outcome of
    each shard and the seconds until the first worker was ready (its models loaded). Failed
    shards are reported, not raised."""
    pool = _Pool(shards, devices, config, progress)
    listener = logging.handlers.QueueListener(pool.log_queue, *logging.getLogger().handlers,
                                              respect_handler_level=True)  # fmt: skip
    listener.start()
    fatal: str | None = None
    try:
        for device in devices:
            pool.start(device)
        while pool.remaining and fatal is None:
            try:
                fatal = pool.receive(pool.results.get(timeout=1.0))
            except queue.Empty:
                fatal = pool.replace_dead()
    finally:
        pool.stop()
        listener.stop()
    if fatal is not None:
        # raised once the queues are gone, so no traceback keeps their semaphores alive
        pool = listener = None  # noqa: F841
        gc.collect()
        raise VirnucproError(fatal)
    return pool.outcomes, pool.ready_seconds
