"""Container references agree with the pipeline version and the Dockerfiles."""

from __future__ import annotations

import re

import tomllib
from nf_lint import REPO, pipeline_files

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_manifest_version_is_the_package_version():
    config = (REPO / "nextflow.config").read_text()
    assert re.search(rf"^\s*version\s*=\s*'{re.escape(VERSION)}'", config, re.M)
    assert re.search(r"^\s*nextflowVersion\s*=\s*'!?>=\d+\.\d+", config, re.M)
    assert re.search(r"^\s*name\s*=\s*'virnucpro'", config, re.M)


def test_every_module_has_a_container_at_the_pipeline_version():
    modules = [p for p in pipeline_files(".nf") if p.parts[:2] == ("modules", "local")]
    assert len(modules) == 8
    for module in modules:
        text = (REPO / module).read_text()
        images = re.findall(r"^\s*container\s+'([^']+)'", text, re.M)
        gpu = "label 'process_gpu'" in text
        flavour = "cuda" if gpu else "cpu"
        assert images == [f"ghcr.io/virnucpro/virnucpro:{VERSION}-{flavour}"], module
        # nf-core conventions: tag, versions, stub, ext.args
        assert "stub:" in text and "task.ext.args" in text, module


def test_dockerfiles_install_the_package_at_the_pipeline_version():
    for name, base in [("Dockerfile.cuda", "pytorch/pytorch:"), ("Dockerfile.cpu", "python:")]:
        text = (REPO / "containers" / name).read_text()
        assert re.search(rf"^FROM {re.escape(base)}", text, re.M), name
        assert f"ARG VIRNUCPRO_VERSION={VERSION}" in text, name
        assert 'test "$(virnucpro --version)" = "virnucpro ${VIRNUCPRO_VERSION}"' in text
        assert "COPY src /opt/virnucpro/src" in text


# Nextflow's trace fields (nextflow/trace/TraceRecord.groovy FIELDS): an unknown one
# makes Nextflow fail when it writes the trace.
TRACE_FIELDS = set(
    "task_id hash native_id process module container tag name status exit submit start "
    "complete duration realtime %cpu %mem rss vmem peak_rss peak_vmem rchar wchar syscr "
    "syscw read_bytes write_bytes attempt workdir script scratch queue cpus memory disk "
    "time env error_action vol_ctxt inv_ctxt hostname cpu_model".split()
)


def test_reports_are_on_and_trace_fields_are_valid():
    config = (REPO / "nextflow.config").read_text()
    fields = re.search(r"^\s*fields\s*=\s*'([^']+)'", config, re.M).group(1).split(",")
    assert set(fields) <= TRACE_FIELDS, set(fields) - TRACE_FIELDS
    assert {"process", "tag", "name", "hostname", "attempt"} <= set(fields)
    for scope in ("timeline", "report", "trace", "dag"):
        block = re.search(rf"^{scope} \{{(.*?)^\}}", config, re.M | re.S).group(1)
        assert re.search(r"enabled\s*=\s*true", block), scope
        assert "${params.outdir}/pipeline_info/" in block, scope
