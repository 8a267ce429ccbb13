"""The pipeline, run by the real Nextflow (25.04.4 from Maven Central, local and SLURM
executors), against `virnucpro predict` on the same input, models, chunk and shard size.

These tests run in CI (they fail there, never skip, when Java or Maven is missing). They take
a few minutes: every task is a fresh `virnucpro` process that imports torch.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nf_run import REPO, Nextflow, install_nextflow, jobcomp, table, trace

EXAMPLE = REPO / "examples" / "example.fa"
VIRNUCPRO = [sys.executable, "-m", "virnucpro"]
RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv", "virnucpro_summary.tsv")
TEST_SHARD_SIZE, TEST_SHARDS = 4000, 4  # conf/test.config
TEST_TASKS = 3 + 4 * TEST_SHARDS  # models, split, summarize; prepare, 2 embed, classify


@pytest.fixture(scope="session")
def nextflow(tmp_path_factory) -> Nextflow:
    return Nextflow(install_nextflow(), tmp_path_factory.mktemp("nxf_home"))


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> Path:
    """The demo models the test profile makes (same command, same seed)."""
    directory = tmp_path_factory.mktemp("models") / "models"
    subprocess.run([*VIRNUCPRO, "models", "demo", str(directory)], check=True)
    return directory


def predict(fasta: Path, models: Path, outdir: Path, shard_size: int) -> Path:
    cmd = [*VIRNUCPRO, "predict", str(fasta), "--models", str(models), "--outdir", str(outdir)]
    cmd += ["--shard-size", str(shard_size), "--chunk-size", "500", "--threads", "1"]
    subprocess.run(cmd, check=True)
    return outdir


def assert_same_results(pipeline: Path, reference: Path) -> None:
    """Byte-identical to predict's outputs: frames, labels, scores, chunk calls, summary
    rows. No float tolerance is needed because both run torch with one thread per process
    (the tasks get --threads ${task.cpus}, 1 in the test profile; predict --threads 1), and
    virnucpro's results do not depend on how the frames are spread over processes."""
    for name in RESULTS:
        assert (pipeline / name).read_bytes() == (reference / name).read_bytes(), name


def statuses(rows: list[dict[str, str]]) -> dict[str, str]:
    return {row["name"]: row["status"] for row in rows}


# -- 1 and 2: the test profile, against predict, then -resume -----------------------------


@pytest.fixture(scope="module")
def test_profile_run(nextflow, tmp_path_factory):
    launch = tmp_path_factory.mktemp("test_profile")
    nextflow.run("-profile", "test", "--outdir", "results", "--trace_report_suffix", "first",
                 cwd=launch)  # fmt: skip
    return launch


def test_test_profile_equals_predict(test_profile_run, demo_models, tmp_path):
    results = test_profile_run / "results"
    reference = predict(EXAMPLE, demo_models, tmp_path / "predict", shard_size=TEST_SHARD_SIZE)
    assert_same_results(results / "example", reference)
    ran = json.loads((results / "example" / "run.json").read_text())
    expected = json.loads((reference / "run.json").read_text())
    assert ran["models"] == expected["models"] | {
        kind: [{**entry, "path": ran["models"][kind][0]["path"]} for entry in entries]
        for kind, entries in expected["models"].items()
    }, "the pipeline's demo models are not predict's"
    assert ran["shards"] == expected["shards"] == TEST_SHARDS


def test_test_profile_reports(test_profile_run):
    info = test_profile_run / "results" / "pipeline_info"
    for kind in ("execution_trace_first.txt", "execution_timeline_first.html",
                 "execution_report_first.html", "pipeline_dag_first.html"):  # fmt: skip
        assert (info / kind).stat().st_size > 0, kind
    rows = trace(test_profile_run / "results", "first")
    assert {row["status"] for row in rows} == {"COMPLETED"}
    gpu = [row for row in rows if row["tag"].endswith("[gpu]")]
    assert {row["process"].split(":")[-1] for row in gpu} == {"EMBED_DNA", "EMBED_PROTEIN"}
    assert len(gpu) == 2 * TEST_SHARDS
    versions = (info / "software_versions.yml").read_text()
    for process in ("MODELS_DEMO", "SPLIT_FASTA", "EMBED_PROTEIN", "SUMMARIZE"):
        assert f'{process}":' in versions
    assert "torch: " in versions


