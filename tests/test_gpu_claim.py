"""GPU claiming by lock file, tested on CPU with fake GPU identities."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from virnucpro import gpu_claim

A, B, C = "GPU-aaaa", "GPU-bbbb", "GPU-cccc"


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(gpu_claim.LOCK_DIR_ENV, raising=False)
    monkeypatch.delenv(gpu_claim.SHARE_ENV, raising=False)
    yield
    gpu_claim.release_all()


def test_no_gpu_claims_nothing(tmp_path):
    assert gpu_claim.claim_gpu([], tmp_path / "locks") is None
    assert not (tmp_path / "locks").exists()


def test_claims_distinct_gpus_in_order_within_one_process(tmp_path):
    # flock locks belong to the open file, so even one process gets distinct GPUs.
    assert [gpu_claim.claim_gpu([A, B, C], tmp_path) for _ in range(3)] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gpu-GPU-aaaa.lock", "gpu-GPU-bbbb.lock", "gpu-GPU-cccc.lock"
    ]  # fmt: skip


def test_cuda_visible_devices_set_still_claims_among_the_visible_gpus(tmp_path, monkeypatch):
    """Processes that see different subsets (CUDA_VISIBLE_DEVICES=1,2 and 0,1) never share a
    GPU: locks are keyed by identity, not by each process's own numbering."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    assert gpu_claim.claim_gpu([B, C], tmp_path) == 0  # takes B
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpu_claim.claim_gpu([A, B], tmp_path) == 0  # A: B is taken
    assert gpu_claim.claim_gpu([A, B, C], tmp_path) == 2  # only C is left
    with pytest.raises(TimeoutError):
        gpu_claim.claim_gpu([B], tmp_path, poll_seconds=0.01, timeout=0.05)


def test_single_gpu_is_claimed_and_a_second_task_waits_logging_once(tmp_path, caplog):
    assert gpu_claim.claim_gpu([A], tmp_path) == 0
    caplog.set_level(logging.INFO)
    with pytest.raises(TimeoutError, match="all 1 GPUs stayed busy"):
        gpu_claim.claim_gpu([A], tmp_path, poll_seconds=0.01, timeout=0.2)
    waits = [r.getMessage() for r in caplog.records if "waiting for one" in r.getMessage()]
    assert len(waits) == 1, waits
    assert "gpu-GPU-aaaa.lock" in waits[0] and str(tmp_path) in waits[0]
    assert gpu_claim.SHARE_ENV in waits[0]


