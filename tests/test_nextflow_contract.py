"""What real Nextflow runs (tests/test_nextflow_run.py) cannot reach: the commands of
processes the test runs do not execute (MODELS_FETCH downloads), flags passed through
ext.args, and which processes are GPU-labelled. Each process's script block is rendered as
Nextflow renders it (Groovy evaluation of the block by nf_render.groovy)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nf_lint import REPO, Renderer, require_java_and_jar

# where the virnucpro command is looked up: this Python's bin directory first
BINPATH = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

MODULES = {
    "MODELS_DEMO": "modules/local/models_demo/main.nf",
    "MODELS_FETCH": "modules/local/models_fetch/main.nf",
    "MODELS_PREPARE": "modules/local/models_prepare/main.nf",
    "SPLIT_FASTA": "modules/local/split_fasta/main.nf",
    "PREPARE": "modules/local/prepare/main.nf",
    "EMBED_DNA": "modules/local/embed_dna/main.nf",
    "EMBED_PROTEIN": "modules/local/embed_protein/main.nf",
    "CLASSIFY": "modules/local/classify/main.nf",
    "SUMMARIZE": "modules/local/summarize/main.nf",
}


@pytest.fixture(scope="module")
def render():
    java, jar = require_java_and_jar()
    renderer = Renderer(java, jar)
    yield renderer
    renderer.close()


def task(process: str, accelerator=None) -> dict:
    return {"process": f"VIRNUCPRO:{process}", "ext": {"args": None}, "cpus": 1,
            "accelerator": accelerator}  # fmt: skip


def test_gpu_processes_are_labelled():
    for process, module in MODULES.items():
        text = (REPO / module).read_text()
        gpu = "label 'process_gpu'" in text
        assert gpu == process.startswith("EMBED_"), process
        if gpu:
            assert "[gpu]" in text and "0.1.0-cuda" in text


def _cli_help(words: list[str]) -> str:
    result = subprocess.run(
        [shutil.which("virnucpro", path=BINPATH) or "virnucpro", *words, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
    )
    assert result.returncode == 0, f"virnucpro {' '.join(words)} --help: {result.stderr}"
    return result.stdout


def _ext_args_flags() -> dict[str, set[str]]:
    """--flags that conf/modules.config passes through ext.args, by process name."""
    text = (REPO / "conf" / "modules.config").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)  # the header comment shows an example
    flags: dict[str, set[str]] = {}
    for names, body in re.findall(r"withName:\s*'([^']+)'\s*\{(.*?)\n    \}", text, re.S):
        for line in body.splitlines():
            if "ext.args" in line:
                for name in names.split("|"):
                    flags.setdefault(name, set()).update(re.findall(r"--[a-z][a-z0-9-]*", line))
    return flags


def test_every_flag_in_the_modules_is_a_cli_option(render):
    """Also the commands the test profile does not run (models fetch) and ext.args flags."""
    pytest.importorskip("virnucpro.cli", reason="virnucpro CLI not importable")
    extra = _ext_args_flags()
    assert extra.get("EMBED_DNA") == {"--precision"}
    assert extra.get("EMBED_PROTEIN") == {"--precision", "--compile", "--esm-batch-size"}
    runs = [(process, None) for process in MODULES] + [("EMBED_DNA", 1), ("EMBED_PROTEIN", 1)]
    for process, accelerator in runs:
        module = MODULES[process]
        binding = {
            "task": task(process, accelerator),
            "meta": {"id": "s.shard_00001", "sample": "s", "shard": "shard_00001"},
            "fasta": "s.fa",
            "shard": "shard_00001.fa",
            "shard_size": 1000,
            "chunk_size": 500,
            "nucleotide": "shard_00001.nucleotide.fa",
            "protein": "shard_00001.protein.faa",
            "dnabert": "shard_00001.dnabert.safetensors",
            "esm2": "shard_00001.esm2.safetensors",
            "models": "models",
            "manifest": "shards.tsv",
            "shard_files": ["a.tsv"],
        }
        script = render(module, process, binding)["script"]
        command = next(line for line in script.splitlines() if line.startswith("virnucpro "))
        words = command.split()[1:]
        sub = [w for w in words[:2] if not w.startswith("-")]
        sub = sub[:2] if sub[0] == "models" else sub[:1]
        help_text = _cli_help(sub)
        for flag in {w for w in words if w.startswith("--")} | extra.get(process, set()):
            assert flag in help_text, f"{process}: `virnucpro {' '.join(sub)}` has no {flag}"
