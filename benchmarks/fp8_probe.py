"""FP8 ESM-2 probe (groundwork of issue 21): speed and agreement of FP8 variants of ESM-2 3B's
linear layers (models/fp8.py) against bf16 and fp32, on random weights and on the same
weights with outlier channels (a few LayerNorm gains 20-100x, as trained transformers have).

    python benchmarks/fp8_probe.py --out results/     # a GPU with FP8 tensor cores (H100/H200)
    python benchmarks/fp8_probe.py --tiny --out /tmp/p  # the whole script on the CPU, tiny model

Input: the GPU benchmark's synthetic metagenome, prepared with 500 bp chunks (protein frames).
Agreement: per frame, the cosine between the mean embeddings of a variant and of fp32 (and of
bf16). Speed: ESM-2 tokens/s of the product's embedder with --compile's compiled parts, on the
same frames, batches of 65,536 tokens. Weights are random (real ones cannot be downloaded here).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_benchmark import sync, write_input  # noqa: E402

from virnucpro.embed import Esm2Embedder  # noqa: E402
from virnucpro.fasta import read_fasta  # noqa: E402
from virnucpro.models.compile import compile_model  # noqa: E402
from virnucpro.models.esm2 import ESM2, ESM2Config  # noqa: E402
from virnucpro.models.fp8 import Fp8Linear, to_fp8  # noqa: E402
from virnucpro.models.tokenizers import tokenize_protein  # noqa: E402
from virnucpro.prepare import prepare  # noqa: E402

VARIANTS = {  # name: (FP8 linears, fast accumulation)
    "fp8 all four": (("qkv", "out_proj", "fc1", "fc2"), False),
    "fp8 all four, fast accumulation": (("qkv", "out_proj", "fc1", "fc2"), True),
    "fp8 MLP (fc1, fc2)": (("fc1", "fc2"), False),
    "fp8 attention (qkv, out_proj)": (("qkv", "out_proj"), False),
    "fp8 all but fc2": (("qkv", "out_proj", "fc1"), False),
    "fp8 out_proj + fc2 (inputs not LayerNorm outputs)": (("out_proj", "fc2"), False),
}


def random_model(config: ESM2Config, device: str, seed: int) -> ESM2:
    """Random ESM-2 in fp32: PyTorch's default init, LayerNorm gains around 1."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = ESM2(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                parameter.normal_(1.0, 0.1)
            elif "norm" in name:
                parameter.normal_(0.0, 0.1)
    return model


def with_outliers(model: ESM2, channels: int = 8, seed: int = 1) -> ESM2:
    """A copy whose LayerNorm gains have ``channels`` outliers, 20-100x, per norm."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            for norm in (layer.self_attn_layer_norm, layer.final_layer_norm):
                picked = torch.randperm(norm.weight.numel(), generator=gen)[:channels]
                factors = 20 + 80 * torch.rand(channels, generator=gen)
                norm.weight[picked.to(norm.weight.device)] *= factors.to(norm.weight.device)
    return model


def features(model: ESM2, tokens: list[list[int]], precision: str, budget: int) -> torch.Tensor:
    embedder = Esm2Embedder(model, precision=precision)
    with torch.inference_mode():
        return embedder.queue(tokens, budget).gather()


def compile_fp8_linears(model: ESM2) -> None:
    """Each Fp8Linear through one shared torch.compile'd forward, so that the activation's
    quantization fuses into a few kernels instead of running op by op."""
    compiled = torch.compile(Fp8Linear.forward, dynamic=True)
    for module in model.modules():
        if isinstance(module, Fp8Linear):
            module.forward = types.MethodType(compiled, module)


def tokens_per_second(model: ESM2, tokens: list[list[int]], budget: int, fp8: bool) -> float:
    """Compiled as --compile compiles ESM-2 (and with ``fp8`` the FP8 layers compiled too),
    warmed up, then one timed pass."""
    compile_model(model)
    if fp8:
        compile_fp8_linears(model)
    embedder = Esm2Embedder(model, precision="bf16")
    with torch.inference_mode():
        embedder.queue(tokens[:512], budget).gather()
        embedder.queue(tokens[:509][::-1], budget).gather()  # padded batches too
        sync()
        started = time.perf_counter()
        embedder.queue(tokens, budget).gather()
        sync()
    return sum(len(t) for t in tokens) / (time.perf_counter() - started)


def agreement(x: torch.Tensor, reference: torch.Tensor) -> dict:
    cosine = torch.nn.functional.cosine_similarity(x.double(), reference.double())
    return {"min": cosine.min().item(), "mean": cosine.mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("fp8-results"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/virnucpro-fp8"))
    parser.add_argument("--sequences", type=int, default=4000)
    parser.add_argument("--agree-frames", type=int, default=1500)
    parser.add_argument("--speed-frames", type=int, default=6000)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU")
    parser.add_argument("--weights", choices=("random", "outliers", "both"), default="both")
    parser.add_argument(
        "--eager-fp8",
        action="store_true",
        help="FP8 layers eager (their quantization op by op), as in run 34a",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.tiny else "cuda"
    config = ESM2Config(2, 64, 4) if args.tiny else ESM2Config(36, 2560, 40)
    budget = 4096 if args.tiny else 65536
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    torch.backends.cudnn.allow_tf32 = False

    fasta = args.work / "input.fa"
    write_input(fasta, args.sequences, seed=1)
    prepare(fasta, 500, args.work, "input")
    proteins = [r.sequence for r in read_fasta(args.work / "input.protein.faa", nucleotide=False)]
    random.Random(0).shuffle(proteins)
    agree = [tokenize_protein(p) for p in proteins[: args.agree_frames]]
    speed = [tokenize_protein(p) for p in proteins[: args.speed_frames]]
    results: dict = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                     "agree_frames": len(agree), "speed_frames": len(speed),
                     "speed_tokens": sum(map(len, speed)), "weights": {}}  # fmt: skip

    def save() -> None:
        (args.out / "fp8_probe.json").write_text(json.dumps(results, indent=2))

    base = random_model(config, device, seed=0)
    for weights in ("random", "outliers") if args.weights == "both" else (args.weights,):
        fp32 = base if weights == "random" else with_outliers(base)
        reference = features(fp32, agree, "fp32", budget)
        bf16_model = copy.deepcopy(fp32).to(torch.bfloat16)
        if weights == "outliers":
            del fp32
        bf16 = features(bf16_model, agree, "bf16", budget)
        rows = {"bf16": {"vs_fp32": agreement(bf16, reference)}}
        if weights == "random":
            rows["bf16"]["tokens_per_s"] = tokens_per_second(copy.deepcopy(bf16_model), speed,
                                                             budget, fp8=False)  # fmt: skip
        for name, (linears, fast) in VARIANTS.items():
            model = to_fp8(copy.deepcopy(bf16_model), linears, fast)
            x = features(model, agree, "bf16", budget)
            rows[name] = {"vs_fp32": agreement(x, reference), "vs_bf16": agreement(x, bf16)}
            if weights == "random":
                rows[name]["tokens_per_s"] = tokens_per_second(model, speed, budget,
                                                               fp8=not args.eager_fp8)  # fmt: skip
            del model
            print(weights, name, rows[name], flush=True)
            results["weights"][weights] = rows
            save()
        del bf16_model
        if device == "cuda":
            torch.cuda.empty_cache()
    save()


if __name__ == "__main__":
    main()
