"""The virnucpro command line as users run it: the installed ``virnucpro`` script in a
process of its own, judged by its exit status, its stderr and the files it leaves.

Cost: on a cold start every command that touches a model spends about 5 s importing (torch,
then the sympy / torch._refs machinery that meta-device model construction pulls in), and
this module runs ~80 commands. So --version, --help, ``models demo``, the end-to-end
``predict`` of examples/example.fa, one input error and a bad --precision run cold through
subprocess, and every other command goes through a *fork server*: a helper process
that imported torch and virnucpro once and forks a fresh child per command; the child runs
the same ``virnucpro`` script file (runpy, ``__name__ == "__main__"``) with its own argv,
cwd, stdout and stderr files, and its exit status is what the test sees. Same script, same
process boundary, without paying the imports ~70 times.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import virnucpro
from virnucpro.features import read_features, write_features
from virnucpro.models.classifier import MLPClassifier, write_classifier
from virnucpro.models.files import sha256

VIRNUCPRO = Path(sys.executable).parent / "virnucpro"
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "example.fa"
RESULTS = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "virnucpro_summary.tsv",
)
OUTPUTS = (*RESULTS, "run.json")
STAGES = ("split", "prepare", "embed-dna", "embed-protein", "classify", "summarize")
SHARD_SUFFIXES = (".sequences.tsv", ".scores.tsv", ".scores.json")
CHUNK_SIZE = 500  # the default --chunk-size
ENV = {
    **os.environ,
    "CUDA_VISIBLE_DEVICES": "",  # same device (CPU) for every run, GPU machine or not
    "VIRNUCPRO_MODELS": "/nonexistent/virnucpro-models",  # never the user's model cache
    "COLUMNS": "100",
}
FRAME_ID = re.compile(r"^(?P<seq>.+)_chunk_(?P<k>[1-9][0-9]*)(?P<strand>[FR])(?P<frame>[123])$")
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d virnucpro (INFO|WARNING): ")
# TTAG repeated: period 4 is coprime to 3, so every forward frame meets TAG and every
# reverse frame meets TAA (revcomp CTAA) within 12 bp: no frame of any chunk survives.
STOPS = "TTAG" * 1500  # 6000 bp, 12 chunks of 500


# --------------------------------------------------------------------------------------
# Running the CLI
# --------------------------------------------------------------------------------------


@dataclass
class Result:
    args: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        assert self.rc == 0, f"virnucpro {' '.join(self.args)} exited {self.rc}:\n{self.stderr}"
        return self


def cold(*args: object, cwd: Path | None = None, env: dict | None = None) -> Result:
    """One command in a new process, exactly as a user runs it."""
    argv = tuple(map(str, args))
    proc = subprocess.run([str(VIRNUCPRO), *argv], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, cwd=cwd, timeout=300)  # fmt: skip
    return Result(argv, proc.returncode, proc.stdout, proc.stderr)


FORK_SERVER = r"""
import json, os, runpy, signal, sys, traceback

import torch
import click, pydantic, rich.progress, typer, typer._coercion  # noqa: F401
import virnucpro.cli, virnucpro.predict, virnucpro.split, virnucpro.summarize  # noqa: F401

with torch.device("meta"):  # imports what meta-device model construction needs (sympy...)
    torch.nn.Embedding(2, 2), torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)

script = sys.argv[1]
requests = os.fdopen(os.dup(0), "r")
replies = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)  # nothing but replies on the reply pipe


def child(request):
    os.chdir(request["cwd"])
    for fd, name in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.argv = [script, *request["args"]]
    signal.alarm(request["timeout"])
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:  # what the interpreter does with it
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


for line in requests:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child(request)
        finally:
            try:
                # what a normal interpreter exit runs and os._exit skips: multiprocessing's
                # finalizers (predict's worker queues), else the resource tracker warns
                import multiprocessing.util
                multiprocessing.util._exit_function()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
    replies.flush()
