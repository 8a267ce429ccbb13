"""GPU claiming by lock file, tested on CPU with fake GPU counts."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from virnucpro import gpu_claim


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(gpu_claim.LOCK_DIR_ENV, raising=False)
    yield
    gpu_claim.release_all()


def test_pinned_by_cuda_visible_devices_claims_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpu_claim.claim_gpu(4, tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_empty_cuda_visible_devices_also_counts_as_pinned(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_claim.claim_gpu(4, tmp_path) is None


@pytest.mark.parametrize("count", [0, 1])
def test_single_or_no_gpu_claims_nothing(tmp_path, count):
    assert gpu_claim.claim_gpu(count, tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_claims_distinct_gpus_in_order_within_one_process(tmp_path):
    # flock locks belong to the open file, so even one process gets distinct GPUs.
    assert [gpu_claim.claim_gpu(3, tmp_path) for _ in range(3)] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu0.lock", "gpu1.lock", "gpu2.lock"]


def test_released_gpu_is_claimed_again(tmp_path):
    assert gpu_claim.claim_gpu(2, tmp_path) == 0
    gpu_claim.release_all()
    assert gpu_claim.claim_gpu(2, tmp_path) == 0


def test_lock_dir_from_environment(tmp_path, monkeypatch):
    lock_dir = tmp_path / "locks"
    monkeypatch.setenv(gpu_claim.LOCK_DIR_ENV, str(lock_dir))
    assert gpu_claim.claim_gpu(2) == 0
    assert (lock_dir / "gpu0.lock").exists()


def test_all_busy_waits_logs_and_times_out(tmp_path, caplog):
    held = [gpu_claim.try_claim(2, tmp_path) for _ in range(2)]
    assert [h[0] for h in held] == [0, 1]
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="all 2 GPUs stayed busy"):
        gpu_claim.claim_gpu(2, tmp_path, poll_seconds=0.05, timeout=0.3)
    assert time.monotonic() - start >= 0.3
    assert "waiting for one" in caplog.text
    for _, handle in held:
        handle.close()


def test_waiting_task_gets_the_gpu_when_it_is_freed(tmp_path):
    held = [gpu_claim.try_claim(2, tmp_path) for _ in range(2)]
    script = textwrap.dedent(
        f"""
        from virnucpro.gpu_claim import claim_gpu
        print(claim_gpu(2, {str(tmp_path)!r}, poll_seconds=0.05, timeout=20), flush=True)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    time.sleep(0.5)
    assert proc.poll() is None, "must wait while both GPUs are busy"
    held[1][1].close()  # GPU 1 is freed
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "1"
    held[0][1].close()


def _worker(lock_dir: str, num_gpus: int, barrier, results) -> None:
    barrier.wait()  # all start together to race for the locks
    index = gpu_claim.claim_gpu(num_gpus, Path(lock_dir), poll_seconds=0.05, timeout=30)
    results.put((os.getpid(), index, time.monotonic()))
    time.sleep(0.4)  # hold the GPU a while, as an embedding task would


def test_concurrent_processes_never_share_a_gpu(tmp_path):
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    ctx = mp.get_context("spawn")
    num_gpus, num_tasks = 2, 4
    barrier = ctx.Barrier(num_tasks)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path), num_gpus, barrier, results))
        for _ in range(num_tasks)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    claims = sorted((results.get(timeout=5) for _ in procs), key=lambda r: r[2])
    # The first two tasks got the two GPUs at once; the other two had to wait for them.
    assert sorted(c[1] for c in claims[:num_gpus]) == [0, 1]
    assert all(c[1] in (0, 1) for c in claims)
    assert claims[num_gpus][2] - claims[0][2] >= 0.3
    assert len({c[0] for c in claims}) == num_tasks
    # Each holder keeps its GPU >= 0.4 s after claiming: two claims of one GPU closer
    # than that would mean two tasks shared it.
    for gpu in (0, 1):
        times = [c[2] for c in claims if c[1] == gpu]
        assert len(times) == 2
        assert times[1] - times[0] >= 0.35
