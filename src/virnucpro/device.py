"""Device and precision choice, logged once so users see what ran where."""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

from virnucpro.errors import VirnucproError
from virnucpro.gpu_claim import claim_gpu

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp8")
# The dtype of a model's weights and activations at each precision. fp8 has none of its own:
# its model is loaded in bf16 and ESM-2's linear layers are quantized after (models/fp8.py),
# so everything else runs in bf16 (model_dtype).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer
FP8_MIN_CAPABILITY = (8, 9)


def model_dtype(precision: str) -> torch.dtype:
    """The dtype a model is loaded in at ``precision`` (a key of DTYPES, or fp8: bf16)."""
    return DTYPES["bf16" if precision == "fp8" else precision]


def gpu_ids(count: int) -> list[str]:
    """A stable identity per visible GPU, in torch's order: its UUID as nvidia-smi writes it
    (the same in every process, whatever CUDA_VISIBLE_DEVICES shows it as); where torch gives
    none, the CUDA_VISIBLE_DEVICES entry, else the index."""
    entries = [e.strip() for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    ids = []
    for index in range(count):
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
        if uuid:
            ids.append(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        else:
            ids.append(entries[index] if index < len(entries) and entries[index] else str(index))
    return ids


def no_gpu_error(requested: str) -> VirnucproError:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = "CUDA_VISIBLE_DEVICES not set" if visible is None else f"CUDA_VISIBLE_DEVICES={visible}"
    return VirnucproError(f"--device {requested}: no CUDA GPU is visible ({where})")


def select_device(requested: str = "auto") -> torch.device:
    """'auto': a free GPU claimed by lock file (gpu_claim) when there is one, else the CPU.
    'cuda': the same, but a GPU is required (an error at once without one). 'cpu' and
    'cuda:N' are taken as given (no claim)."""
    if requested in ("auto", "cuda"):
        if not torch.cuda.is_available():
            if requested == "cuda":
                raise no_gpu_error(requested)
            return torch.device("cpu")
        claimed = claim_gpu(gpu_ids(torch.cuda.device_count()))
        return torch.device(f"cuda:{claimed or 0}")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise VirnucproError(f"--device: unknown device '{requested}'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise no_gpu_error(requested)
        if (device.index or 0) >= torch.cuda.device_count():
            raise VirnucproError(
                f"--device {requested}: only {torch.cuda.device_count()} GPU(s) visible"
            )
    elif device.type != "cpu":
        raise VirnucproError(f"--device: unsupported device '{requested}' (cpu, cuda, cuda:N)")
    return device


def select_precision(
    device: torch.device, requested: str = "auto", simulate_fp8: bool = False
) -> str:
    """'auto' = bf16 on CUDA compute capability >= 8.0, else fp32 (never fp8: it must be asked
    for). fp16 needs a GPU; fp8 a GPU with FP8 tensor cores (fp8_missing), or with
    ``simulate_fp8`` the CPU (torch's CPU FP8 kernel: the GPU's math, slowly)."""
    if requested not in PRECISIONS:
        raise VirnucproError(f"--precision: '{requested}' is not one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
            return "bf16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise VirnucproError("--precision fp16: needs a CUDA GPU (use fp32 or bf16 on the CPU)")
    if requested == "fp8" and not (simulate_fp8 and device.type == "cpu"):
        missing = fp8_missing(device)
        if missing:
            raise VirnucproError(missing)
    return requested


def fp8_missing(device: torch.device) -> str | None:
    """Why ``device`` cannot run --precision fp8, in one line; None if it can (a CUDA GPU of
    compute capability FP8_MIN_CAPABILITY or newer)."""
    if device.type == "cuda":
        capability = tuple(torch.cuda.get_device_capability(device))
        if capability >= FP8_MIN_CAPABILITY:
            if importlib.util.find_spec("triton") is None:  # its kernels: models/fp8_kernels.py
                return "--precision fp8: needs Triton (installed with PyTorch on Linux); not found"
            return None
        name = torch.cuda.get_device_properties(device).name
        where = f"{device} ({name}, compute capability {capability[0]}.{capability[1]})"
    else:
        where = str(device.type)
    major, minor = FP8_MIN_CAPABILITY
    return (f"--precision fp8: needs a GPU with FP8 tensor cores (compute capability "
            f"{major}.{minor} or newer); {where} has none")  # fmt: skip


def describe_device(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    props = torch.cuda.get_device_properties(device)
    return (
        f"{device} ({props.name}, compute capability {props.major}.{props.minor}, "
        f"{props.total_memory / 2**30:.0f} GiB)"
    )


def setup(device: str, precision: str, simulate_fp8: bool = False) -> tuple[torch.device, str]:
    """Resolve and log device and precision for a model stage (select_precision)."""
    dev = select_device(device)
    prec = select_precision(dev, precision, simulate_fp8)
    if (dev, prec) not in _announced:  # once per process, not once per model
        _announced.add((dev, prec))
        log.info("device %s, precision %s", describe_device(dev), prec)
    return dev, prec


_announced: set[tuple[torch.device, str]] = set()
