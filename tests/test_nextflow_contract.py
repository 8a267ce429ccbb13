"""The modules and the virnucpro CLI cannot drift apart.

For the test profile, every process's script: block is rendered exactly as Nextflow
renders it (Groovy evaluation of the block by nf_render.groovy, with the task's inputs
bound), run with bash -ue in a task-like work directory with its inputs staged as
symlinks, in workflow order, and every declared output must then exist under its
declared name. The stub: blocks are checked the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nf_lint import REPO, Renderer, config_params, require_java_and_jar

# where the virnucpro command is looked up: this Python's bin directory first
BINPATH = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

MODULES = {
    "MODELS_DEMO": "modules/local/models_demo/main.nf",
    "MODELS_FETCH": "modules/local/models_fetch/main.nf",
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


@pytest.fixture(scope="module")
def test_params():
    params = config_params(REPO / "nextflow.config")
    params.update(config_params(REPO / "conf" / "test.config"))
    return params


def task(process: str, ext_args=None) -> dict:
    return {"process": f"VIRNUCPRO:{process}", "ext": {"args": ext_args}, "cpus": 1}


def declared_paths(outputs: list) -> list[str]:
    """The path patterns of a process's rendered output declarations."""
    patterns = []
    for decl in outputs:
        items = decl["items"] if decl["kind"] == "tuple" else [decl]
        patterns += [item["value"] for item in items if item["kind"] == "path"]
    return patterns


