"""Claim one free GPU for this process through per-GPU lock files.

Two ESM-2 3B tasks on one GPU run out of memory or crawl, so a task that picks its own GPU
(`--device auto` or `cuda` on `embed-dna` / `embed-protein`) takes a non-blocking `flock` on
`<lock_dir>/gpu-<ID>.lock` for each GPU it can see, in order, and uses the first one it got.
The lock is held until the process exits (the kernel releases it, even on a crash). When
every visible GPU is taken, the task logs once which locks it waits for and retries until one
is freed. This holds with one visible GPU too; `VIRNUCPRO_GPU_SHARE=1` opts out of waiting:
the task takes a free GPU if there is one, else shares the first.

ID is the GPU's UUID (`GPU-...`, as nvidia-smi shows it), the same in every process whatever
subset of GPUs it sees and however they are numbered there. So the claim works with and
without CUDA_VISIBLE_DEVICES:
- unset (Nextflow before 26.10, a plain shell): every task sees every GPU and claims a
  distinct one;
- set to several GPUs (a SLURM job holding several, a user's export): tasks claim distinct
  GPUs among those;
- set to one GPU per task (Nextflow >= 26.10 from `accelerator`, SLURM `--gres=gpu:1`, which
  renumbers it as 0 in every job): the task uses what it was given; its claim of that one
  GPU only matters if something else of ours runs on it too.

The lock directory is $VIRNUCPRO_GPU_LOCK_DIR, else <temp dir>/virnucpro-gpu-locks; all tasks
that share the GPUs must see the same directory (containers: bind-mount it). It is created
world-writable and sticky (1777) and lock files world-writable (0666) whatever the umask, so
that every user's tasks can lock the same files. See `_open_first` for another user's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "VIRNUCPRO_GPU_LOCK_DIR"
SHARE_ENV = "VIRNUCPRO_GPU_SHARE"

# Locks held by this process: kept referenced so that they live as long as the process.
_held: list[IO[bytes]] = []


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "virnucpro-gpu-locks")


def share_requested() -> bool:
    return os.environ.get(SHARE_ENV, "").strip().lower() in ("1", "true", "yes")


def lock_name(gpu_id: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", gpu_id) + ".lock"


def _usable_dir(directory: Path) -> Path:
    """``directory`` (created 1777 if missing); if it cannot be created or written, a
    private one in the temp dir: tasks that cannot share our locks cannot be coordinated
    with, but this user's tasks still are among themselves."""
    try:
        directory.mkdir(parents=True)
        os.chmod(directory, 0o1777)  # mkdir's mode is cut by the umask
    except OSError:
        pass  # it exists, or cannot be made: checked below
    if directory.is_dir() and os.access(directory, os.W_OK | os.X_OK):
        return directory
    private = Path(tempfile.gettempdir()) / f"virnucpro-gpu-locks-uid{os.getuid()}"
    log.warning("%s: cannot create GPU locks there; using %s (coordinates only this user's "
                "tasks)", directory, private)  # fmt: skip
    with contextlib.suppress(OSError):  # if even that fails, GPUs are used unlocked
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
    return private


def _open_lock(path: Path) -> IO[bytes]:
    """Open a lock file, creating it with mode 0666 whatever the umask. Read-only when that
    is all we may do (an older 0644 file of another user): flock needs no write access."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # only the owner may, and only a new file needs it
        if os.fstat(fd).st_mode & 0o777 != 0o666:
            os.fchmod(fd, 0o666)
    return os.fdopen(fd, "rb")


def _open_first(directory: Path, gpu_id: str) -> tuple[Path, IO[bytes]] | None:
    """The shared lock file of a GPU, else a per-user one beside it. The shared file can be
    one we may not open (another user's, not readable to us): that user's tasks cannot be
    kept apart from ours, and treating the GPU as taken could wait for ever on a stale file.
    All of this user's tasks fall back to the same per-user file, so they at least never
    share the GPU among themselves. None when neither opens (the GPU is used unlocked)."""
    name = lock_name(gpu_id)
    for path in (directory / name, directory / f"{name[:-5]}.uid{os.getuid()}.lock"):
        try:
            return path, _open_lock(path)
        except OSError:
            continue
    return None


def try_claim(gpu_ids: Sequence[str], lock_dir: Path) -> tuple[int, Path | None] | None:
    """One pass over the GPUs: the index of the first free one and its lock file (None for
    a GPU none of whose lock files could be opened, taken only when no lockable GPU is
    free), or None when every GPU is taken. The lock stays held (see release_all)."""
    unlockable = None
    for index, gpu_id in enumerate(gpu_ids):
        opened = _open_first(lock_dir, gpu_id)
        if opened is None:
            if unlockable is None:
                unlockable = index
            continue
        path, handle = opened
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _held.append(handle)
        return index, path
    if unlockable is not None:
        log.warning("GPU %d (%s): no lock file could be opened in %s; using it unlocked",
                    unlockable, gpu_ids[unlockable], lock_dir)  # fmt: skip
        return unlockable, None
    return None


def claim_gpu(
    gpu_ids: Sequence[str],
    lock_dir: Path | None = None,
    *,
    share: bool | None = None,
    poll_seconds: float = 5.0,
    timeout: float | None = None,
) -> int | None:
    """Index (into ``gpu_ids``, torch's order) of a GPU this process now owns; None when
    there is no GPU, or with ``share`` (default: $VIRNUCPRO_GPU_SHARE) when all are taken
    (then use the first). ``gpu_ids`` are stable identities of the visible GPUs (UUIDs).

    The lock is held for the rest of the process's life (see release_all). When every GPU
    is taken it logs once and retries every ``poll_seconds``; with ``timeout`` set it raises
    TimeoutError after that many seconds."""
    if not gpu_ids:
        return None
    share = share_requested() if share is None else share
    directory = _usable_dir(Path(lock_dir) if lock_dir is not None else default_lock_dir())
    started = time.monotonic()
    announced = False
    while True:
        claimed = try_claim(gpu_ids, directory)
        if claimed is not None:
            index, path = claimed
            log.info("claimed GPU %d (%s, lock %s)", index, gpu_ids[index], path)
            return index
        if share:
            log.info("every visible GPU is claimed; sharing GPU 0 (%s=1)", SHARE_ENV)
            return None
        waited = time.monotonic() - started
        if timeout is not None and waited >= timeout:
            raise TimeoutError(f"all {len(gpu_ids)} GPUs stayed busy for {waited:.0f} s "
                               f"({directory})")  # fmt: skip
        if not announced:
            locks = ", ".join(lock_name(gpu_id) for gpu_id in gpu_ids)
            log.warning("all %d visible GPU(s) are claimed by other tasks (locks %s in %s); "
                        "waiting for one (%s=1 to share instead)", len(gpu_ids), locks,
                        directory, SHARE_ENV)  # fmt: skip
            announced = True
        time.sleep(poll_seconds)


def release_all() -> None:
    """Release every GPU lock this process holds (normally left to process exit)."""
    while _held:
        _held.pop().close()
