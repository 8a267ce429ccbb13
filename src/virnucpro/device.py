"""Device and precision choice, logged once so users see what ran where."""

from __future__ import annotations

import logging

import torch

from virnucpro.errors import VirnucproError
from virnucpro.gpu_claim import claim_gpu

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(requested: str = "auto") -> torch.device:
    """'auto': a CUDA GPU when there is one (a free one claimed by lock file when several are
    visible and none was pinned), else the CPU. 'cpu', 'cuda' and 'cuda:N' are taken as given."""
    if requested == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        claimed = claim_gpu(torch.cuda.device_count())
        return torch.device(f"cuda:{claimed or 0}")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise VirnucproError(f"--device: unknown device '{requested}'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VirnucproError(f"--device {requested}: no CUDA GPU is visible")
        if (device.index or 0) >= torch.cuda.device_count():
            raise VirnucproError(
                f"--device {requested}: only {torch.cuda.device_count()} GPU(s) visible"
            )
    elif device.type != "cpu":
        raise VirnucproError(f"--device: unsupported device '{requested}' (cpu, cuda, cuda:N)")
    return device


def select_precision(device: torch.device, requested: str = "auto") -> str:
    """'auto' = bf16 on CUDA compute capability >= 8.0, else fp32. fp16 needs a GPU."""
    if requested not in PRECISIONS:
        raise VirnucproError(f"--precision: '{requested}' is not one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
            return "bf16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise VirnucproError("--precision fp16: needs a CUDA GPU (use fp32 or bf16 on the CPU)")
    return requested


def describe_device(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    props = torch.cuda.get_device_properties(device)
    return (
        f"{device} ({props.name}, compute capability {props.major}.{props.minor}, "
        f"{props.total_memory / 2**30:.0f} GiB)"
    )


def setup(device: str, precision: str) -> tuple[torch.device, str]:
    """Resolve and log device and precision for a model stage."""
    dev = select_device(device)
    prec = select_precision(dev, precision)
    log.info("device %s, precision %s", describe_device(dev), prec)
    return dev, prec
