"""Every .nf and .config file parses and analyzes cleanly with Nextflow's own parser."""

from __future__ import annotations

import re

import pytest
from nf_lint import REPO, pipeline_files, require_java_and_jar, run_lint

ERROR = re.compile(r"^ERROR (\S+?):(\d+):(\d+): (.*)$", re.M)


@pytest.fixture(scope="module")
def lint():
    java, jar = require_java_and_jar()
    return lambda files, cwd=REPO: run_lint(java, jar, files, cwd)


def test_pipeline_files_are_found():
    nf = {str(p) for p in pipeline_files(".nf")}
    config = {str(p) for p in pipeline_files(".config")}
    assert {"main.nf", "workflows/virnucpro.nf", "modules/local/embed_dna/main.nf"} <= nf
    assert {"nextflow.config", "conf/base.config", "conf/test.config"} <= config
    assert len([p for p in nf if p.startswith("modules/local/")]) == 9


def test_every_nf_and_config_file_has_no_error(lint):
    files = pipeline_files(".nf") + pipeline_files(".config")
    result = lint(files)
    errors = [f"{m[0]}:{m[1]}: {m[3]}" for m in ERROR.findall(result.stdout)]
    assert not errors, "Nextflow parser errors:\n" + "\n".join(errors)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"nf_lint: {len(files)} files, 0 errors" in result.stdout


def test_lint_reports_errors_with_file_and_line(lint, tmp_path):
    (tmp_path / "bad.nf").write_text(
        "workflow {\n    main:\n    FOO(channel.of(1))\n    x = undefined_var + 1\n}\n"
    )
    (tmp_path / "broken.config").write_text("params {\n    a = \n}\n")
    (tmp_path / "good.config").write_text("params {\n    a = 1\n}\n")
    result = lint(["bad.nf", "broken.config", "good.config"], cwd=tmp_path)
    assert result.returncode == 1
    found = {(m[0], int(m[1])) for m in ERROR.findall(result.stdout)}
    assert ("bad.nf", 3) in found  # FOO is not defined
    assert ("bad.nf", 4) in found  # undefined_var is not defined
    assert any(name == "broken.config" for name, _ in found)
    assert not any(name == "good.config" for name, _ in found)
