"""Run the real Nextflow (assembled from Maven Central by tests/nextflow/install_nextflow.sh)
and read what it leaves: traces, the SLURM job completion log, the result tables."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NXF_VERSION = "25.04.4"
# where the launcher and its jars are kept between runs (CI caches ~/.cache)
NXF_DIR = Path(
    os.environ.get("VIRNUCPRO_NEXTFLOW_DIR")
    or Path.home() / ".cache" / "virnucpro-tests" / f"nextflow-{NXF_VERSION}"
)


def unavailable(problem: str):
    """Skip outside CI; in CI a missing tool is a failure, never a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"Nextflow tests cannot run in CI: {problem}")
    pytest.skip(problem)


def install_nextflow() -> Path:
    for tool, package in (("java", "openjdk-17-jre-headless"), ("mvn", "maven")):
        if shutil.which(tool) is None:
            unavailable(f"{tool} not found (apt-get install {package})")
    script = REPO / "tests" / "nextflow" / "install_nextflow.sh"
    done = subprocess.run(["bash", str(script), str(NXF_DIR)], capture_output=True, text=True)
    if done.returncode != 0:
        unavailable(f"install_nextflow.sh failed: {done.stderr.strip()[-500:]}")
    return NXF_DIR / "nextflow"


def task_env(home: Path) -> dict[str, str]:
    """This Python's bin first on PATH (the tasks call `virnucpro`), plain log output."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["NXF_ANSI_LOG"] = "false"
    env["NXF_HOME"] = str(home)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


class Nextflow:
    def __init__(self, launcher: Path, home: Path):
        self.launcher = launcher
        self.env = task_env(home)

    def run(self, *args: str, cwd: Path, check: bool = True, timeout: int = 900, verb="run"):
        cmd = [str(self.launcher), verb, str(REPO), *args]
        done = subprocess.run(
            cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            log = (
                (cwd / ".nextflow.log").read_text()[-4000:]
                if (cwd / ".nextflow.log").exists()
                else ""
            )
            raise AssertionError(
                f"{' '.join(cmd[2:])} exited {done.returncode}\n{done.stdout[-4000:]}\n"
                f"{done.stderr[-4000:]}\n--- .nextflow.log ---\n{log}"
            )
        return done


def trace(outdir: Path, suffix: str) -> list[dict[str, str]]:
    """Rows of <outdir>/pipeline_info/execution_trace_<suffix>.txt."""
    path = outdir / "pipeline_info" / f"execution_trace_{suffix}.txt"
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def table(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def jobcomp(path: Path) -> dict[str, dict[str, str]]:
    """SLURM's job completion log (jobcomp/filetxt) as {JobId: {field: value}}."""
    jobs = {}
    for line in path.read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        jobs[fields["JobId"]] = fields
    return jobs
