"""predict with several workers: same answer for any worker count, failures isolated and
reported, dead workers replaced, --resume reuses only matching finished shards.

The failure and crash cases use the one fault-injection point of virnucpro.runner
(inject_fault), set by VIRNUCPRO_FAULT: "shard_00002:embed-dna" makes that shard fail at that
stage (prepare, embed-dna, embed-protein or classify), "worker1:embed-dna" every shard of that
worker; "shard_00003:crash" kills the worker holding that shard on its first try, right after
it reported the shard launched; "shard_00002:kill-prepare" kills the worker's prepare process
while it prepares that shard (first try).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virnucpro.features import read_features
from virnucpro.models.classifier import MLPClassifier, write_classifier

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "example.fa"
VIRNUCPRO = Path(sys.executable).parent / "virnucpro"
RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv",
           "virnucpro_summary.tsv")  # fmt: skip
SHARD_SIZE = "2000"  # 7 shards of the example
WORK = "virnucpro-work"  # predict's intermediates in OUTDIR


def predict(models: Path, out: Path, *extra: str, env: dict | None = None, **kwargs):
    command = [str(VIRNUCPRO), "-q", "predict", str(EXAMPLE), "--models", str(models), "--outdir",
               str(out), "--shard-size", SHARD_SIZE, "--threads", "1", *extra]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})}, **kwargs)  # fmt: skip


def results(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in RESULTS}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "demo"
    subprocess.run([str(VIRNUCPRO), "-q", "models", "demo", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def clean(demo, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("clean") / "out"
    result = predict(demo, out, "--workers", "1")
    assert result.returncode == 0, result.stderr
    return results(out)


@pytest.mark.parametrize("workers", ["2", "4"])
def test_same_files_for_any_worker_count(demo, clean, tmp_path, workers):
    result = predict(demo, tmp_path / "out", "--workers", workers)
    assert result.returncode == 0, result.stderr
    assert results(tmp_path / "out") == clean
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["parameters"]["workers"] == ["cpu"] * int(workers)
    assert [s["device"] for s in run["shard_seconds"].values()] == ["cpu"] * 7


def test_failed_shard_is_reported_and_resume_completes_it(demo, clean, tmp_path):
    out = tmp_path / "out"
    failed = predict(demo, out, "--workers", "2",
                     env={"VIRNUCPRO_FAULT": "shard_00002:embed-dna"})  # fmt: skip
    assert failed.returncode == 3, failed.stderr
    assert "1 of 7 shard(s) failed" in failed.stderr
    assert "Traceback" not in failed.stderr
    lines = (out / "failed_files.txt").read_text().splitlines()
    assert lines == [f"{out / WORK / 'shards' / 'shard_00002.fa'}|embed-dna|test failure"]

    # the other shards are complete; shard 2's sequences are listed as unfinished
    shard2 = {line[1:].split()[0] for line in
              (out / WORK / "shards" / "shard_00002.fa").read_text().splitlines()
              if line.startswith(">")}  # fmt: skip
    clean_rows = clean["virnucpro_summary.tsv"].decode().splitlines()
    rows = (out / "virnucpro_summary.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == [r.split("\t")[0] for r in clean_rows]
    for row, clean_row in zip(rows[1:], clean_rows[1:], strict=True):
        if row.split("\t")[0] in shard2:
            assert row.endswith("\tunfinished")
        else:
            assert row == clean_row

    resumed = predict(demo, out, "--workers", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert results(out) == clean
    assert not (out / "failed_files.txt").exists()
    assert json.loads((out / "run.json").read_text())["shards_reused"] == 6


def test_dead_worker_is_replaced_and_its_shard_retried(demo, clean, tmp_path):
    result = predict(demo, tmp_path / "out", "--workers", "2",
                     env={"VIRNUCPRO_FAULT": "shard_00003:crash"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert results(tmp_path / "out") == clean


def test_two_lanes_on_the_cpu_give_the_same_files_when_a_worker_dies(
    demo, clean, tmp_path, monkeypatch, caplog
):
    """The GPU's two lanes (two shards embedded at once per worker), run on the CPU: the same
    files, also when the worker dies with two shards under way (each is retried alone)."""
    from virnucpro.models.files import resolve_models
    from virnucpro.predict import predict as run_predict

    monkeypatch.setenv("VIRNUCPRO_FAULT", "shard_00003:crash")
    out = tmp_path / "out"
    done = run_predict(EXAMPLE, out, resolve_models(demo), shard_size=int(SHARD_SIZE),
                       device="cpu", workers=1, threads=1, lanes=2)  # fmt: skip
    assert "worker1 (cpu) died (exit code 70)" in caplog.text
    assert (done.failed, done.shards) == (0, 7)
    assert results(out) == clean


def test_a_worker_that_fails_twice_in_a_row_retires_without_failing_more(demo, clean, tmp_path):
    """Two failures in a row retire a worker (its device may be broken); the shards it held
    and had not started go to the next worker instead of failing on the broken one."""
    out = tmp_path / "out"
    result = predict(demo, out, "--workers", "1", env={"VIRNUCPRO_FAULT": "worker1:embed-dna"})
    assert result.returncode == 3, result.stderr
    assert "2 of 7 shard(s) failed" in result.stderr
    assert "worker1 (cpu) died (exit code 0)" in result.stderr
    failed = (out / "failed_files.txt").read_text().splitlines()
    assert [line.split("|")[1] for line in failed] == ["embed-dna", "embed-dna"]


def test_a_killed_prepare_process_fails_only_its_shard(demo, clean, tmp_path):
    out = tmp_path / "out"
    result = predict(demo, out, "--workers", "1",
                     env={"VIRNUCPRO_FAULT": "shard_00002:kill-prepare"})  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "1 of 7 shard(s) failed" in result.stderr
    failed = (out / "failed_files.txt").read_text().splitlines()
    assert len(failed) == 1 and failed[0].startswith(str(out / WORK / "shards" / "shard_00002.fa"))
    assert failed[0].split("|")[1] == "prepare"


def predict_until_two_shards_finished(demo: Path, out: Path, stderr) -> subprocess.Popen:
    """A one-worker predict in its own process group, once two shards are finished."""
    command = [str(VIRNUCPRO), "-q", "predict", str(EXAMPLE), "--models", str(demo),
               "--outdir", str(out), "--shard-size", SHARD_SIZE, "--threads", "1",
               "--workers", "1"]  # fmt: skip
    process = subprocess.Popen(command, start_new_session=True, stderr=stderr, text=True)
    deadline = time.monotonic() + 300
    while len(list((out / WORK).glob("*.done.json"))) < 2:
        assert process.poll() is None, "finished before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return process


def test_killed_run_resumes_to_the_same_files(demo, clean, tmp_path):
    out = tmp_path / "out"
    process = predict_until_two_shards_finished(demo, out, subprocess.DEVNULL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "virnucpro_summary.tsv").exists()

    resumed = predict(demo, out, "--workers", "1", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert results(out) == clean
    assert json.loads((out / "run.json").read_text())["shards_reused"] >= 2


def test_interrupted_run_keeps_finished_shards_and_says_how_to_resume(demo, clean, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group): exit 130, one warning naming the
    finished shards kept and --resume, no traceback; --resume then finishes the same files."""
    out = tmp_path / "out"
    process = predict_until_two_shards_finished(demo, out, subprocess.PIPE)
    os.killpg(process.pid, signal.SIGINT)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert lines[-1] == "virnucpro: error: interrupted", stderr
    kept = len(list((out / WORK).glob("*.done.json")))
    hint = f"interrupted: {kept} finished shard(s) kept in {out / WORK}; rerun the same command"
    assert f"{hint} with --resume" in stderr, stderr
    assert kept >= 2 and not (out / "virnucpro_summary.tsv").exists()

    resumed = predict(demo, out, "--workers", "1", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert results(out) == clean
    assert json.loads((out / "run.json").read_text())["shards_reused"] == kept


def test_resume_ignores_shards_of_other_parameters(demo, tmp_path):
    out = tmp_path / "out"
    first = predict(demo, out, "--workers", "1", "--keep-intermediate")
    assert first.returncode == 0, first.stderr
    other = predict(demo, out, "--workers", "1", "--resume", "--chunk-size", "300")
    assert other.returncode == 0, other.stderr
    assert json.loads((out / "run.json").read_text())["shards_reused"] == 0


def test_gpus_on_a_machine_without_them(demo, tmp_path):
    result = predict(demo, tmp_path / "out", "--gpus", "0")
    assert result.returncode == 2
    assert result.stderr == "virnucpro: error: --gpus 0: no GPU is visible on this machine\n"


def test_resume_never_mixes_files_of_an_interrupted_rerun(demo, clean, tmp_path):
    """A shard re-run with other parameters that fails midway must not leave the old
    'finished' marker beside its half-rewritten files."""
    out = tmp_path / "out"
    assert predict(demo, out, "--workers", "1", "--keep-intermediate").returncode == 0
    other = predict(demo, out, "--workers", "1", "--resume", "--chunk-size", "300",
                    env={"VIRNUCPRO_FAULT": "shard_00001:embed-dna"})  # fmt: skip
    assert other.returncode == 3, other.stderr
    again = predict(demo, out, "--workers", "1", "--resume")
    assert again.returncode == 0, again.stderr
    assert results(out) == clean
    assert json.loads((out / "run.json").read_text())["shards_reused"] == 0


def test_every_shard_failed_writes_no_results(demo, tmp_path):
    out = tmp_path / "out"
    command = [str(VIRNUCPRO), "-q", "predict", str(EXAMPLE), "--models", str(demo), "--outdir",
               str(out), "--shard-size", "1000000000", "--workers", "1"]  # fmt: skip
    env = {**os.environ, "VIRNUCPRO_FAULT": "shard_00001:prepare"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["failed_files.txt", WORK]


def test_a_resume_in_which_every_shard_failed_says_the_results_are_old(demo, tmp_path):
    out = tmp_path / "out"
    base = [str(VIRNUCPRO), "predict", str(EXAMPLE), "--models", str(demo), "--outdir", str(out),
            "--shard-size", "1000000000", "--workers", "1", "--keep-intermediate"]  # fmt: skip
    assert subprocess.run(base, capture_output=True, timeout=600).returncode == 0
    env = {**os.environ, "VIRNUCPRO_FAULT": "shard_00001:prepare"}
    result = subprocess.run([*base, "--resume", "--chunk-size", "300"], capture_output=True,
                            text=True, timeout=600, env=env)  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert (f"{out}: prediction_results.txt, prediction_results_highestscore.csv, "
            "virnucpro_summary.tsv, run.json are an earlier run's results, not this run's"
            in result.stderr), result.stderr  # fmt: skip


def test_failed_shards_are_reported_in_the_log_file_too(demo, tmp_path):
    out, log = tmp_path / "out", tmp_path / "run.log"
    command = [
        str(VIRNUCPRO),
        "-q",
        "--log-file",
        str(log),
        "predict",
        str(EXAMPLE),
        "--models",
        str(demo),
        "--outdir",
        str(out),
        "--shard-size",
        "1000000000",
        "--workers",
        "1",
    ]
    env = {**os.environ, "VIRNUCPRO_FAULT": "shard_00001:prepare"}  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 3, result.stderr
    message = (f"1 of 1 shard(s) failed; see {out / 'failed_files.txt'}; rerun the same command "
               "with --resume")  # fmt: skip
    assert result.stderr.splitlines()[-1] == f"virnucpro: error: {message}"
    assert log.read_text().splitlines()[-1].endswith(f"virnucpro ERROR: {message}")


def test_models_that_do_not_fit_stop_the_run_cleanly(demo, tmp_path):
    """The workers find it while their first shard is being prepared beside the load: one
    line, exit 2, and no work directory or outputs left behind."""
    models = tmp_path / "models"
    shutil.copytree(demo, models)
    write_classifier(MLPClassifier(10), models / "classifier_500.safetensors")
    out = tmp_path / "out"
    result = predict(models, out, "--workers", "2")
    assert result.returncode == 2, result.stderr
    assert "classifier expects 10 features" in result.stderr
    assert "Traceback" not in result.stderr
    time.sleep(1)  # a prepare process that outlived its worker would write by now
    assert not out.exists() or list(out.iterdir()) == []


def test_compile_compiles_esm2_and_leaves_dnabert_eager(demo, clean, tmp_path):
    """predict --compile: ESM-2 (most of the GPU time) compiled, DNABERT-S eager (its
    compile costs more at load than it saves on a predict-sized input), the same calls."""
    out = tmp_path / "out"
    result = predict(demo, out, "--workers", "1", "--compile", "--keep-intermediate")
    assert result.returncode == 0, result.stderr
    assert "leaked semaphore" not in result.stderr  # torch.compile's progress-bar lock
    compiled = {}
    for path in sorted((out / WORK).glob("shard_*.safetensors")):
        kind = path.name.split(".")[1]
        info = json.loads(read_features(path)[2]["info"])
        compiled.setdefault(kind, set()).add(info["compiled"])
    assert compiled == {"dnabert": {False}, "esm2": {True}}
    calls = [line.split("\t")[:2] for line in results(out)["prediction_results.txt"].decode()
             .splitlines()]  # fmt: skip
    eager = [line.split("\t")[:2] for line in clean["prediction_results.txt"].decode().splitlines()]
    assert calls == eager and len(calls) > 1
