"""`virnucpro versions`: what a pipeline task ran, as YAML lines for its versions.yml."""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path

from virnucpro import __version__

PROC_DRIVER_VERSION = Path("/proc/driver/nvidia/version")


def nvidia_driver_version(proc_file: Path | None = None) -> str | None:
    """The NVIDIA driver's version from nvidia-smi, else from the kernel module's /proc file;
    None without a driver (never an error)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines and lines[0].strip():
            return lines[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar ..."
        text = (proc_file or PROC_DRIVER_VERSION).read_text()
        found = re.search(r"Kernel Module\s+(\d[\w.-]*)", text)
    except (OSError, UnicodeDecodeError):
        return None
    return found.group(1) if found else None


def versions_yaml(indent: int = 4) -> str:
    """``name: version`` lines, each indented by ``indent`` spaces; cuda and nvidia_driver
    only where present."""
    import torch

    found = {
        "virnucpro": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nvidia_driver": nvidia_driver_version(),
    }
    return "".join(f"{' ' * indent}{name}: {value}\n" for name, value in found.items() if value)
