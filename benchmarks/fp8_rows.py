"""FP8 ESM-2's row kernel (models/fp8_kernels.py) alone: each of its five launches in a layer,
at ESM-2 3B's widths, timed for several launch configurations (rows per step, warps) against
the GPU's copy bandwidth measured in the same run.

    python benchmarks/fp8_rows.py --out results/   # a GPU with FP8 tensor cores
    python benchmarks/fp8_rows.py --tiny           # on the CPU, Triton's interpreter, tiny widths

Per launch and configuration, at each of BUDGETS (fp8_kernels.WARPS): microseconds per
rows() call (the median of 5 rounds of --repeats calls back to back; a call includes rows()'s
few small torch operations beside the kernel, as in the model), the bytes it must move (inputs
read once, outputs written once) and that as a share of the copy bandwidth: the floor a
memory-bound kernel can reach. The configuration fp8_kernels.launch_config and WARPS pick is
marked; at the end, the best per launch and, per block width (launch_config's key), the
configuration fastest over its launches. Input:
one batch of --sequences rows of --length tokens (the 500 bp benchmark's typical batch), the
last tokens of every third row padding, random values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if "--tiny" in sys.argv:  # Triton's interpreter: set before the kernels are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
import triton

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_benchmark import sync  # noqa: E402

from virnucpro.models import fp8_kernels  # noqa: E402

# (rows per step, warps): blocks below 8,192 columns (ESM-2 3B: 2,560), and the others (10,240)
SMALL = [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2), (4, 2), (1, 4), (2, 4), (4, 4), (2, 8)]
LARGE = [(1, 4), (1, 8), (2, 8), (1, 16), (2, 16)]
BUDGETS = [8192, 16384]  # fp8_kernels.WARPS: warps per launch, at most


def timed(call, repeats: int, rounds: int = 5) -> float:
    """Seconds of one call: the median over ``rounds`` of ``repeats`` calls run back to back
    (one synchronization per round, not per call)."""
    call()
    sync()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        sync()
        times.append((time.perf_counter() - started) / repeats)
    return statistics.median(times)


def copy_bandwidth(device: str, rounds: int) -> float:
    """Bytes per second of a large device-to-device copy (read + written)."""
    x = torch.empty(2**28 if device == "cuda" else 2**20, device=device, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    seconds = timed(lambda: y.copy_(x), 10, rounds)
    return 2 * x.numel() * x.element_size() / seconds


def launches(b: int, t: int, dim: int, heads: int, device: str) -> dict:
    """The five rows() calls of Fp8Layer.forward_fused, each as (call, bytes moved)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device).to(torch.bfloat16)

    x, o, h = randn(b, t, dim), randn(b, t, dim), randn(b, t, 4 * dim)
    # attention's output (B, H, T, D) as the GPU's attention kernels lay it out: (B, T, H, D)
    y = randn(b, t, heads, dim // heads).transpose(1, 2)
    keep = torch.ones(b, t, dtype=torch.bool, device=device)
    keep[::3, -t // 4 :] = False
    norm = torch.nn.LayerNorm(dim, device=device, dtype=torch.bfloat16)
    shift, shift4 = randn(b, dim).float(), randn(b, 4 * dim).float()
    n = b * t

    def e4m3(k: int) -> int:  # e4m3 values and float32 scales written
        return n * k + 4 * n

    rows = fp8_kernels.rows
    return {
        "qkv input (LayerNorm)": (
            lambda: rows(x, norm=norm, keep=keep, means=True), 2 * n * dim + e4m3(dim)),
        "out_proj input (attention output)": (
            lambda: rows(y.transpose(1, 2), shift=shift, keep=keep, means=True),
            2 * n * dim + e4m3(dim)),
        "fc1 input (residual add, LayerNorm)": (
            lambda: rows(x, other=o, shift=shift, norm=norm, keep=keep, means=True),
            6 * n * dim + e4m3(dim)),
        "fc2 input (GELU)": (
            lambda: rows(h, shift=shift4, gelu=True, keep=keep, means=True),
            8 * n * dim + e4m3(4 * dim)),
        "layer output (residual add)": (
            lambda: rows(x, other=o, shift=shift, quantize=False), 6 * n * dim),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write fp8_rows.json here")
    parser.add_argument("--sequences", type=int, default=390)
    parser.add_argument("--length", type=int, default=168)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="widths 64/256 on the CPU")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    dim, heads = (64, 4) if args.tiny else (2560, 40)
    b, t = (3, 20) if args.tiny else (args.sequences, args.length)
    repeats, rounds = (1, 1) if args.tiny else (args.repeats, 5)
    bandwidth = copy_bandwidth(device, rounds)
    chosen, chosen_budget = fp8_kernels.launch_config, fp8_kernels.WARPS
    print(f"copy bandwidth {bandwidth / 1e9:,.0f} GB/s; batch {b} x {t} tokens, width {dim}")
    results: dict = {"copy_gb_s": bandwidth / 1e9, "batch": [b, t], "dim": dim, "launches": {}}
    best: dict[str, tuple[float, tuple[int, int, int]]] = {}
    # per block (launch_config's key): each (rows, warps, budget)'s time summed over launches
    totals: dict[int, dict[tuple[int, int, int], float]] = {}
    try:
        for name, (call, moved) in launches(b, t, dim, heads, device).items():
            block = triton.next_power_of_2(4 * dim if "GELU" in name else dim)
            picked = (*chosen(block), chosen_budget)
            configs = SMALL if block < 8192 or args.tiny else LARGE
            for budget in BUDGETS[:1] if args.tiny else BUDGETS:
                fp8_kernels.WARPS = budget
                for config in configs:
                    fp8_kernels.launch_config = lambda _, config=config: config
                    seconds = timed(call, repeats, rounds)
                    share = moved / seconds / bandwidth
                    key = (*config, budget)
                    mark = " <- launch_config" if key == picked else ""
                    print(f"{name:38s} rows {config[0]} warps {config[1]:2d} budget "
                          f"{budget:5d}: {seconds * 1e6:8.1f} us, {share:6.1%} of copy "
                          f"bandwidth{mark}")  # fmt: skip
                    results["launches"].setdefault(name, []).append(
                        {"rows": config[0], "warps": config[1], "warp_budget": budget,
                         "us": seconds * 1e6, "of_copy_bandwidth": share,
                         "launch_config": key == picked})  # fmt: skip
                    if name not in best or seconds < best[name][0]:
                        best[name] = (seconds, key)
                    per_block = totals.setdefault(block, {})
                    per_block[key] = per_block.get(key, 0.0) + seconds
    finally:
        fp8_kernels.launch_config, fp8_kernels.WARPS = chosen, chosen_budget
    for name, (seconds, key) in best.items():
        print(f"best for {name}: rows {key[0]}, warps {key[1]}, warp budget {key[2]} "
              f"({seconds * 1e6:.1f} us)")  # fmt: skip
    for block, per_config in totals.items():
        fastest = min(per_config, key=per_config.get)
        now = per_config.get((*chosen(block), chosen_budget))
        now_text = f"{now * 1e6:.1f} us" if now is not None else "not among those timed"
        print(f"blocks of {block}: rows {fastest[0]}, warps {fastest[1]}, budget {fastest[2]}"
              f" take {per_config[fastest] * 1e6:.1f} us over their launches, launch_config's "
              f"{now_text}")  # fmt: skip
        results.setdefault("fastest", {})[block] = dict(
            zip(("rows", "warps", "warp_budget"), fastest, strict=True)
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fp8_rows.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
