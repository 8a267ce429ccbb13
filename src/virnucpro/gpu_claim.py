"""Claim one free GPU for this process through per-GPU lock files.

Nextflow's local executor sets CUDA_VISIBLE_DEVICES per task from the `accelerator`
directive only from version 26.10 on. With older versions every GPU task sees every GPU,
so two concurrent `virnucpro embed-*` tasks would pile onto GPU 0. To prevent that, a
task that sees several GPUs and was not pinned takes a non-blocking `flock` on
`<lock_dir>/gpu<i>.lock` for i = 0..n-1 and uses the first GPU whose lock it got. The
lock is held until the process exits (the kernel releases it, even on a crash), so
concurrent tasks never share a GPU. When every GPU is taken, it logs and retries until
one is freed.

The lock directory is $VIRNUCPRO_GPU_LOCK_DIR, else the system temp directory; all tasks
that share the GPUs must see the same directory (containers: bind-mount it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "VIRNUCPRO_GPU_LOCK_DIR"

# Locks held by this process: kept referenced so that they live as long as the process.
_held: list[IO[bytes]] = []


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir())


def try_claim(num_gpus: int, lock_dir: Path) -> tuple[int, IO[bytes]] | None:
    """One pass over gpu0..gpu{n-1}: the first free index and its open, locked file."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index in range(num_gpus):
        handle = open(lock_dir / f"gpu{index}.lock", "ab")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return index, handle
    return None


def claim_gpu(
    num_gpus: int,
    lock_dir: Path | None = None,
    *,
    poll_seconds: float = 5.0,
    timeout: float | None = None,
) -> int | None:
    """Return the index of a GPU this process now owns, or None when nothing is claimed.

    Nothing is claimed (None) when CUDA_VISIBLE_DEVICES is set (the scheduler or the user
    already chose) or when at most one GPU is visible. Otherwise the lock on the returned
    GPU is held for the rest of the process's life (see release_all). When every GPU is
    busy it logs a message and retries every `poll_seconds`; with `timeout` set it raises
    TimeoutError after that many seconds.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None or num_gpus <= 1:
        return None
    directory = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    started = time.monotonic()
    announced = False
    while True:
        claimed = try_claim(num_gpus, directory)
        if claimed is not None:
            index, handle = claimed
            _held.append(handle)
            log.info("claimed GPU %d (lock %s)", index, directory / f"gpu{index}.lock")
            return index
        waited = time.monotonic() - started
        if timeout is not None and waited >= timeout:
            raise TimeoutError(f"all {num_gpus} GPUs stayed busy for {waited:.0f} s ({directory})")
        if not announced:
            log.warning(
                "all %d GPUs are claimed by other tasks (locks in %s); waiting for one",
                num_gpus,
                directory,
            )
            announced = True
        time.sleep(poll_seconds)


def release_all() -> None:
    """Release every GPU lock this process holds (normally left to process exit)."""
    while _held:
        _held.pop().close()
