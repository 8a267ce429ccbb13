"""Compile FP8 ESM-2's Triton kernels for a Hopper GPU (sm_90) on a machine without one and
say, per launch, what the compiled code does: registers per thread, bytes spilled to local
memory, and how many scalar 16-bit global loads it has (bf16 read one element at a time
instead of in 16-byte vectors). Run by tests/test_fp8_kernels.py in a process of its own: the
kernels must be defined without Triton's CPU interpreter.

One fused FP8 layer of ESM-2 3B's widths runs on the CPU with each kernel launch replaced by
its compilation, with the arguments and specialization Triton would give it on the GPU. That
takes two of Triton's internals (its argument binder and _pack_args), as of Triton 3.7, the
version torch 2.13 pins.

    python tests/fp8_ptx.py   # prints one JSON line per distinct launch
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from virnucpro.models import fp8_kernels  # noqa: E402
from virnucpro.models.esm2 import ESM2, ESM2Config  # noqa: E402
from virnucpro.models.fp8 import Fp8Layer, to_fp8  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
# one bf16 per load whatever the cache modifiers; vector loads are ld.global...v4.b32 and such
SCALAR_16BIT_LOAD = re.compile(r"ld\.global(?:\.(?!v\d)[A-Za-z0-9_:]+)*\.b16\b")


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """Registers per thread and bytes of spill stores, as ptxas reports them for sm_90a."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        report = subprocess.run(
            [str(PTXAS), "-arch=sm_90a", "-v", str(source), "-o", str(Path(tmp) / "k.cubin")],
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spilled = int(re.search(r"(\d+) bytes spill stores", report).group(1))
    return registers, spilled


class CompileInstead:
    """Stands in for a Triton kernel: a launch compiles it for HOPPER and records what the
    compiled code does, once per distinct specialization."""

    def __init__(self, kernel, seen: dict) -> None:
        self.kernel, self.seen = kernel, seen
        self.backend = make_backend(HOPPER)
        self.binder = create_function_from_signature(kernel.signature, kernel.params, self.backend)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            bound, specialization, options = self.binder(*args, **kwargs)
            key = (self.kernel.__name__, str(specialization), str(options))
            if key in self.seen:
                return
            options, signature, constants, attrs = self.kernel._pack_args(
                self.backend, kwargs, bound, specialization, options
            )
            compiled = triton.compile(
                ASTSource(self.kernel, signature, constants, attrs),
                target=HOPPER,
                options=options.__dict__,
            )
            ptx = compiled.asm["ptx"]
            registers, spilled = ptxas_usage(ptx)
            flags = {p.name: bound[p.name] for p in self.kernel.params if p.is_constexpr}
            self.seen[key] = {
                "kernel": self.kernel.__name__,
                **flags,
                "warps": options.num_warps,
                "registers": registers,
                "spilled_bytes": spilled,
                "scalar_16bit_loads": len(SCALAR_16BIT_LOAD.findall(ptx)),
            }

        return launch


def launches() -> list[dict]:
    """What each kernel launch of one fused FP8 layer at ESM-2 3B's widths compiles to (the
    module's kernels stay replaced: a process of its own)."""
    torch.manual_seed(0)
    model = to_fp8(ESM2(ESM2Config(1, 2560, 40)).to(torch.bfloat16).eval())
    seen: dict = {}
    for name in ("_rows_kernel", "_rotary_kernel"):
        setattr(fp8_kernels, name, CompileInstead(getattr(fp8_kernels, name), seen))
    Fp8Layer.run_fused = True
    tokens = torch.randint(4, 24, (2, 24))
    with torch.inference_mode():
        model(tokens)  # a batch without padding
        tokens[1, 20:] = 1
        model(tokens)  # and with: the launches that count only real tokens
    return list(seen.values())


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("fp8_ptx.py: unset TRITON_INTERPRET (the kernels are compiled, not interpreted)")
    for launch in launches():
        print(json.dumps(launch))
