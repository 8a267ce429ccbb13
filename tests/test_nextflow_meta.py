"""Every local module has an nf-core-style meta.yml that names its inputs and outputs as its
main.nf declares them (channels in order, tuple elements in order, emit names)."""

from __future__ import annotations

import re

import pytest
import yaml  # PyYAML: a runtime dependency (tokenizers -> huggingface-hub -> pyyaml)
from nf_lint import REPO

MODULE_DIRS = sorted(p.parent for p in (REPO / "modules" / "local").glob("*/main.nf"))
# val(meta) / path(x) / path("x") / env(X) inside a tuple, or a bare `path x` / `val x`
ELEMENT = re.compile(r"\b(val|path|env|file)\s*\(\s*(['\"]?)(.+?)\2\s*\)")
BARE = re.compile(r"^(val|path|env|file)\s+(['\"]?)([^,'\"\s]+)\2")


def section(text: str, name: str) -> list[str]:
    """The declaration lines of a process's `input:` or `output:` block, comments dropped."""
    m = re.search(rf"^\s*{name}:\s*\n(.*?)(?=^\s*(?:input|output|when|script|shell|exec|stub):)",
                  text, re.M | re.S)  # fmt: skip
    if not m:
        return []
    lines = [re.sub(r"//.*$", "", line).strip() for line in m.group(1).splitlines()]
    return [line for line in lines if line]


def elements(declaration: str) -> list[str]:
    """The element names of one channel declaration: ['meta', 'reads'] or ['models']."""
    declaration = re.sub(r",?\s*(emit|topic|optional|arity)\s*:.*$", "", declaration)
    if declaration.startswith("tuple"):
        return [m.group(3) for m in ELEMENT.finditer(declaration)]
    m = ELEMENT.match(declaration) or BARE.match(declaration)
    assert m, f"cannot read the declaration {declaration!r}"
    return [m.group(3)]


def declared(main_nf: str) -> tuple[list[list[str]], list[tuple[str, list[str]]]]:
    inputs = [elements(d) for d in section(main_nf, "input")]
    outputs = []
    for d in section(main_nf, "output"):
        emit = re.search(r"\bemit:\s*(\w+)", d)
        assert emit, f"output without emit: {d!r}"
        outputs.append((emit.group(1), elements(d)))
    return inputs, outputs


def documented(meta: dict) -> tuple[list[list[str]], list[tuple[str, list[str]]]]:
    inputs = [[next(iter(e)) for e in channel] for channel in meta.get("input") or []]
    outputs = []
    for channel in meta.get("output") or []:
        ((emit, elems),) = channel.items()
        outputs.append((emit, [next(iter(e)) for e in elems]))
    return inputs, outputs


def test_every_module_is_found():
    names = {p.name for p in MODULE_DIRS}
    assert {"split_fasta", "prepare", "embed_dna", "embed_protein", "classify"} <= names
    assert {"summarize", "models_fetch", "models_demo"} <= names


@pytest.mark.parametrize("module", MODULE_DIRS, ids=lambda p: p.name)
def test_meta_yml_matches_main_nf(module):
    meta_path = module / "meta.yml"
    assert meta_path.exists(), f"{module.relative_to(REPO)} has no meta.yml"
    meta = yaml.safe_load(meta_path.read_text())
    assert meta["name"] == module.name
    assert meta["description"].strip() and len(meta["keywords"]) >= 3
    assert meta["tools"] and meta["authors"]
    for channel in [*(meta.get("input") or []), *(e for o in meta["output"] for e in o.values())]:
        for element in channel:
            ((name, spec),) = element.items()
            assert spec.get("type") and spec.get("description"), (module.name, name)
    assert documented(meta) == declared((module / "main.nf").read_text())


def test_the_declaration_reader_reads_nf_core_shapes():
    main_nf = """
    input:
    tuple val(meta), path(reads)   // a comment
    path models
    val(chunk_size)

    output:
    tuple val(meta), path("${meta.id}.tsv"), emit: tsv
    path "versions.yml"                    , emit: versions
    tuple val(meta), path("*.log"), optional: true, emit: log

    when:
    """
    assert declared(main_nf) == (
        [["meta", "reads"], ["models"], ["chunk_size"]],
        [("tsv", ["meta", "${meta.id}.tsv"]), ("versions", ["versions.yml"]),
         ("log", ["meta", "*.log"])],
    )  # fmt: skip
