"""`virnucpro versions`: the NVIDIA driver from nvidia-smi, else /proc, else no line."""

from __future__ import annotations

import pytest

from virnucpro import versions

PROC_TEXT = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    """A PATH holding only what the test puts there."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    return directory


def fake_nvidia_smi(bin_dir, script: str) -> None:
    path = bin_dir / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_driver_from_nvidia_smi_first_line(bin_dir, tmp_path):
    fake_nvidia_smi(bin_dir, 'echo "570.86.15"; echo "570.86.15"')
    assert versions.nvidia_driver_version(tmp_path / "absent") == "570.86.15"


def test_driver_from_proc_when_nvidia_smi_fails(bin_dir, tmp_path):
    fake_nvidia_smi(bin_dir, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    proc = tmp_path / "version"
    proc.write_text(PROC_TEXT)
    assert versions.nvidia_driver_version(proc) == "550.54.15"


def test_no_driver_no_line(bin_dir, tmp_path, monkeypatch):
    assert versions.nvidia_driver_version(tmp_path / "absent") is None
    monkeypatch.setattr(versions, "PROC_DRIVER_VERSION", tmp_path / "absent")
    text = versions.versions_yaml(2)
    assert "nvidia_driver" not in text
    assert text.splitlines()[0] == f"  virnucpro: {versions.__version__}"


def test_driver_line_when_present(bin_dir):
    fake_nvidia_smi(bin_dir, 'echo "570.86.15"')
    assert "    nvidia_driver: 570.86.15\n" in versions.versions_yaml()