"""


class ForkServer:
    """Runs ``virnucpro ARGS`` in a forked child of a process with warm imports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.log = workdir / "server.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", FORK_SERVER, str(VIRNUCPRO)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=ENV,
            )

    def __call__(self, *args: object, cwd: Path | None = None, timeout: int = 300) -> Result:
        self.count += 1
        out, err = (self.workdir / f"{self.count}.{name}" for name in ("stdout", "stderr"))
        argv = tuple(map(str, args))
        request = {
            "args": argv,
            "cwd": str(cwd or self.workdir),
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"fork server died:\n{self.log.read_text()}")
        return Result(argv, json.loads(reply)["rc"], out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("fork-server"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("models") / "demo"
    cold("models", "demo", directory).check()
    return directory


# --------------------------------------------------------------------------------------
# Reading inputs and outputs independently of the package
# --------------------------------------------------------------------------------------


def fasta_records(path: Path) -> list[tuple[str, str]]:
    records: list[tuple[str, list[str]]] = []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            records.append((line[1:].split()[0], []))
        elif line.strip():
            records[-1][1].append(line.strip())
    return [(name, "".join(parts)) for name, parts in records]


def table(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_user_error(result: Result, *fragments: str, log_lines_before: bool = False) -> None:
    """Exit 2, no traceback, stderr one 'virnucpro: error:' line holding every fragment
    (with ``log_lines_before``, INFO lines from work done before the error may precede it)."""
    assert result.rc == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert lines and lines[-1].startswith("virnucpro: error:"), result.stderr
    if log_lines_before:
        assert all(LOG_LINE.match(line) for line in lines[:-1]), result.stderr
    else:
        assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"


# --------------------------------------------------------------------------------------
# --version, --help
# --------------------------------------------------------------------------------------


def test_version():
    result = cold("--version")
    assert result.rc == 0
    assert result.stdout == f"virnucpro {virnucpro.__version__}\n"
    assert virnucpro.__version__ == installed_version("virnucpro") == "0.1.0"


def test_help_lists_predict_and_every_stage():
    result = cold("--help")
    assert result.rc == 0, result.stderr
    for command in ("predict", "check-precision", *STAGES, "models"):
        # rich draws each command as "│ NAME   description"
        assert re.search(rf"^\W*{re.escape(command)}\s", result.stdout, re.M), command


@pytest.mark.parametrize(
    "command",
    [
        ["predict"],
        ["check-precision"],
        *([stage] for stage in STAGES),
        ["models"],
        ["models", "demo"],
        ["models", "fetch"],
        ["models", "prepare"],
        ["models", "convert-classifier"],
        ["versions"],
    ],
    ids=" ".join,
)
def test_subcommand_help(command, cli):
    result = cli(*command, "--help")
    assert result.rc == 0, result.stderr
    assert f"Usage: virnucpro {' '.join(command)} " in result.stdout


# --------------------------------------------------------------------------------------
# End to end: virnucpro predict examples/example.fa
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_run(demo, tmp_path_factory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("predict-example") / "out"
    result = cold("predict", EXAMPLE, "--models", demo, "--outdir", out, "--shard-size", 2000)
    return SimpleNamespace(result=result, out=out)


@pytest.fixture(scope="module")
def example(example_run) -> Path:
    example_run.result.check()
    return example_run.out


def frame_scores(out: Path) -> list[tuple[str, str, np.float32, np.float32]]:
    _, rows = table(out / "prediction_results.txt")
    return [(frame, label, np.float32(s1), np.float32(s2)) for frame, label, s1, s2 in rows]


def test_predict_writes_exactly_the_four_outputs(example_run):
    assert example_run.result.rc == 0, example_run.result.stderr
    assert sorted(p.name for p in example_run.out.iterdir()) == sorted(OUTPUTS)  # no work/


def test_predict_output_headers(example):
    first = {name: (example / name).read_text().splitlines()[0] for name in RESULTS}
    assert first == {
        "prediction_results.txt": "Sequence_ID\tPrediction\tscore1\tscore2",
        "prediction_results_highestscore.csv": "Modified_ID\tIs_Virus",
        "virnucpro_summary.tsv": "sequence_id\tlength\tchunks\tchunks_with_frames\t"
        "frames_scored\tviral_chunks\tviral_fraction\tmax_virus_score\tmean_virus_score\tcall",
    }


def test_summary_has_one_row_per_record_in_input_order(example):
    records = fasta_records(EXAMPLE)
    _, rows = table(example / "virnucpro_summary.tsv")
    assert [(row[0], int(row[1])) for row in rows] == [(name, len(s)) for name, s in records]
    # n = ceil(L / C) chunks per sequence
    assert [int(row[2]) for row in rows] == [math.ceil(len(s) / CHUNK_SIZE) for _, s in records]


def test_frame_ids_scores_and_labels(example):
    records = fasta_records(EXAMPLE)
    position = {name: i for i, (name, _) in enumerate(records)}
    scores = frame_scores(example)
    assert scores, "no frame scored at all"
    keys = []
    for frame_id, label, s1, s2 in scores:
        match = FRAME_ID.match(frame_id)
        assert match, frame_id
        seq, k = match["seq"], int(match["k"])
        assert seq in position, frame_id
        assert k <= math.ceil(len(records[position[seq]][1]) / CHUNK_SIZE), frame_id
        assert 0.0 <= s1 <= 1.0 and 0.0 <= s2 <= 1.0, frame_id
        assert abs(float(s1) + float(s2) - 1.0) < 1e-5, frame_id
        assert label == ("virus" if s2 > s1 else "others"), frame_id
        keys.append((position[seq], k, "FR".index(match["strand"]), int(match["frame"])))
    # input order, then chunk order, then F1..F3, R1..R3
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_highestscore_rows_sorted_and_consistent_with_frame_scores(example):
    best: dict[str, list[np.float32]] = {}
    for frame_id, _, s1, s2 in frame_scores(example):
        chunk = best.setdefault(frame_id[:-2], [s1, s2])
        chunk[0], chunk[1] = max(chunk[0], s1), max(chunk[1], s2)
    _, rows = table(example / "prediction_results_highestscore.csv")
    ids = [chunk_id for chunk_id, _ in rows]
    assert ids == sorted(ids) == sorted(best)
    for chunk_id, is_virus in rows:
        s1, s2 = best[chunk_id]
        assert is_virus == str(bool(s2 >= s1)), chunk_id


def test_summary_consistent_with_frame_scores(example):
    frames = defaultdict(int)
    chunks: dict[str, dict[str, list[np.float32]]] = defaultdict(dict)
    for frame_id, _, s1, s2 in frame_scores(example):
        seq = FRAME_ID.match(frame_id)["seq"]
        frames[seq] += 1
        chunk = chunks[seq].setdefault(frame_id[:-2], [s1, s2])
        chunk[0], chunk[1] = max(chunk[0], s1), max(chunk[1], s2)
    _, rows = table(example / "virnucpro_summary.tsv")
    for seq, _, n_chunks, with_frames, scored, viral, _, _, _, call in rows:
        assert int(scored) == frames[seq], seq
        assert int(with_frames) == len(chunks[seq]) <= int(n_chunks), seq
        n_viral = sum(s2 >= s1 for s1, s2 in chunks[seq].values())
        assert int(viral) == n_viral, seq
        if not chunks[seq]:
            assert call == "unscored", seq
        else:
            assert call == ("virus" if n_viral / len(chunks[seq]) >= 0.5 else "not_virus"), seq


def test_run_json_counts_and_model_checksums(example, demo):
    run = json.loads((example / "run.json").read_text())
    records = fasta_records(EXAMPLE)
    n_lines = len((example / "prediction_results.txt").read_text().splitlines())
    assert run["virnucpro_version"] == virnucpro.__version__
    assert run["counts"]["sequences"] == len(records)
    assert run["counts"]["frames_scored"] == n_lines - 1
    # split's rule: a shard closes once it holds >= --shard-size bases
    shards, bases = 0, 0
    for i, (_, sequence) in enumerate(records):
        bases += len(sequence)
        if bases >= 2000 or i == len(records) - 1:
            shards, bases = shards + 1, 0
    assert run["shards"] == shards
    assert run["models"] == {
        "esm2": [{"path": str(demo / "esm2.pt"), "sha256": sha256_file(demo / "esm2.pt")}],
        # a directory's checksum is the package's own scheme over its files
        "dnabert": [{"path": str(demo / "dnabert-s"), "sha256": sha256(demo / "dnabert-s")}],
        "classifier": [
            {
                "path": str(demo / "classifier_500.safetensors"),
                "sha256": sha256_file(demo / "classifier_500.safetensors"),
            }
        ],
    }


# --------------------------------------------------------------------------------------
# Shard size does not change the results
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def by_shard_size(cli, demo, example, tmp_path_factory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("shard-size")
    runs = {2000: example}
    for size in (1, 10**9):
        runs[size] = base / f"shard-size-{size}"
        cli(
            "predict", EXAMPLE, "--models", demo, "--outdir", runs[size], "--shard-size", size
        ).check()
    for out in runs.values():
        assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    return runs


def test_predict_shard_size_changes_nothing_but_float_rounding(by_shard_size):
    """What does hold across shard sizes: same frames, labels, calls and chunk verdicts, in
    the same order, with scores equal to 1e-6."""
    reference = by_shard_size[2000]
    _, ref_summary = table(reference / "virnucpro_summary.tsv")
    for size in (1, 10**9):
        out = by_shard_size[size]
        ref_scores, scores = frame_scores(reference), frame_scores(out)
        assert [r[:2] for r in scores] == [r[:2] for r in ref_scores], size
        for (_, _, a1, a2), (_, _, b1, b2) in zip(scores, ref_scores, strict=True):
            assert abs(a1 - b1) <= 1e-6 and abs(a2 - b2) <= 1e-6
        highest = "prediction_results_highestscore.csv"
        assert (out / highest).read_bytes() == (reference / highest).read_bytes()
        _, summary = table(out / "virnucpro_summary.tsv")
        assert len(summary) == len(ref_summary)
        for row, ref in zip(summary, ref_summary, strict=True):
            assert row[:7] + row[9:] == ref[:7] + ref[9:]  # all but max/mean virus score
            for value, ref_value in zip(row[7:9], ref[7:9], strict=True):
                assert value == ref_value == "NA" or abs(float(value) - float(ref_value)) < 1e-6
    runs = {size: json.loads((out / "run.json").read_text()) for size, out in by_shard_size.items()}
    assert runs[1]["shards"] == len(fasta_records(EXAMPLE)) and runs[10**9]["shards"] == 1


# --------------------------------------------------------------------------------------
# The stage commands chained by hand give what predict gives
# --------------------------------------------------------------------------------------

CHAIN_SHARD_SIZE = 6000  # shard 1 = the 6000 bp 'stops' record alone (no frame kept)


@pytest.fixture(scope="module")
def chain(cli, demo, tmp_path_factory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("chain")
    fasta = base / "input.fa"
    fasta.write_text(f">stops\n{STOPS}\n{EXAMPLE.read_text()}")
    shards_dir, work, final = base / "shards", base / "work", base / "final"

    cli("split", fasta, "--shard-size", CHAIN_SHARD_SIZE, "--outdir", shards_dir).check()
    shards = sorted(shards_dir.glob("shard_*.fa"))
    prefixes = [shard.name.removesuffix(".fa") for shard in shards]
    for shard, prefix in zip(shards, prefixes, strict=True):
        cli("prepare", shard, "--prefix", prefix, "--outdir", work).check()
        nucleotide, protein = work / f"{prefix}.nucleotide.fa", work / f"{prefix}.protein.faa"
        cli("embed-dna", nucleotide, "--models", demo, "--outdir", work).check()
        cli("embed-protein", protein, "--models", demo, "--outdir", work).check()
        dna, esm = work / f"{prefix}.dnabert.safetensors", work / f"{prefix}.esm2.safetensors"
        cli("classify", dna, esm, "--models", demo, "--outdir", work).check()
    shard_files = [work / f"{prefix}{suffix}" for prefix in prefixes for suffix in SHARD_SUFFIXES]
    cli("summarize", *shard_files, "--outdir", final).check()

    predicted = base / "predict"
    cli(
        "predict", fasta, "--models", demo, "--outdir", predicted,
        "--shard-size", CHAIN_SHARD_SIZE,
    ).check()  # fmt: skip
    return SimpleNamespace(
        base=base, fasta=fasta, shards=shards, prefixes=prefixes, work=work, final=final,
        shard_files=shard_files, predicted=predicted,
    )  # fmt: skip


def test_split_shards_are_contiguous_runs_of_the_input(chain):
    assert [s.name for s in chain.shards] == [f"shard_{i:05d}.fa" for i in range(1, 5)]
    assert [name for name, _ in fasta_records(chain.shards[0])] == ["stops"]
    records = [r for shard in chain.shards for r in fasta_records(shard)]
    assert records == fasta_records(chain.fasta)


def test_stage_chain_gives_what_predict_gives(chain):
    for name in RESULTS:
        assert (chain.final / name).read_bytes() == (chain.predicted / name).read_bytes(), name
    _, rows = table(chain.final / "virnucpro_summary.tsv")
    assert [row[0] for row in rows] == [name for name, _ in fasta_records(chain.fasta)]
    run, ref = (json.loads((d / "run.json").read_text()) for d in (chain.final, chain.predicted))
    assert run["counts"] == ref["counts"] and run["models"] == ref["models"]
    assert run["shards"] == ref["shards"] == len(chain.shards)


def test_summarize_does_not_depend_on_file_order(cli, chain):
    reversed_order = chain.shard_files[::-1]
    shuffled = random.Random(3).sample(chain.shard_files, len(chain.shard_files))
    assert shuffled not in (chain.shard_files, reversed_order)
    for label, files in (("reversed", reversed_order), ("shuffled", shuffled)):
        out = chain.base / f"summarize-{label}"
        cli("summarize", *files, "--outdir", out).check()
        for name in RESULTS:
            assert (out / name).read_bytes() == (chain.final / name).read_bytes(), (label, name)
        run, ref = (json.loads((d / "run.json").read_text()) for d in (out, chain.final))
        assert run["counts"] == ref["counts"] and run["models"] == ref["models"]


# --------------------------------------------------------------------------------------
# A shard in which no frame survives is legal
# --------------------------------------------------------------------------------------


def test_empty_shard_prepare_writes_empty_frame_files(chain):
    prefix = chain.prefixes[0]  # the 'stops' shard
    assert (chain.work / f"{prefix}.nucleotide.fa").read_bytes() == b""
    assert (chain.work / f"{prefix}.protein.faa").read_bytes() == b""
    _, rows = table(chain.work / f"{prefix}.sequences.tsv")
    assert rows == [["stops", "6000", "12", "0", "0"]]


def test_empty_shard_embeds_to_zero_row_feature_files(chain):
    empty, full = chain.prefixes[0], chain.prefixes[1]
    for kind in ("dnabert", "esm2"):
        ids, features, _ = read_features(chain.work / f"{empty}.{kind}.safetensors")
        _, reference, _ = read_features(chain.work / f"{full}.{kind}.safetensors")
        assert ids == []
        assert tuple(features.shape) == (0, reference.shape[1]) and reference.shape[1] > 0


@pytest.mark.parametrize(
    ("stage", "kind", "suffix"),
    [("embed-dna", "dnabert", ".nucleotide.fa"), ("embed-protein", "esm2", ".protein.faa")],
)
def test_embed_with_compile_gives_the_eager_features(cli, demo, chain, tmp_path, stage, kind,
                                                     suffix):  # fmt: skip
    frames = chain.work / f"{chain.prefixes[1]}{suffix}"
    features = {}
    for mode in ((), ("--compile",)):
        out = tmp_path / ("compiled" if mode else "eager")
        cli(stage, frames, "--models", demo, "--outdir", out, "--feature-dtype", "float32",
            *mode).check()  # fmt: skip
        features[mode] = read_features(out / f"{chain.prefixes[1]}.{kind}.safetensors")
    (eager_ids, eager, eager_meta), (compiled_ids, compiled, compiled_meta) = features.values()
    assert json.loads(eager_meta["info"])["compiled"] is False
    assert json.loads(compiled_meta["info"])["compiled"] is True
    assert compiled_ids == eager_ids and len(eager_ids) > 0
    assert (compiled - eager).abs().max().item() <= 1e-5


def test_empty_shard_classifies_to_header_only_scores(chain):
    prefix = chain.prefixes[0]
    assert (chain.work / f"{prefix}.scores.tsv").read_text() == (
        "frame_id\tprediction\tscore1\tscore2\n"
    )
    assert json.loads((chain.work / f"{prefix}.scores.json").read_text())["frames_scored"] == 0
    _, rows = table(chain.final / "virnucpro_summary.tsv")
    assert rows[0] == ["stops", "6000", "12", "0", "0", "0", "NA", "NA", "NA", "unscored"]


def test_predict_on_input_without_any_kept_frame(cli, demo, tmp_path):
    fasta = tmp_path / "no_frames.fa"
    fasta.write_text(f">stops\n{STOPS[:1200]}\n>tiny\nAC\n")  # 2 bp: no codon at all
    out = tmp_path / "out"
    cli("predict", fasta, "--models", demo, "--outdir", out).check()
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert len((out / "prediction_results.txt").read_text().splitlines()) == 1
    assert len((out / "prediction_results_highestscore.csv").read_text().splitlines()) == 1
    _, rows = table(out / "virnucpro_summary.tsv")
    assert [(row[0], row[4], row[-1]) for row in rows] == [
        ("stops", "0", "unscored"),
        ("tiny", "0", "unscored"),
    ]
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts["sequences"] == 2 and counts["frames_scored"] == 0


# --------------------------------------------------------------------------------------
# What a pipeline task relies on: --threads everywhere, models directories never written,
# --device cuda, versions
# --------------------------------------------------------------------------------------


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``directory``, hidden ones included, links not followed."""
    stats = {p: p.lstat() for p in [directory, *directory.rglob("*")]}
    return {
        p.relative_to(directory).as_posix(): (st.st_mode, st.st_size, st.st_mtime_ns)
        for p, st in stats.items()
    }


def test_stages_take_threads_and_never_write_into_the_models_dir(cli, demo, chain, tmp_path):
    """A task's models directory is the user's store (maybe read-only, hashed by Nextflow for
    -resume): no stage writes there, not even checksums or the ESM-2 copy."""
    bare = tmp_path / "models"
    shutil.copytree(demo, bare, ignore=shutil.ignore_patterns(".*"))  # nothing prepared
    before = snapshot(bare)
    out, prefix, one = tmp_path / "out", chain.prefixes[1], ("--threads", 1)
    cli("split", chain.fasta, "--shard-size", CHAIN_SHARD_SIZE, "--outdir", out, *one).check()
    cli("prepare", chain.shards[1], "--prefix", prefix, "--outdir", out, *one).check()
    for stage, suffix in (("embed-dna", ".nucleotide.fa"), ("embed-protein", ".protein.faa")):
        cli(stage, out / f"{prefix}{suffix}", "--models", bare, "--outdir", out, *one).check()
    dna, esm = out / f"{prefix}.dnabert.safetensors", out / f"{prefix}.esm2.safetensors"
    cli("classify", dna, esm, "--models", bare, "--outdir", out, *one).check()
    shard = [out / f"{prefix}{suffix}" for suffix in SHARD_SUFFIXES]
    cli("summarize", *shard, "--outdir", out / "final", *one).check()
    cli("predict", EXAMPLE, "--models", bare, "--outdir", tmp_path / "predict", "--shard-size",
        10**9, *one).check()  # fmt: skip
    assert snapshot(bare) == before
    run = json.loads((out / "final" / "run.json").read_text())
    assert run["models"]["esm2"] == [{"path": str(bare / "esm2.pt"),
                                      "sha256": sha256_file(bare / "esm2.pt")}]  # fmt: skip


def test_models_demo_and_prepare_take_threads(cli, tmp_path):
    demo_dir, prepared = tmp_path / "demo", tmp_path / "prepared"
    cli("models", "demo", demo_dir, "--threads", 1).check()
    assert (demo_dir / ".esm2.bfloat16.safetensors").is_file()  # demo is prepared
    before = snapshot(demo_dir)
    cli("models", "prepare", demo_dir, "--outdir", prepared, "--precision", "fp32",
        "--threads", 1).check()  # fmt: skip
    assert snapshot(demo_dir) == before
    assert (prepared / ".esm2.float32.safetensors").is_file()
    assert (prepared / "esm2.pt").resolve() == (demo_dir / "esm2.pt").resolve()


@pytest.mark.parametrize("stage", ["embed-dna", "embed-protein", "predict"])
def test_device_cuda_without_a_gpu_fails_at_once(cli, demo, chain, tmp_path, stage):
    frames = {"embed-dna": ".nucleotide.fa", "embed-protein": ".protein.faa", "predict": ".fa"}
    source = chain.work if stage != "predict" else chain.shards[1].parent
    out = tmp_path / "out"
    result = cli(stage, source / f"{chain.prefixes[1]}{frames[stage]}", "--models", demo,
                 "--outdir", out, "--device", "cuda")  # fmt: skip
    # the tests hide every GPU with CUDA_VISIBLE_DEVICES=""
    assert_user_error(result, "--device cuda: no CUDA GPU is visible (CUDA_VISIBLE_DEVICES=)")
    assert files_under(out) == []


def test_versions_prints_yaml_lines(cli):
    expected = {"virnucpro": virnucpro.__version__, "python": platform.python_version(),
                "torch": str(torch.__version__)}  # fmt: skip
    if torch.version.cuda:
        expected["cuda"] = torch.version.cuda
    for args, indent in (((), 4), (("--indent", 2), 2)):
        result = cli("versions", *args).check()
        lines = result.stdout.splitlines()
        assert all(re.match(rf"^ {{{indent}}}[a-z_]+: \S", line) for line in lines), lines
        found = dict(line.strip().split(": ", 1) for line in lines)
        assert {k: found[k] for k in expected} == expected
        assert set(found) - set(expected) <= {"nvidia_driver"}


# --------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming the file, no traceback, no result files
# --------------------------------------------------------------------------------------

BAD_FASTA = {
    # case: (file contents or None for a missing file, what the message says)
    "missing": (None, "no such file"),
    "empty": ("", "empty file"),
    "not_fasta": ("ACGTACGTAC\n>a\nACGTACGTAC\n", "not FASTA"),
    "empty_record": (">a\nACGTACGTAC\n>b\n>c\nACGTACGTAC\n", "record 'b' has no sequence"),
    "empty_header": (">a\nACGTACGTAC\n>\nACGTACGTAC\n", "empty header"),
    "duplicate_ids": (">x\nACGTAC\n>y\nACGTAC\n>x\nACGTAC\n", "duplicate ID 'x' (records 1 and 3)"),
    "protein": (">p\nMKVLAAGIVEPQRSTW\n", "not a nucleotide code"),
}


def bad_fasta(directory: Path, case: str) -> Path:
    contents, _ = BAD_FASTA[case]
    path = directory / f"{case}.fa"
    if contents is not None:
        path.write_text(contents)
    return path


def test_bad_fasta_cold_start(tmp_path):
    path, out = bad_fasta(tmp_path, "duplicate_ids"), tmp_path / "out"
    result = cold("prepare", path, "--outdir", out)
    assert_user_error(result, str(path), BAD_FASTA["duplicate_ids"][1])
    assert files_under(out) == []


@pytest.mark.parametrize("case", BAD_FASTA)
def test_bad_fasta_prepare(case, cli, tmp_path):
    path, out = bad_fasta(tmp_path, case), tmp_path / "out"
    result = cli("prepare", path, "--outdir", out)
    assert_user_error(result, str(path), BAD_FASTA[case][1])
    assert files_under(out) == []  # no .fa, .faa or .tsv, finished or not


@pytest.mark.parametrize("case", BAD_FASTA)
def test_bad_fasta_split(case, cli, tmp_path):
    path, out = bad_fasta(tmp_path, case), tmp_path / "out"
    result = cli("split", path, "--shard-size", 5, "--outdir", out)
    assert_user_error(result, str(path), BAD_FASTA[case][1])
    assert files_under(out) == []  # no shard, not even of the records before the problem


@pytest.mark.parametrize("case", BAD_FASTA)
def test_bad_fasta_predict(case, cli, demo, tmp_path):
    path, out = bad_fasta(tmp_path, case), tmp_path / "out"
    result = cli("predict", path, "--models", demo, "--outdir", out, "--shard-size", 5)
    # predict loads the models first and logs that (see the test below)
    assert_user_error(result, str(path), BAD_FASTA[case][1], log_lines_before=True)
    assert not out.exists()  # not even an empty output directory


def test_bad_frame_file_embed_dna_after_the_first_chunk(cli, demo, tmp_path):
    """embed-dna reads its input while the model runs: a problem found after the first chunk
    of frames has gone to the model still gives the one-line error and no feature file."""
    from virnucpro.embed import FIRST_CHUNK_FRAMES

    assert FIRST_CHUNK_FRAMES < 1500
    path, out = tmp_path / "x.nucleotide.fa", tmp_path / "out"
    path.write_text("".join(f">f{i}\nACGTTGCAAGCTTAGC\n" for i in range(1500)) + ">f7\nACGT\n")
    result = cli("embed-dna", path, "--models", demo, "--outdir", out)
    assert_user_error(result, str(path), "duplicate ID 'f7'", log_lines_before=True)
    assert files_under(out) == []


def test_predict_checks_its_input_before_loading_models(cli, demo, tmp_path):
    path = tmp_path / "missing.fa"
    result = cli("predict", path, "--models", demo, "--outdir", tmp_path / "out")
    assert_user_error(result, str(path), "no such file")


@pytest.fixture
def demo_copy(demo, tmp_path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(demo, copy)
    return copy


def test_models_dir_without_classifier(cli, demo_copy, tmp_path):
    (demo_copy / "classifier_500.safetensors").unlink()
    out = tmp_path / "out"
    result = cli("predict", EXAMPLE, "--models", demo_copy, "--outdir", out)
    assert_user_error(result, str(demo_copy), "classifier_500.safetensors")
    assert files_under(out) == []


def test_models_dir_without_dnabert(cli, demo_copy, tmp_path):
    shutil.rmtree(demo_copy / "dnabert-s")
    out = tmp_path / "out"
    result = cli("predict", EXAMPLE, "--models", demo_copy, "--outdir", out)
    assert_user_error(result, str(demo_copy), "dnabert-s/")
    assert files_under(out) == []


def test_models_dir_that_does_not_exist(cli, tmp_path):
    models, out = tmp_path / "no-such-models", tmp_path / "out"
    result = cli("predict", EXAMPLE, "--models", models, "--outdir", out)
    assert_user_error(result, str(models), "not found")
    assert files_under(out) == []


def write_feature_pair(directory: Path, dna_ids: list[str], esm_ids: list[str]) -> tuple:
    """A DNABERT-S (48 wide) and an ESM-2 (64 wide) feature file, as embed would write."""
    directory.mkdir(parents=True, exist_ok=True)
    dna, esm = directory / "x.dnabert.safetensors", directory / "x.esm2.safetensors"
    write_features(dna, dna_ids, torch.randn(len(dna_ids), 48), {}, dtype="float32")
    write_features(esm, esm_ids, torch.randn(len(esm_ids), 64), {}, dtype="float32")
    return dna, esm


@pytest.fixture
def wrong_size_classifier(tmp_path) -> Path:
    path = tmp_path / "classifier_100.safetensors"
    write_classifier(MLPClassifier(input_dim=100).eval(), path)
    return path


def test_classifier_input_size_mismatch_classify(cli, wrong_size_classifier, tmp_path):
    ids = ["a_chunk_1F1", "a_chunk_1R2"]
    dna, esm = write_feature_pair(tmp_path / "features", ids, ids[::-1])
    out = tmp_path / "out"
    result = cli("classify", dna, esm, "--classifier", wrong_size_classifier, "--outdir", out)
    assert_user_error(result, str(wrong_size_classifier), "expects 100 features")
    assert files_under(out) == []


def test_classifier_input_size_mismatch_predict(cli, demo, wrong_size_classifier, tmp_path):
    out = tmp_path / "out"
    result = cli(
        "predict", EXAMPLE, "--models", demo, "--classifier", wrong_size_classifier,
        "--outdir", out,
    )  # fmt: skip
    assert_user_error(result, str(wrong_size_classifier), "expects 100", log_lines_before=True)
    assert files_under(out) == []


def test_classify_feature_files_with_different_ids(cli, demo, tmp_path):
    dna, esm = write_feature_pair(tmp_path / "features", ["s_chunk_1F1", "s_chunk_1F2"],
                                  ["s_chunk_1F1", "s_chunk_1R3"])  # fmt: skip
    out = tmp_path / "out"
    result = cli("classify", dna, esm, "--models", demo, "--outdir", out)
    assert_user_error(result, str(esm), str(dna), "s_chunk_1F2", "s_chunk_1R3")
    assert files_under(out) == []


# --------------------------------------------------------------------------------------
# Usage errors (click's messages): exit 2, no traceback
# --------------------------------------------------------------------------------------


def test_unknown_precision_is_a_usage_error(demo, tmp_path):
    out = tmp_path / "out"
    result = cold("predict", EXAMPLE, "--models", demo, "--outdir", out, "--precision", "int8")
    assert files_under(out) == []
    assert "Traceback" not in result.stderr
    assert result.rc == 2
    assert "'int8' is not one of 'auto', 'fp32', 'bf16', 'fp16', 'fp8'" in result.stderr


# --------------------------------------------------------------------------------------
# --precision fp8: ESM-2 on FP8 tensor cores only; refused elsewhere before any model loads
# --------------------------------------------------------------------------------------

FP8_ON_CPU = ("--precision fp8: needs a GPU with FP8 tensor cores (compute capability 8.9 or "
              "newer); cpu has none")  # fmt: skip


def test_predict_fp8_on_the_cpu_is_refused_before_anything_is_written(cli, demo, tmp_path):
    out = tmp_path / "out"
    result = cli("predict", EXAMPLE, "--models", demo, "--outdir", out, "--precision", "fp8")
    assert_user_error(result, FP8_ON_CPU)
    assert result.stderr == f"virnucpro: error: {FP8_ON_CPU}\n"
    assert not out.exists()  # not even the work directory


@pytest.mark.parametrize("compile", [[], ["--compile"]], ids=["eager", "compile"])
def test_embed_protein_fp8_on_the_cpu_is_refused_before_the_model_loads(
    cli, demo, chain, tmp_path, compile
):
    protein = chain.work / f"{chain.prefixes[1]}.protein.faa"
    out = tmp_path / "out"
    result = cli("embed-protein", protein, "--models", demo, "--outdir", out, "--precision",
                 "fp8", *compile)  # fmt: skip
    assert_user_error(result, FP8_ON_CPU)  # one line: no 'loaded' line before it
    assert not out.exists()


def test_embed_dna_fp8_runs_and_records_bf16(cli, demo, chain, tmp_path):
    """One --precision fp8 for both embedding stages: DNABERT-S runs bf16 under it, wherever
    bf16 runs (the CPU too), and says so."""
    nucleotide = chain.work / f"{chain.prefixes[1]}.nucleotide.fa"
    result = cli("embed-dna", nucleotide, "--models", demo, "--outdir", tmp_path, "--precision",
                 "fp8").check()  # fmt: skip
    assert "DNABERT-S runs at bf16 under --precision fp8" in result.stderr
    assert "precision bf16" in result.stderr
    _, _, meta = read_features(tmp_path / f"{chain.prefixes[1]}.dnabert.safetensors")
    assert meta["precision"] == "bf16" and json.loads(meta["info"])["precision"] == "bf16"


def test_precision_help_explains_fp8(cli):
    for command in ("predict", "embed-protein"):
        text = " ".join(cli(command, "--help").check().stdout.replace("│", " ").split())
        for fragment in (
            "fp8: ESM-2's linear layers in FP8",
            "compute capability >= 8.9",
            "never chosen by auto",
            "--compile",
            "virnucpro check-precision",
        ):
            assert fragment in text, (command, fragment)
    text = " ".join(cli("embed-dna", "--help").check().stdout.replace("│", " ").split())
    assert "fp8 runs bf16 here" in text


@pytest.mark.parametrize(
    "args",
    [
        ["predict"],  # missing argument
        ["predict", "in.fa", "--outdir", "out", "--bogus"],  # unknown option
        ["predict", "in.fa", "--outdir", "out", "--shard-size", "0"],  # out of range
        ["no-such-command"],
    ],
    ids=["missing-argument", "unknown-option", "out-of-range", "unknown-command"],
)
def test_usage_errors(args, cli, tmp_path):
    result = cli(*args, cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.rc == 2


@pytest.mark.parametrize("args", [[], ["models"]], ids=["virnucpro", "virnucpro models"])
def test_no_arguments_shows_help(args, cli):
    result = cli(*args)
    assert "Usage: virnucpro" in result.stdout
    assert "Traceback" not in result.stderr
    assert result.rc in (0, 2)


def test_summarize_with_manifest_marks_a_shard_without_results_unfinished(cli, chain):
    manifest = chain.shards[0].parent / "shards.tsv"
    missing = chain.prefixes[1]
    kept = [f for f in chain.shard_files if not Path(f).name.startswith(missing + ".")]
    out = chain.base / "summarize-manifest"
    cli("summarize", *kept, "--manifest", manifest, "--outdir", out).check()
    in_missing = {name for name, _ in fasta_records(chain.shards[1])}
    _, rows = table(out / "virnucpro_summary.tsv")
    _, complete = table(chain.final / "virnucpro_summary.tsv")
    assert [row[0] for row in rows] == [row[0] for row in complete]
    for row, full in zip(rows, complete, strict=True):
        if row[0] in in_missing:
            assert row[1] == full[1] and row[2:] == ["NA"] * 7 + ["unfinished"], row
        else:
            assert row == full
    assert json.loads((out / "run.json").read_text())["counts"]["call_unfinished"] == len(
        in_missing
    )


def test_summarize_with_manifest_refuses_a_shard_it_does_not_list(cli, chain, tmp_path):
    manifest = tmp_path / "shards.tsv"
    lines = (chain.shards[0].parent / "shards.tsv").read_text().splitlines()
    manifest.write_text("\n".join(line for line in lines if chain.prefixes[0] not in line) + "\n")
    out = tmp_path / "out"
    result = cli("summarize", *chain.shard_files, "--manifest", manifest, "--outdir", out)
    assert result.rc == 2
    assert f"shard '{chain.prefixes[0]}' is not in the shard manifest" in result.stderr
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------------------
# predict never deletes or replaces what is not its own
# --------------------------------------------------------------------------------------

WORK = "virnucpro-work"  # predict's intermediates in OUTDIR


def contents(directory: Path) -> dict[Path, str]:
    return {p: sha256_file(p) for p in files_under(directory)}


@pytest.fixture
def kept_run(demo, tmp_path) -> Path:
    """An OUTDIR with the results and kept intermediates of a finished run."""
    out = tmp_path / "kept"
    cold("predict", EXAMPLE, "--models", demo, "--outdir", out, "--shard-size", 2000,
         "--keep-intermediate").check()  # fmt: skip
    assert (out / WORK / "shards" / "shard_00001.fa").is_file()
    return out


def test_rejected_input_leaves_an_earlier_runs_files_alone(cli, demo, kept_run, tmp_path):
    before = contents(kept_run)
    bad = bad_fasta(tmp_path, "duplicate_ids")
    for extra in ((), ("--resume",)):
        result = cli("predict", bad, "--models", demo, "--outdir", kept_run, *extra)
        assert_user_error(result, log_lines_before=True)
    assert contents(kept_run) == before


def test_results_of_an_earlier_run_are_not_replaced(cli, demo, kept_run):
    before = contents(kept_run)
    shutil.rmtree(kept_run / WORK)
    before = contents(kept_run)
    result = cli("predict", EXAMPLE, "--models", demo, "--outdir", kept_run)
    assert_user_error(result, f"{kept_run}: already holds results (prediction_results.txt")
    assert contents(kept_run) == before


def test_kept_intermediates_need_resume(cli, demo, kept_run):
    for name in RESULTS:
        (kept_run / name).unlink()
    before = contents(kept_run)
    result = cli("predict", EXAMPLE, "--models", demo, "--outdir", kept_run)
    assert_user_error(result, f"{kept_run / WORK}: holds an earlier run's intermediates; add "
                      "--resume")  # fmt: skip
    assert contents(kept_run) == before


def test_a_work_directory_of_the_users_is_left_alone(cli, demo, tmp_path):
    """Nextflow's work/ (or any directory of the user's) beside the results survives a run."""
    out = tmp_path / "out"
    (out / "work" / "ab").mkdir(parents=True)
    (out / "work" / "ab" / "task.log").write_text("theirs\n")
    cli("predict", EXAMPLE, "--models", demo, "--outdir", out, "--shard-size", 2000).check()
    assert (out / "work" / "ab" / "task.log").read_text() == "theirs\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, "work"])


def test_a_directory_with_predicts_work_name_but_not_its_own_is_refused(cli, demo, tmp_path):
    out = tmp_path / "out"
    (out / WORK).mkdir(parents=True)
    (out / WORK / "notes.txt").write_text("theirs\n")
    for extra in ((), ("--resume",)):
        result = cli("predict", EXAMPLE, "--models", demo, "--outdir", out, *extra)
        assert_user_error(result, f"{out / WORK}: exists but was not made by virnucpro predict")
    assert files_under(out) == [out / WORK / "notes.txt"]


def test_rejected_input_creates_no_output_directory(cli, demo, tmp_path):
    bad = bad_fasta(tmp_path, "not_fasta")
    out = tmp_path / "new" / "out"
    result = cli("predict", bad, "--models", demo, "--outdir", out)
    assert_user_error(result, str(bad), log_lines_before=True)
    assert not (tmp_path / "new").exists()


def test_a_fatal_error_keeps_the_finished_shards(demo, tmp_path, monkeypatch):
    """Workers that keep dying after a shard finished: the error says how to resume, and what
    it says is kept is still there."""
    import virnucpro.predict as predict_module
    from virnucpro.errors import VirnucproError
    from virnucpro.models.files import resolve_models

    def finish_one_then_die(pending, devices, config, progress):
        (config.work / "shard_00001.done.json").write_text("{}")
        raise VirnucproError("workers keep dying (last exit code -9)")

    monkeypatch.setattr(predict_module, "run_shards", finish_one_then_die)
    out = tmp_path / "out"
    with pytest.raises(VirnucproError) as error:
        predict_module.predict(EXAMPLE, out, resolve_models(demo), shard_size=2000, workers=1,
                               threads=1)  # fmt: skip
    assert str(error.value) == (
        f"workers keep dying (last exit code -9) (1 finished shard(s) kept in {out / WORK}; "
        "rerun the same command with --resume)"
    )
    assert (out / WORK / "shard_00001.done.json").is_file()
    assert len(list((out / WORK / "shards").glob("shard_*.fa"))) == 7


def test_resume_says_why_it_reuses_nothing(cli, demo, kept_run):
    for name in RESULTS:
        (kept_run / name).unlink()
    result = cli("predict", EXAMPLE, "--models", demo, "--outdir", kept_run, "--shard-size", 2000,
                 "--resume", "--threshold", "0.6", "--feature-dtype", "float32")  # fmt: skip
    result.check()
    assert "resume: reusing nothing: feature_dtype was float16, now float32" in result.stderr


# --------------------------------------------------------------------------------------
# What a user sees: usage errors, the log file, --help at 80 columns
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "in.fa", "-o", "out", "--chunk-size", "400"],
         "Invalid value for '--chunk-size': '400' is not one of '300', '500'. "
         "(see 'virnucpro predict -h')"),
        (["predict", "in.fa", "-o", "out", "-q"],
         "No such option: -q (it goes before the command: virnucpro -q COMMAND ...) "
         "(see 'virnucpro predict -h')"),
        (["predict", "in.fa"], "Missing option '--outdir' / '-o'. (see 'virnucpro predict -h')"),
        (["no-such-command"], "No such command 'no-such-command'. (see 'virnucpro -h')"),
    ],
    ids=["bad-choice", "root-option-after-command", "missing-option", "unknown-command"],
)  # fmt: skip
def test_usage_errors_are_one_line(args, message, cli, tmp_path):
    result = cli(*args, cwd=tmp_path)
    assert result.rc == 2
    assert result.stderr == f"virnucpro: error: {message}\n"


def test_outdir_that_is_a_file(cli, demo, tmp_path):
    (tmp_path / "results").write_text("mine\n")
    result = cli("predict", EXAMPLE, "--models", demo, "--outdir", tmp_path / "results")
    assert_user_error(result, f"--outdir {tmp_path / 'results'}: exists and is not a directory")
    assert (tmp_path / "results").read_text() == "mine\n"


def test_log_file_holds_what_the_console_shows_and_errors(cli, demo, tmp_path):
    log = tmp_path / "run.log"
    ok = cli("--log-file", log, "predict", EXAMPLE, "--models", demo, "--outdir", tmp_path / "a",
             "--shard-size", 2000).check()  # fmt: skip
    shown = [line for line in ok.stderr.splitlines() if LOG_LINE.match(line)]
    assert shown and log.read_text().splitlines() == shown

    quiet_log = tmp_path / "quiet.log"  # -q quiets the console, not the log file
    quiet = cli("-q", "--log-file", quiet_log, "predict", EXAMPLE, "--models", demo,
                "--outdir", tmp_path / "b", "--shard-size", 2000).check()  # fmt: skip
    assert quiet.stderr == ""
    assert "outputs in" in quiet_log.read_text()

    error_log = tmp_path / "error.log"
    missing = tmp_path / "missing.fa"
    failed = cli("--log-file", error_log, "predict", missing, "--models", demo, "--outdir",
                 tmp_path / "c")  # fmt: skip
    assert failed.rc == 2
    last = error_log.read_text().splitlines()[-1]
    assert last.endswith(f"virnucpro ERROR: {missing}: no such file"), last


def test_predict_help_fits_80_columns(cli):
    result = cold("predict", "--help", env={"COLUMNS": "80"})
    assert result.rc == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert "…" not in result.stdout  # no truncated option name or help
    for group in ("Input and output", "Models", "Hardware", "Resume", "Tuning"):
        assert any(group in line for line in lines), group
    for option in ("--outdir", "--models", "--esm-batch-size", "--dna-batch-size",
                   "--keep-intermediate", "--resume", "--feature-dtype"):  # fmt: skip
        assert re.search(rf"\s{option}\s", result.stdout), option
    assert "--no-" not in result.stdout  # flags are plain switches


def test_fasta_with_a_byte_order_mark(cli, tmp_path):
    plain = tmp_path / "plain.fa"
    plain.write_text(">a desc\n" + "ATGGCC" * 60 + "\n>b\nATGAAACCCGGGTTT\n")
    marked = tmp_path / "bom.fa"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    for path in (plain, marked):
        cli("prepare", path, "--outdir", tmp_path / "out", "--prefix", path.stem).check()
    for suffix in (".nucleotide.fa", ".protein.faa", ".sequences.tsv"):
        out = tmp_path / "out"
        assert (out / f"bom{suffix}").read_bytes() == (out / f"plain{suffix}").read_bytes()


def test_predict_ends_by_saying_what_it_found(example_run):
    """The last lines count the calls of virnucpro_summary.tsv and say where the outputs are."""
    _, rows = table(example_run.out / "virnucpro_summary.tsv")
    calls = defaultdict(int)
    for row in rows:
        calls[row[-1]] += 1
    assert set(calls) <= {"virus", "not_virus", "unscored", "unfinished"} and calls["virus"]
    expected = (f"{len(rows)} sequences: {calls['virus']} virus, {calls['not_virus']} not_virus, "
                f"{calls['unscored']} unscored, {calls['unfinished']} unfinished; outputs in "
                f"{example_run.out}")  # fmt: skip
    assert expected in example_run.result.stderr.splitlines()[-2]


def test_resume_continues_only_the_same_input(cli, demo, kept_run, tmp_path):
    other = tmp_path / "other.fa"
    other.write_text(EXAMPLE.read_text())
    before = contents(kept_run)
    result = cli("predict", other, "--models", demo, "--outdir", kept_run, "--resume")
    assert_user_error(result, f"{kept_run / WORK}: holds a run of {EXAMPLE}; --resume continues "
                      f"only that input (not {other})")  # fmt: skip
    assert contents(kept_run) == before


def test_resume_without_intermediates_does_not_replace_results(cli, demo, kept_run):
    shutil.rmtree(kept_run / WORK)
    before = contents(kept_run)
    result = cli("predict", EXAMPLE, "--models", demo, "--outdir", kept_run, "--resume")
    assert_user_error(result, "already holds results", "nothing to resume there")
    assert contents(kept_run) == before


def test_resume_compares_the_input_by_its_real_path(cli, demo, tmp_path):
    """The same relative name in another directory is another input; the same file by its
    absolute name is the same input."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "in.fa").write_text(EXAMPLE.read_text())
    (second / "in.fa").write_text(">x\n" + "ATGGCC" * 100 + "\n")
    out = tmp_path / "out"
    cli("predict", "in.fa", "--models", demo, "--outdir", out, "--shard-size", 2000,
        "--keep-intermediate", cwd=first).check()  # fmt: skip
    before = contents(out)
    other = cli("predict", "in.fa", "--models", demo, "--outdir", out, "--resume", cwd=second)
    assert_user_error(other, f"holds a run of {first / 'in.fa'}")
    assert contents(out) == before
    same = cli("predict", first / "in.fa", "--models", demo, "--outdir", out, "--shard-size",
               2000, "--resume")  # fmt: skip
    same.check()
    assert "resume: reusing 7 of 7 finished shard(s)" in same.stderr
