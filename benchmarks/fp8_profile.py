"""Where FP8 ESM-2's GPU time goes: a kernel table per variant, on a few layers of ESM-2 3B's
shapes (random weights), with the fused path checked against the reference path first.

    python benchmarks/fp8_profile.py --out results/ [--layers 6]

Variants: bf16 compiled (as --compile runs it), fp8 without and with the mean correction
(`--precision fp8`'s scheme). Per variant: ESM-2 tokens/s over 6,000 shuffled 500 bp frames,
scaled to 36 layers (per-layer cost is the same in every layer), and the 22 kernels that took
most GPU time over 2,000 of them (torch.profiler). Check: per frame, cosine of the mean
embeddings, FP8's fused path (models/fp8_kernels.py) against its reference path, both against
fp32 and bf16.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fp8_variants import random_model  # noqa: E402
from gpu_benchmark import compiled_graphs, sync, write_input  # noqa: E402

from virnucpro.embed import Esm2Embedder  # noqa: E402
from virnucpro.fasta import read_fasta  # noqa: E402
from virnucpro.models.compile import compile_model  # noqa: E402
from virnucpro.models.esm2 import ESM2, ESM2Config  # noqa: E402
from virnucpro.models.fp8 import Fp8Layer, to_fp8  # noqa: E402
from virnucpro.models.tokenizers import tokenize_protein  # noqa: E402
from virnucpro.prepare import prepare  # noqa: E402

BUDGET = 65536


def embed(model: ESM2, tokens: list[list[int]]) -> torch.Tensor:
    with torch.inference_mode():
        return Esm2Embedder(model).queue(tokens, BUDGET).gather()


def check(base: ESM2, tokens: list[list[int]], log) -> None:
    fp8 = to_fp8(copy.deepcopy(base))
    fp32 = embed(copy.deepcopy(base).float(), tokens)
    bf16 = embed(base, tokens)
    fused = embed(fp8, tokens)
    Fp8Layer.run_fused = False
    reference = embed(fp8, tokens)
    Fp8Layer.run_fused = None
    pairs = {"fused vs reference": (fused, reference), "fused vs fp32": (fused, fp32),
             "reference vs fp32": (reference, fp32), "bf16 vs fp32": (bf16, fp32),
             "fused vs bf16": (fused, bf16)}  # fmt: skip
    for name, (a, b) in pairs.items():
        cosine = torch.nn.functional.cosine_similarity(a.double(), b.double())
        log(f"check {name}: min {cosine.min().item():.6f} mean {cosine.mean().item():.6f}")


def measure(name: str, model: ESM2, speed: list[list[int]], layers: int, log) -> None:
    compile_model(model)
    embed(model, speed[:512])
    embed(model, speed[:509][::-1])  # padded batches too
    sync()
    graphs, started = compiled_graphs(), time.perf_counter()
    embed(model, speed)
    sync()
    per_s = sum(map(len, speed)) / (time.perf_counter() - started)
    compiled = compiled_graphs() - graphs
    log(f"== {name}: {per_s * layers / 36:,.0f} tokens/s scaled to 36 layers "
        f"({per_s:,.0f} at {layers}), compiled during timing: {compiled}")  # fmt: skip
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        embed(model, speed[:2000])
        sync()
    kernels: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for event in trace.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name][0] += event.device_time
            kernels[event.name][1] += 1
    total = sum(spent for spent, _ in kernels.values())
    log(f"   total kernel time {total / 1e3:.1f} ms")
    for kernel, (time_us, calls) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:22]:
        share = 100 * time_us / total
        log(f"   {share:5.1f}%  {time_us / 1e3:8.2f} ms  n={calls:5d}  {kernel[:150]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("fp8-profile"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/virnucpro-fp8-profile"))
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    write_input(args.work / "input.fa", 1500, seed=1)
    prepare(args.work / "input.fa", 500, args.work, "input")
    frames = read_fasta(args.work / "input.protein.faa", nucleotide=False)
    tokens = [tokenize_protein(r.sequence) for r in frames]
    random.Random(0).shuffle(tokens)
    speed = tokens[:6000]
    report = open(args.out / "fp8_profile.txt", "w")

    def log(line: str) -> None:
        print(line, flush=True)
        print(line, file=report, flush=True)

    base = random_model(ESM2Config(args.layers, 2560, 40), "cuda", 0).to(torch.bfloat16)
    check(base, speed[:1500], log)
    variants = {"bf16 compiled": lambda m: m,
                "fp8 without mean correction": lambda m: to_fp8(m, mean_correction=None),
                "fp8 (--precision fp8)": to_fp8}  # fmt: skip
    for name, make in variants.items():
        measure(name, make(copy.deepcopy(base)), speed, args.layers, log)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