def test_share_takes_a_free_gpu_else_shares_without_waiting(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(gpu_claim.SHARE_ENV, "1")
    assert gpu_claim.claim_gpu([A, B], tmp_path) == 0
    assert gpu_claim.claim_gpu([A, B], tmp_path) == 1
    caplog.set_level(logging.INFO)
    assert gpu_claim.claim_gpu([A, B], tmp_path, timeout=0) is None  # no TimeoutError
    assert "sharing GPU 0" in caplog.text


def test_explicit_share_false_waits_even_with_the_environment_set(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_claim.SHARE_ENV, "1")
    assert gpu_claim.claim_gpu([A], tmp_path) == 0
    with pytest.raises(TimeoutError):
        gpu_claim.claim_gpu([A], tmp_path, share=False, poll_seconds=0.01, timeout=0.05)


def test_released_gpu_is_claimed_again(tmp_path):
    assert gpu_claim.claim_gpu([A, B], tmp_path) == 0
    gpu_claim.release_all()
    assert gpu_claim.claim_gpu([A, B], tmp_path) == 0


def test_lock_dir_from_environment_and_default(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert gpu_claim.default_lock_dir() == tmp_path / "tmp" / "virnucpro-gpu-locks"
    lock_dir = tmp_path / "locks"
    monkeypatch.setenv(gpu_claim.LOCK_DIR_ENV, str(lock_dir))
    assert gpu_claim.claim_gpu([A, B]) == 0
    assert (lock_dir / "gpu-GPU-aaaa.lock").exists()


def test_lock_dir_is_created_sticky_world_writable_and_files_0666_whatever_the_umask(tmp_path):
    lock_dir = tmp_path / "new" / "locks"
    old = os.umask(0o077)
    try:
        assert gpu_claim.claim_gpu([A], lock_dir) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o1777
    assert stat.S_IMODE((lock_dir / "gpu-GPU-aaaa.lock").stat().st_mode) == 0o666


def test_existing_lock_dir_keeps_its_mode(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o755)
    assert gpu_claim.claim_gpu([A], lock_dir) == 0
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o755


def _deny(monkeypatch, path: Path, write_only: bool = False) -> None:
    """os.open raises PermissionError for ``path`` (for write opens only, with write_only),
    as it does for another user's lock file when we are not root."""
    real_open = os.open

    def fake_open(name, flags, *args, **kwargs):
        if Path(name) == path and (not write_only or flags & (os.O_RDWR | os.O_WRONLY)):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


def test_another_users_read_only_lock_file_is_locked_read_only(tmp_path, monkeypatch):
    shared = tmp_path / "gpu-GPU-aaaa.lock"
    shared.touch()
    shared.chmod(0o644)
    _deny(monkeypatch, shared, write_only=True)
    assert gpu_claim.claim_gpu([A], tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [shared.name]
    with pytest.raises(TimeoutError):  # held: the same file is what others lock
        gpu_claim.claim_gpu([A], tmp_path, poll_seconds=0.01, timeout=0.05)


def test_unopenable_lock_file_falls_back_to_a_per_user_name(tmp_path, monkeypatch):
    shared = tmp_path / "gpu-GPU-aaaa.lock"
    shared.touch()
    shared.chmod(0o444)  # root ignores modes: the denial is simulated
    _deny(monkeypatch, shared)
    assert gpu_claim.claim_gpu([A, B], tmp_path) == 0  # never fails
    personal = tmp_path / f"gpu-GPU-aaaa.uid{os.getuid()}.lock"
    assert personal.exists()
    # this user's next task takes the same per-user file, so it does not share GPU A
    assert gpu_claim.claim_gpu([A, B], tmp_path) == 1
    with pytest.raises(TimeoutError):
        gpu_claim.claim_gpu([A], tmp_path, poll_seconds=0.01, timeout=0.05)


def test_lock_dir_that_cannot_be_created_falls_back_to_a_private_one(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "file").write_text("")
    assert gpu_claim.claim_gpu([A], tmp_path / "file" / "locks") == 0
    private = tmp_path / "tmp" / f"virnucpro-gpu-locks-uid{os.getuid()}"
    assert (private / "gpu-GPU-aaaa.lock").exists()


def test_gpu_without_any_openable_lock_is_used_unlocked(tmp_path, monkeypatch, caplog):
    real_open = os.open

    def fake_open(name, flags, *args, **kwargs):
        if Path(name).parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    assert gpu_claim.claim_gpu([A], tmp_path) == 0
    assert "using it unlocked" in caplog.text


def test_waiting_task_gets_the_gpu_when_it_is_freed(tmp_path):
    assert gpu_claim.claim_gpu([A, B], tmp_path) == 0
    assert gpu_claim.claim_gpu([A, B], tmp_path) == 1
    script = textwrap.dedent(
        f"""
        from virnucpro.gpu_claim import claim_gpu
        print(claim_gpu(["{B}", "{A}"], {str(tmp_path)!r}, poll_seconds=0.05, timeout=20),
              flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert proc.poll() is None, "must wait while both GPUs are busy"
    gpu_claim._held[0].close()  # GPU A is freed: index 1 in the waiting task's order
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "1"


def _worker(lock_dir: str, gpus: list[str], barrier, results) -> None:
    barrier.wait()  # all start together to race for the locks
    index = gpu_claim.claim_gpu(gpus, Path(lock_dir), poll_seconds=0.05, timeout=30)
    results.put((os.getpid(), gpus[index], time.monotonic()))
    time.sleep(0.4)  # hold the GPU a while, as an embedding task would


def test_concurrent_processes_never_share_a_gpu(tmp_path):
    ctx = mp.get_context("spawn")
    num_tasks = 4
    barrier = ctx.Barrier(num_tasks)
    results = ctx.Queue()
    views = [[A, B], [B, A], [A, B], [B, A]]  # different numbering in different tasks
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path), view, barrier, results)) for view in views
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    claims = sorted((results.get(timeout=5) for _ in procs), key=lambda r: r[2])
    # The first two tasks got the two GPUs at once; the other two had to wait for them.
    assert sorted(c[1] for c in claims[:2]) == [A, B]
    assert claims[2][2] - claims[0][2] >= 0.3
    assert len({c[0] for c in claims}) == num_tasks
    # Each holder keeps its GPU >= 0.4 s after claiming: two claims of one GPU closer
    # than that would mean two tasks shared it.
    for gpu in (A, B):
        times = [c[2] for c in claims if c[1] == gpu]
        assert len(times) == 2
        assert times[1] - times[0] >= 0.35