def test_resume_caches_every_task(nextflow, test_profile_run):
    nextflow.run("-profile", "test", "--outdir", "results", "--trace_report_suffix", "again",
                 "-resume", cwd=test_profile_run)  # fmt: skip
    rows = trace(test_profile_run / "results", "again")
    assert len(rows) == len(trace(test_profile_run / "results", "first"))
    assert {row["status"] for row in rows} == {"CACHED"}
    done = subprocess.run([str(nextflow.launcher), "log"], cwd=test_profile_run, env=nextflow.env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert [line.split("\t")[3].strip() for line in done.stdout.splitlines()[1:]] == ["OK", "OK"]


# -- 3: several samples (one gzipped, one without any kept frame), change one, -resume -----


def write_fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    text = "".join(f">{name}\n{sequence}\n" for name, sequence in records)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def example_records() -> list[tuple[str, str]]:
    records, name = [], None
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith(">"):
            name = line[1:].split()[0]
            records.append([name, ""])
        else:
            records[-1][1] += line.strip()
    return [tuple(r) for r in records]


@pytest.fixture(scope="module")
def samples(nextflow, demo_models, tmp_path_factory):
    launch = tmp_path_factory.mktemp("samples")
    records = example_records()
    alpha = write_fasta(launch / "alpha.fa", records[:6])
    beta = write_fasta(launch / "beta.fa.gz", records[6:12])
    # nothing to score: too short for one codon, or only Ns (codons with N are dropped)
    empty = write_fasta(launch / "empty.fasta", [("tiny", "AC"), ("unknown", "N" * 700)])
    sheet = launch / "samples.csv"
    sheet.write_text(f"sample,fasta\nalpha,{alpha}\nbeta,{beta}\nempty,{empty}\n")
    args = ["--input", str(sheet), "--models", str(demo_models), "--outdir", "results",
            "--shard_size", "5000", "-profile", "test"]  # fmt: skip
    before = listing(demo_models)
    nextflow.run(*args, "--trace_report_suffix", "first", cwd=launch)
    assert listing(demo_models) == before, "a task wrote into the --models directory"
    return launch, args, records


def listing(directory: Path) -> dict[str, int]:
    return {str(p): p.lstat().st_mtime_ns for p in [directory, *directory.rglob("*")]}


def test_every_sequence_of_every_sample_has_a_summary_row(samples, demo_models, tmp_path):
    launch, _, records = samples
    expected = {
        "alpha": records[:6],
        "beta": records[6:12],
        "empty": [("tiny", "AC"), ("unknown", "N" * 700)],
    }
    for sample, recs in expected.items():
        rows = table(launch / "results" / sample / "virnucpro_summary.tsv")
        assert [row[:2] for row in rows[1:]] == [[name, str(len(seq))] for name, seq in recs]
    empty_rows = table(launch / "results" / "empty" / "virnucpro_summary.tsv")
    assert [row[-1] for row in empty_rows[1:]] == ["unscored", "unscored"]
    reference = predict(launch / "beta.fa.gz", demo_models, tmp_path / "beta", shard_size=5000)
    assert_same_results(launch / "results" / "beta", reference)


def test_changing_one_sample_reruns_only_its_tasks(nextflow, samples):
    launch, args, records = samples
    nextflow.run(*args, "--trace_report_suffix", "same", "-resume", cwd=launch)
    assert set(statuses(trace(launch / "results", "same")).values()) == {"CACHED"}

    changed = [
        (name + "_v2" if i == 0 else name, seq) for i, (name, seq) in enumerate(records[6:12])
    ]
    write_fasta(launch / "beta.fa.gz", changed)
    nextflow.run(*args, "--trace_report_suffix", "changed", "-resume", cwd=launch)
    rows = trace(launch / "results", "changed")
    rerun = {row["name"] for row in rows if row["status"] == "COMPLETED"}
    cached = {row["name"] for row in rows if row["status"] == "CACHED"}
    assert rerun and all("(beta" in name for name in rerun), rerun
    assert all("(beta" not in name for name in cached)
    assert any("(alpha" in name for name in cached) and any("(empty" in name for name in cached)
    summary = table(launch / "results" / "beta" / "virnucpro_summary.tsv")
    assert summary[1][0] == records[6][0] + "_v2"


# -- 4: a task that fails ------------------------------------------------------------------

FAIL_CONFIG = """
// test only: EMBED_PROTEIN of shard_00002 gets an option the CLI refuses (exit 2)
process {
    withName: 'EMBED_PROTEIN' {
        ext.args = { meta.shard == 'shard_00002' ? '--no-such-option' : '' }
    }
}
"""


@pytest.fixture(scope="module")
def failing(nextflow, demo_models, tmp_path_factory):
    launch = tmp_path_factory.mktemp("failing")
    (launch / "fail.config").write_text(FAIL_CONFIG)
    (launch / "ignore.config").write_text("process.errorStrategy = 'ignore'\n")
    args = ["-profile", "test", "--models", str(demo_models), "--outdir", "results",
            "--shard_size", "6000", "-c", "fail.config"]  # fmt: skip
    return launch, args


def test_failed_task_stops_the_run_naming_sample_and_shard(nextflow, failing):
    launch, args = failing
    done = nextflow.run(*args, cwd=launch, check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "EMBED_PROTEIN (example.shard_00002 [gpu])" in output, output[-3000:]
    assert not (launch / "results" / "example" / "virnucpro_summary.tsv").exists()


def test_ignored_failure_marks_its_sequences_unfinished(nextflow, failing):
    launch, args = failing
    nextflow.run(*args, "-c", "ignore.config", "-resume", cwd=launch)
    rows = table(launch / "results" / "example" / "virnucpro_summary.tsv")[1:]
    assert [row[0] for row in rows] == [name for name, _ in example_records()]
    shards = {}
    for shard, name, _ in (line.split("\t") for line in shard_manifest(launch).splitlines()[1:]):
        shards[name] = shard
    for row in rows:
        if shards[row[0]] == "shard_00002.fa":
            assert row[-1] == "unfinished", row
        else:
            assert row[-1] in ("virus", "not_virus", "unscored"), row


def shard_manifest(launch: Path) -> str:
    found = sorted(launch.glob("work/*/*/shards/shards.tsv"))
    assert len(found) == 1, found
    return found[0].read_text()


# -- 5: SLURM --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        from nf_run import unavailable

        unavailable("slurm-wlm / munge not installed (apt-get install slurmctld slurmd "
                    "slurm-client munge)")  # fmt: skip
    directory = tmp_path_factory.mktemp("slurm")
    script = REPO / "tests" / "nextflow" / "slurm_cluster.sh"
    started = subprocess.run(["bash", str(script), "start", str(directory)],
                             capture_output=True, text=True)  # fmt: skip
    assert started.returncode == 0, started.stderr
    yield directory
    subprocess.run(["bash", str(script), "stop", str(directory)], check=False)


def test_slurm_profile_runs_every_task_as_a_job(nextflow, slurm, test_profile_run, tmp_path):
    (tmp_path / "poll.config").write_text(
        "executor { pollInterval = '1 sec'; queueStatInterval = '2 sec' }\n"
    )
    env = dict(nextflow.env, SLURM_CONF=str(slurm / "slurm.conf"))
    runner = Nextflow(nextflow.launcher, Path(env["NXF_HOME"]))
    runner.env = env
    runner.run("-profile", "test,slurm", "--outdir", "results", "--trace_report_suffix", "slurm",
               "--slurm_queue", "cpu", "--slurm_gpu_queue", "gpu", "-c", "poll.config",
               cwd=tmp_path)  # fmt: skip
    reference = test_profile_run / "results" / "example"
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv",
                 "virnucpro_summary.tsv"):  # fmt: skip
        assert (tmp_path / "results" / "example" / name).read_text() == (
            reference / name
        ).read_text()
    jobs = jobcomp(slurm / "jobcomp.log")
    rows = trace(tmp_path / "results", "slurm")
    assert len(rows) == TEST_TASKS
    for row in rows:
        job = jobs[row["native_id"]]
        assert job["JobState"] == "COMPLETED", job
        gpu_task = row["tag"].endswith("[gpu]")
        assert job["Partition"] == ("gpu" if gpu_task else "cpu"), (row["name"], job)


# -- GPU profile -----------------------------------------------------------------------------


def test_gpu_tasks_keep_their_resources_under_every_profile(nextflow, tmp_path):
    """A profile's own `withLabel: 'process_gpu'` block would replace base.config's (cpus,
    memory and time fell back to 1 CPU and 4 GB on the GPU box before this was fixed)."""
    done = nextflow.run("-profile", "gpu,slurm", "-flat", cwd=tmp_path, verb="config")
    gpu = {line.split(".", 2)[2].split(" = ")[0]: line.split(" = ", 1)[1]
           for line in done.stdout.splitlines() if "'withLabel:process_gpu'" in line}  # fmt: skip
    assert {"cpus", "memory", "time", "accelerator", "queue", "clusterOptions"} <= set(gpu)
    assert "4 * task.attempt" in gpu["cpus"] and "32.GB" in gpu["memory"]
    assert "params.gpu = true" in done.stdout and "process.executor = 'slurm'" in done.stdout


def test_gpu_profile_fails_fast_without_a_gpu(nextflow, demo_models, tmp_path):
    done = nextflow.run("-profile", "test,gpu", "--models", str(demo_models), "--outdir", "out",
                        "--shard_size", "100000000", cwd=tmp_path, check=False)  # fmt: skip
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "virnucpro: error: --device cuda: no CUDA GPU is visible" in output, output[-3000:]
    assert "EMBED_" in output and "(example.shard_00001 [gpu])" in output


def test_fp8_reaches_the_protein_stage(nextflow, demo_models, tmp_path):
    """--precision fp8 is passed to both embedding stages: EMBED_DNA runs it (as bf16,
    anywhere), EMBED_PROTEIN refuses it on this GPU-less machine with the stage's own error."""
    done = nextflow.run("-profile", "test", "--models", str(demo_models), "--outdir", "out",
                        "--shard_size", "100000000", "--precision", "fp8", cwd=tmp_path,
                        check=False)  # fmt: skip
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "virnucpro: error: --precision fp8: needs a GPU with FP8 tensor cores" in output, output[
        -3000:
    ]
    assert "EMBED_PROTEIN (example.shard_00001 [gpu])" in output, output[-3000:]
    embedded = list(tmp_path.glob("work/*/*/*.dnabert.safetensors"))
    assert len(embedded) == 1, embedded
    assert not (tmp_path / "out" / "example" / "virnucpro_summary.tsv").exists()


# -- 6 (part): stubs, and wrong input stopped before any task -----------------------------


def test_stub_run(nextflow, tmp_path):
    """Every stub: block, MODELS_FETCH's too (no demo models, no --models)."""
    args = ["-profile", "test", "-stub-run", "--demo_models", "false", "--model_cache", "cache"]
    nextflow.run(*args, "--outdir", "results", "--trace_report_suffix", "stub", cwd=tmp_path)
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv",
                 "virnucpro_summary.tsv", "run.json"):  # fmt: skip
        assert (tmp_path / "results" / "example" / name).exists()
    rows = trace(tmp_path / "results", "stub")
    assert {row["status"] for row in rows} == {"COMPLETED"}
    assert "MODELS_FETCH" in {row["process"] for row in rows}
    assert (tmp_path / "cache" / "virnucpro_models" / "dnabert-s" / "config.json").exists()


