"""Container references agree with the pipeline version and the Dockerfiles."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import tomllib
from nf_lint import REPO, pipeline_files

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
MODULES = {
    "classify", "embed_dna", "embed_protein", "models_demo", "models_fetch",
    "split_fasta", "prepare", "summarize",
}  # fmt: skip
DOCKERFILES = ("Dockerfile.cuda", "Dockerfile.cpu")


def test_manifest_version_is_the_package_version():
    config = (REPO / "nextflow.config").read_text()
    assert re.search(rf"^\s*version\s*=\s*'{re.escape(VERSION)}'", config, re.M)
    assert re.search(r"^\s*nextflowVersion\s*=\s*'!?>=\d+\.\d+", config, re.M)
    assert re.search(r"^\s*name\s*=\s*'virnucpro'", config, re.M)


def test_every_module_has_a_container_at_the_pipeline_version():
    modules = [p for p in pipeline_files(".nf") if p.parts[:2] == ("modules", "local")]
    assert {m.parts[2] for m in modules} >= MODULES
    for module in modules:
        text = (REPO / module).read_text()
        images = re.findall(r"^\s*container\s+'([^']+)'", text, re.M)
        gpu = "label 'process_gpu'" in text
        flavour = "cuda" if gpu else "cpu"
        assert images == [f"ghcr.io/virnucpro/virnucpro:{VERSION}-{flavour}"], module
        # nf-core conventions: tag, versions, stub, ext.args
        assert "stub:" in text and "task.ext.args" in text, module


def test_dockerfiles_install_the_package_at_the_pipeline_version():
    for name in DOCKERFILES:
        text = (REPO / "containers" / name).read_text()
        assert re.search(r"^FROM python:3\.11\.\d+-slim", text, re.M), name
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


# --- pinned, reproducible, non-root images (static checks of the Dockerfiles) ---------------

CONTAINERS = REPO / "containers"
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")
PIP_OPTIONS_WITH_VALUE = {
    "-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
    "-f", "--find-links", "-t", "--target", "--prefix", "--root", "--platform",
    "--python-version", "--implementation", "--abi", "--only-binary", "--no-binary",
}  # fmt: skip


def torch_lower_bound() -> str:
    """pyproject's `torch>=X.Y[.Z]` as X.Y.Z: the version every environment must pin."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = [m.group(1) for d in deps if (m := re.fullmatch(r"torch>=(\d+\.\d+(?:\.\d+)?)", d))]
    assert len(bounds) == 1, f"pyproject.toml needs exactly one 'torch>=X.Y' dependency: {deps}"
    return bounds[0] if bounds[0].count(".") == 2 else bounds[0] + ".0"


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [ln for ln in dockerfile.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if m := re.match(r"^\s*([A-Za-z]+)\s+(.*)$", line):
            found.append((m.group(1).upper(), m.group(2).strip()))
    return found


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The arguments after `pip install` of every pip install command in RUN instructions."""
    commands = []
    for op, args in instructions(dockerfile):
        if op != "RUN":
            continue
        for command in re.split(r"&&|\|\||;", args):
            words = shlex.split(command)
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    commands.append(words[i + 2 :])
                    break
    return commands


def copied_files(dockerfile: str) -> dict[str, Path]:
    """Image path -> repository file of every single-file COPY."""
    copies = {}
    for op, args in instructions(dockerfile):
        words = args.split()
        if op == "COPY" and len(words) == 2 and not words[0].startswith("--"):
            copies[words[1]] = REPO / words[0]
    return copies


def requirement_file_problems(path: Path) -> list[str]:
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return [
        f"{path.name}: '{ln}' is not pinned with ==" for ln in lines if ln and not PIN.match(ln)
    ]


def pin_problems(dockerfile: str) -> list[str]:
    """Every package of every `pip install` pinned with ==, -r files included; the
    pipeline's own source only with --no-deps (its dependencies come pinned before it)."""
    problems = []
    installs = pip_installs(dockerfile)
    if not installs:
        problems.append("no pip install")
    copies = copied_files(dockerfile)
    for words in installs:
        i = 0
        while i < len(words):
            word = words[i]
            if word in ("-r", "--requirement"):
                source = copies.get(words[i + 1])
                if source is None:
                    problems.append(f"-r {words[i + 1]}: not a file COPY'd from the repository")
                else:
                    problems += requirement_file_problems(source)
                i += 2
                continue
            if word in PIP_OPTIONS_WITH_VALUE:
                i += 2
                continue
            if word.startswith("-"):
                i += 1
                continue
            if word.startswith(("/", ".")):
                if "--no-deps" not in words:
                    problems.append(f"{word}: a local package needs --no-deps")
            elif not PIN.match(word):
                problems.append(f"{word}: not pinned with ==")
            i += 1
    return problems


def torch_pins(text: str) -> list[str]:
    return re.findall(r"(?<![\w-])torch==([0-9][0-9A-Za-z.]*?)(?:\+\w+)?(?=[\s\"']|$)", text, re.M)


def base_image_problems(dockerfile: str) -> list[str]:
    problems = []
    images = [args.split()[0] for op, args in instructions(dockerfile) if op == "FROM"]
    if not images:
        problems.append("no FROM")
    for image in images:
        name, _, tag = image.split("@")[0].rpartition(":")
        if not name or "/" in tag:  # no tag: rpartition split a registry port or nothing
            problems.append(f"{image}: no tag")
        elif tag == "latest" or not re.search(r"\d", tag):
            problems.append(f"{image}: tag '{tag}' is not a version")
    return problems


def user_problems(dockerfile: str) -> list[str]:
    ops = instructions(dockerfile)
    users = [i for i, (op, _) in enumerate(ops) if op == "USER"]
    installs = [
        i for i, (op, args) in enumerate(ops)
        if op == "RUN" and re.search(r"pip install|apt-get install", args)
    ]  # fmt: skip
    if not users:
        return ["no USER"]
    last_user = ops[users[-1]][1].split(":")[0]
    problems = []
    if last_user in ("root", "0"):
        problems.append(f"USER {last_user} is root")
    if installs and users[-1] < installs[-1]:
        problems.append("USER comes before the last install")
    if not any(op == "ENV" and re.search(r"\bHOME=", args) for op, args in ops):
        problems.append("HOME not set (an uid from `docker run -u` has no home)")
    return problems


def procps_problems(dockerfile: str) -> list[str]:
    runs = " ".join(args for op, args in instructions(dockerfile) if op == "RUN")
    if not re.search(r"apt-get install [^&;]*\bprocps\b", runs):
        return ["procps not installed (Nextflow needs ps)"]
    return []


def image_problems(dockerfile: str) -> list[str]:
    return (
        pin_problems(dockerfile) + base_image_problems(dockerfile)
        + user_problems(dockerfile) + procps_problems(dockerfile)
    )  # fmt: skip


def test_one_torch_version_everywhere_equal_to_the_lower_bound():
    bound = torch_lower_bound()
    for name in (*DOCKERFILES, "environment.yml"):
        pins = torch_pins((CONTAINERS / name).read_text())
        assert pins == [bound], f"{name}: torch pins {pins}, pyproject's lower bound {bound}"
    cpu = (CONTAINERS / "Dockerfile.cpu").read_text()
    assert "https://download.pytorch.org/whl/cpu" in cpu


def test_images_are_pinned_and_run_as_a_user():
    for name in DOCKERFILES:
        assert image_problems((CONTAINERS / name).read_text()) == [], name


def test_requirements_file_is_pinned_and_the_conda_env_agrees():
    assert requirement_file_problems(CONTAINERS / "requirements.txt") == []
    locked = dict(
        line.split("==") for line in (CONTAINERS / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    env = (CONTAINERS / "environment.yml").read_text()
    assert re.search(r"^\s*-\s*procps-ng\s*$", env, re.M)
    python = re.search(r"^\s*-\s*python=(\d+\.\d+)\s*$", env, re.M).group(1)
    for name in DOCKERFILES:
        assert f"FROM python:{python}." in (CONTAINERS / name).read_text(), name
    pins = dict(re.findall(r"^\s*-\s*([A-Za-z0-9._-]+)==(\S+)\s*$", env, re.M))
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    direct = {re.split(r"[<>=!~;\[ ]", d)[0].lower() for d in deps} - {"torch"}
    assert direct <= set(pins), direct - set(pins)
    for package, version in pins.items():
        if package != "torch":
            assert locked.get(package) == version, (package, version, locked.get(package))


# Each check above must be able to fail: mutate a good Dockerfile and expect a complaint.
GOOD = """\
FROM python:3.11.16-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends procps
COPY containers/requirements.txt /opt/r.txt
RUN pip install --no-deps --index-url https://x/cpu torch==2.11.0+cpu \\
    && pip install -r /opt/r.txt
RUN pip install --no-deps --no-build-isolation /opt/virnucpro && pip check
ENV HOME=/home/virnucpro
USER virnucpro
"""


@pytest.mark.parametrize(
    "old, new, complaint",
    [
        ("torch==2.11.0+cpu", "torch", "not pinned"),
        ("torch==2.11.0+cpu", "torch>=2.11", "not pinned"),
        ("-r /opt/r.txt", "-r /opt/r.txt numpy", "not pinned"),
        ("--no-deps --no-build-isolation /opt", "--no-build-isolation /opt", "--no-deps"),
        ("COPY containers/requirements.txt /opt/r.txt", "", "not a file COPY"),
        ("python:3.11.16-slim-bookworm", "python:latest", "not a version"),
        ("python:3.11.16-slim-bookworm", "python", "no tag"),
        ("USER virnucpro", "USER root", "root"),
        ("USER virnucpro", "", "no USER"),
        ("USER virnucpro\n", "USER virnucpro\nRUN pip install a==1\n", "before the last"),
        ("ENV HOME=/home/virnucpro", "", "HOME not set"),
        ("--no-install-recommends procps", "--no-install-recommends curl", "procps"),
    ],
)  # fmt: skip
def test_image_checks_can_fail(old, new, complaint):
    assert image_problems(GOOD) == []
    assert old in GOOD
    assert any(complaint in p for p in image_problems(GOOD.replace(old, new)))


def test_torch_pin_and_requirement_checks_can_fail(tmp_path):
    assert torch_pins("pip install torch==2.11.0 x") == ["2.11.0"]
    assert torch_pins("pip install torch==2.11.0+cpu") == ["2.11.0"]
    assert torch_pins("      - torch==2.12.0\n") == ["2.12.0"]
    assert torch_pins("pip install torch>=2.11 torchvision==1.0") == []
    bad = tmp_path / "requirements.txt"
    bad.write_text("# comment\nnumpy==2.4.6\nrich>=13\n")
    assert requirement_file_problems(bad) == ["requirements.txt: 'rich>=13' is not pinned with =="]