class Pipeline:
    """Runs rendered tasks one after the other, like Nextflow's local executor."""

    def __init__(self, render: Renderer, root: Path, block: str):
        self.render, self.root, self.block, self.count = render, root, block, 0
        self.env = {**os.environ, "PATH": BINPATH}
        self.env.pop("CUDA_VISIBLE_DEVICES", None)
        self.env["VIRNUCPRO_GPU_LOCK_DIR"] = str(root / "gpu-locks")

    def run(self, process: str, binding: dict, staged: dict[str, Path | list[Path]]):
        """Stage inputs, render and run the script, check outputs; name -> output paths."""
        self.count += 1
        workdir = self.root / f"{self.count:02d}_{process}"
        workdir.mkdir()
        values = {"task": task(process), **binding}
        for name, source in staged.items():
            sources = source if isinstance(source, list) else [source]
            for src in sources:
                (workdir / src.name).symlink_to(src.resolve())
            names = [src.name for src in sources]
            values[name] = names if isinstance(source, list) else names[0]
        answer = self.render(MODULES[process], process, values, self.block)
        declared = {str(d["value"]) for d in answer["inputs"] if d["kind"] == "path"}
        for d in answer["inputs"]:
            declared |= {str(i["value"]) for i in d.get("items", []) if i["kind"] == "path"}
        assert declared == set(staged), f"{process}: inputs {declared} vs staged {set(staged)}"
        (workdir / ".command.sh").write_text(answer["script"])
        result = subprocess.run(
            ["bash", "-ue", ".command.sh"],
            cwd=workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, (
            f"{process} ({self.block}) exited {result.returncode}\n--- script\n"
            f"{answer['script']}\n--- stderr\n{result.stderr[-3000:]}"
        )
        produced = {}
        for pattern in declared_paths(answer["outputs"]):
            matches = sorted(workdir.glob(pattern))
            assert matches, f"{process}: declared output {pattern!r} not produced in {workdir}"
            produced[pattern] = matches
        versions = workdir / "versions.yml"
        if "versions.yml" in produced:
            text = versions.read_text()
            assert text.startswith(f'"VIRNUCPRO:{process}":\n'), text
            assert "    virnucpro: 0.1.0" in text, text
        return produced


def run_pipeline(render, test_params, tmp_path: Path, block: str, fasta: Path) -> dict:
    """The test profile's workflow, task by task, in workflow order."""
    pipe = Pipeline(render, tmp_path, block)
    assert test_params["demo_models"] is True and test_params.get("models") is None
    chunk_size = test_params["chunk_size"]
    sample = fasta.name.split(".")[0]

    models = pipe.run("MODELS_DEMO", {}, {})["models"][0]
    shards = pipe.run(
        "SPLIT_FASTA",
        {"meta": {"id": sample}, "shard_size": test_params["shard_size"]},
        {"fasta": fasta},
    )["shards/shard_*.fa"]
    sample_files = []
    for shard in shards:
        name = shard.name.removesuffix(".fa")
        meta = {"id": f"{sample}.{name}", "sample": sample, "shard": name}
        meta["n_shards"] = len(shards)
        prepared = pipe.run("PREPARE", {"meta": meta, "chunk_size": chunk_size}, {"shard": shard})
        dna = pipe.run(
            "EMBED_DNA",
            {"meta": meta},
            {"nucleotide": prepared[f"{name}.nucleotide.fa"][0], "models": models},
        )[f"{name}.dnabert.safetensors"][0]
        esm = pipe.run(
            "EMBED_PROTEIN",
            {"meta": meta},
            {"protein": prepared[f"{name}.protein.faa"][0], "models": models},
        )[f"{name}.esm2.safetensors"][0]
        scores = pipe.run(
            "CLASSIFY",
            {"meta": meta, "chunk_size": chunk_size},
            {"dnabert": dna, "esm2": esm, "models": models},
        )
        sample_files += prepared[f"{name}.sequences.tsv"]
        sample_files += scores[f"{name}.scores.tsv"] + scores[f"{name}.scores.json"]
    sample_files.sort(key=lambda p: p.name)
    summary = pipe.run("SUMMARIZE", {"meta": {"id": sample}}, {"shard_files": sample_files})
    return {"shards": shards, "summary": summary}


def test_modules_render_and_declare_what_the_workflow_uses(render):
    # every module parses, and its inputs are what the workflow passes in
    expected_inputs = {
        "MODELS_DEMO": [],
        "MODELS_FETCH": [],
        "SPLIT_FASTA": ["tuple", "val"],
        "PREPARE": ["tuple", "val"],
        "EMBED_DNA": ["tuple", "path"],
        "EMBED_PROTEIN": ["tuple", "path"],
        "CLASSIFY": ["tuple", "path", "val"],
        "SUMMARIZE": ["tuple"],
    }
    for process, module in MODULES.items():
        answer = render(module, process, None)
        assert [d["kind"] for d in answer["inputs"]] == expected_inputs[process], process


def test_gpu_processes_are_labelled():
    for process, module in MODULES.items():
        text = (REPO / module).read_text()
        gpu = "label 'process_gpu'" in text
        assert gpu == process.startswith("EMBED_"), process
        if gpu:
            assert "[gpu]" in text and "0.1.0-cuda" in text


def test_stub_blocks_produce_every_declared_output(render, test_params, tmp_path):
    fasta = tmp_path / "reads.fa"
    fasta.write_text(">r1\nACGTACGTAC\n")
    out = run_pipeline(render, test_params, tmp_path, "stub", fasta)
    assert [p.name for p in out["shards"]] == ["shard_00001.fa"]


def test_fetch_stub_declares_the_cache_layout(render, tmp_path):
    pipe = Pipeline(render, tmp_path, "stub")
    models = pipe.run("MODELS_FETCH", {}, {})["virnucpro_models"][0]
    assert (models / "esm2.pt").exists() and (models / "dnabert-s" / "config.json").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not found")
def test_scripts_run_the_cli_and_produce_every_declared_output(render, test_params, tmp_path):
    fasta = Path(test_params["input"])
    assert fasta.exists(), f"test profile input missing: {fasta}"
    out = run_pipeline(render, test_params, tmp_path, "script", fasta)
    # the test profile's shard size splits the example into several shards
    assert len(out["shards"]) >= 2, "test profile should exercise several shards"
    summary = out["summary"]
    results = summary["prediction_results.txt"][0].read_text()
    assert results.strip(), "empty prediction_results.txt"
    assert summary["run.json"][0].read_text().lstrip().startswith("{")


def test_file_lists_render_space_separated_as_in_nextflow(render):
    names = ["s1.scores.json", "s1.scores.tsv", "s1.sequences.tsv"]
    binding = {"task": task("SUMMARIZE"), "meta": {"id": "x"}, "shard_files": names}
    script = render(MODULES["SUMMARIZE"], "SUMMARIZE", binding)["script"]
    assert "virnucpro summarize --outdir .  " + " ".join(names) + "\n" in script
    # indentation is stripped as Nextflow does, so the heredoc terminator is at column 0
    assert "\nEND_VERSIONS\n" in script
    assert "\\$" not in script and "$(virnucpro --version" in script


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
    assert extra.get("EMBED_PROTEIN") == {"--esm-batch-size"}
    for process, module in MODULES.items():
        binding = {
            "task": task(process),
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