def bad_input_cases(tmp: Path) -> list[tuple[list[str], str]]:
    fasta = write_fasta(tmp / "a.fa", [("s1", "ACGT" * 200)])
    (tmp / "header.csv").write_text(f"name,file\nx,{fasta}\n")
    (tmp / "dup.csv").write_text(f"sample,fasta\nx,{fasta}\ny,{fasta}\nx,{fasta}\n")
    (tmp / "missing.csv").write_text(f"sample,fasta\nx,{tmp / 'nope.fa'}\n")
    return [
        ([], "virnucpro: --input is required"),
        (["--input", str(tmp / "header.csv")],
         "header.csv: header is 'name,file', expected 'sample,fasta'"),
        (["--input", str(tmp / "dup.csv")], "dup.csv line 4: sample 'x' already on line 2"),
        (["--input", str(tmp / "missing.csv")], "nope.fa: no such file"),
        (["--input", str(fasta), "--chunk_size", "400"],
         "virnucpro: --chunk_size: must be one of 300, 500 (got 400)"),
    ]  # fmt: skip


def test_wrong_input_stops_before_any_task(nextflow, tmp_path):
    for number, (args, message) in enumerate(bad_input_cases(tmp_path)):
        launch = tmp_path / f"run{number}"
        launch.mkdir()
        done = nextflow.run(*args, "--outdir", "results", "--demo_models", cwd=launch,
                            check=False)  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode != 0, args
        errors = [line for line in output.splitlines() if "virnucpro:" in line]
        assert len(errors) == 1 and message in errors[0], (args, output)
        assert not list(launch.glob("work/*/*/.command.sh")), f"a task ran for {args}"


def test_help_lists_the_parameters(nextflow, tmp_path):
    done = nextflow.run("--help", cwd=tmp_path)
    assert "--input" in done.stdout and "--slurm_gpu_queue" in done.stdout
    assert not (tmp_path / "work").exists() or not list((tmp_path / "work").glob("*/*"))
