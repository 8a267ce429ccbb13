"""FP8 ESM-2 variants: speed and agreement of each way of putting ESM-2 3B's linear layers
in FP8 (models/fp8.py), against bf16 and fp32, on random weights and on the same weights
with outlier channels (a few LayerNorm gains 20-100x, as trained transformers have).

    python benchmarks/fp8_variants.py --out results/      # a GPU with FP8 tensor cores
    python benchmarks/fp8_variants.py --tiny --out /tmp/p # the whole script on the CPU

Input: the GPU benchmark's synthetic metagenome prepared with 500 bp chunks; the first
--frames protein frames in file order (whole chunks). Per variant: per frame, the cosine
between its mean embedding and fp32's and bf16's; virus scores and calls from a random
classifier of VirNucPro's shape on [DNABERT-S part, ESM-2 part] with a fixed random
DNABERT-S part, compared with bf16's: the largest virus-score difference, frames and chunks
whose call changed (a chunk is viral when its best virus score >= its best other score, as
summarize calls it; their own functions), and the same for fp32 against bf16: how far the
reference precision itself is from bf16. Speed: ESM-2 tokens/s of the product's embedder,
compiled as --compile compiles it, on --speed-frames shuffled frames. On the GPU, variants with
all four linears in FP8 and no "output" correction run models/fp8_kernels.py's fused kernels
(as --precision fp8 does); the others run models/fp8.py's op-by-op path. Weights are random:
real ones cannot be downloaded here, and a random classifier's calls are only a proxy for
the real one's.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_benchmark import compiled_graphs, sync, write_input  # noqa: E402

from virnucpro.classify import score, viral_frames  # noqa: E402
from virnucpro.embed import Esm2Embedder  # noqa: E402
from virnucpro.fasta import read_fasta  # noqa: E402
from virnucpro.models.classifier import MLPClassifier  # noqa: E402
from virnucpro.models.compile import compile_model  # noqa: E402
from virnucpro.models.esm2 import ESM2, ESM2Config  # noqa: E402
from virnucpro.models.fp8 import to_fp8  # noqa: E402
from virnucpro.models.tokenizers import tokenize_protein  # noqa: E402
from virnucpro.prepare import prepare  # noqa: E402
from virnucpro.summarize import chunk_calls  # noqa: E402

MLP = ("fc1", "fc2")
PLAIN = dict(fast_accumulation=False, mean_correction=None)
VARIANTS = {  # name: to_fp8 options; "speed": also timed compiled
    "fp8": dict(PLAIN),
    "fp8, fast accumulation": dict(PLAIN, fast_accumulation=True, speed=True),
    "fp8 MLP only": dict(PLAIN, linears=MLP),
    "fp8, weight mean correction": dict(PLAIN, mean_correction="weight"),
    "fp8, output mean correction": dict(PLAIN, mean_correction="output"),
    "fp8, weight mean correction, fast accumulation": dict(
        mean_correction="weight", fast_accumulation=True, speed=True
    ),
    "fp8, output mean correction, fast accumulation": dict(
        mean_correction="output", fast_accumulation=True, speed=True
    ),
    "fp8 MLP only, weight mean correction, fast accumulation": dict(
        linears=MLP, mean_correction="weight", fast_accumulation=True
    ),
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
    """The model, its LayerNorm gains given ``channels`` outliers, 20-100x, per norm."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            for norm in (layer.self_attn_layer_norm, layer.final_layer_norm):
                picked = torch.randperm(norm.weight.numel(), generator=gen)[:channels]
                factors = 20 + 80 * torch.rand(channels, generator=gen)
                norm.weight[picked.to(norm.weight.device)] *= factors.to(norm.weight.device)
    return model


def features(model: ESM2, tokens: list[list[int]], budget: int) -> torch.Tensor:
    with torch.inference_mode():
        return Esm2Embedder(model).queue(tokens, budget).gather()


def tokens_per_second(model: ESM2, tokens: list[list[int]], budget: int) -> dict:
    """Compiled as --compile compiles it, warmed up, then one timed pass."""
    compile_model(model)
    embedder = Esm2Embedder(model)
    with torch.inference_mode():
        embedder.queue(tokens[:512], budget).gather()
        embedder.queue(tokens[:509][::-1], budget).gather()  # padded batches too
        sync()
        graphs = compiled_graphs()
        started = time.perf_counter()
        embedder.queue(tokens, budget).gather()
        sync()
    seconds = time.perf_counter() - started
    return {"tokens_per_s": sum(map(len, tokens)) / seconds,
            "compiled_during_timing": compiled_graphs() - graphs}  # fmt: skip


def cosines(x: torch.Tensor, reference: torch.Tensor) -> dict:
    cosine = torch.nn.functional.cosine_similarity(x.double(), reference.double())
    return {"min": cosine.min().item(), "mean": cosine.mean().item()}


def compare_calls(scores: torch.Tensor, reference: torch.Tensor, frame_ids: list[str]) -> dict:
    """Frame and chunk calls changed from the reference's, by classify's and summarize's
    rules."""
    frames, ref_frames = viral_frames(scores.numpy()), viral_frames(reference.numpy())
    chunks = chunk_calls(frame_ids, scores.numpy())
    ref_chunks = chunk_calls(frame_ids, reference.numpy())
    return {"max_virus_score_diff": (scores[:, 1] - reference[:, 1]).abs().max().item(),
            "frame_calls_changed": int((frames != ref_frames).sum()),
            "chunk_calls_changed": sum(chunks[c] != ref_chunks[c] for c in chunks)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("fp8-results"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/virnucpro-fp8"))
    parser.add_argument("--sequences", type=int, default=4000)
    parser.add_argument("--frames", type=int, default=6000)
    parser.add_argument("--speed-frames", type=int, default=6000)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU")
    parser.add_argument("--weights", choices=("random", "outliers", "both"), default="both")
    parser.add_argument("--variants", nargs="*", help="names from VARIANTS (default: all)")
    parser.add_argument("--no-speed", action="store_true", help="agreement only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.tiny else "cuda"
    config = ESM2Config(2, 64, 4) if args.tiny else ESM2Config(36, 2560, 40)
    budget = 4096 if args.tiny else 65536
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    torch.backends.cudnn.allow_tf32 = False
    # each variant compiles the shared layer function again (its options are guarded on)
    torch._dynamo.config.recompile_limit = 64
    variants = {name: VARIANTS[name] for name in args.variants or VARIANTS}

    fasta = args.work / "input.fa"
    write_input(fasta, args.sequences, seed=1)
    prepare(fasta, 500, args.work, "input")
    records = list(read_fasta(args.work / "input.protein.faa", nucleotide=False))
    frames = records[: args.frames]
    while len(frames) > 1 and frames[-1].id[:-2] == records[len(frames)].id[:-2]:
        frames.pop()  # whole chunks only
    frame_ids = [r.id for r in frames]
    tokens = [tokenize_protein(r.sequence) for r in frames]
    shuffled = [tokenize_protein(r.sequence) for r in records]
    random.Random(0).shuffle(shuffled)
    speed = shuffled[: args.speed_frames]

    torch.manual_seed(0)
    classifier = MLPClassifier(768 + config.embed_dim).eval()
    with torch.no_grad():
        classifier.bn1.running_var.uniform_(0.5, 1.5)
    dna = torch.randn(len(frames), 768, generator=torch.Generator().manual_seed(2))

    results: dict = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                     "frames": len(frames), "chunks": len({i[:-2] for i in frame_ids}),
                     "tokens": sum(map(len, tokens)), "speed_frames": len(speed),
                     "speed_tokens": sum(map(len, speed)), "weights": {}}  # fmt: skip

    def save() -> None:
        (args.out / "fp8_variants.json").write_text(json.dumps(results, indent=2))

    model = random_model(config, device, seed=0)
    for weights in ("random", "outliers") if args.weights == "both" else (args.weights,):
        if weights == "outliers":
            model = with_outliers(model.float())
        reference = features(model, tokens, budget)
        model = model.to(torch.bfloat16)
        bf16 = features(model, tokens, budget)
        bf16_scores = score(classifier, torch.cat([dna, bf16.cpu()], 1))
        near = int(((bf16_scores[:, 1] - 0.5).abs() < 0.05).sum())
        rows = {"bf16": {"vs_fp32": cosines(bf16, reference), "frames_near_threshold": near}}
        # fp32's own calls against bf16's: no variant can be expected to change fewer
        fp32_scores = score(classifier, torch.cat([dna, reference.cpu()], 1))
        rows["fp32"] = compare_calls(fp32_scores, bf16_scores, frame_ids)
        results["weights"][weights] = rows
        if weights == "random" and not args.no_speed:
            rows["bf16"].update(tokens_per_second(copy.deepcopy(model), speed, budget))
        print(weights, "bf16", rows["bf16"], flush=True)
        for name, options in variants.items():
            options = {k: v for k, v in options.items() if k != "speed"}
            fp8 = to_fp8(copy.deepcopy(model), **options)
            x = features(fp8, tokens, budget)
            scores = score(classifier, torch.cat([dna, x.cpu()], 1))
            row = {"vs_fp32": cosines(x, reference), "vs_bf16": cosines(x, bf16),
                   **compare_calls(scores, bf16_scores, frame_ids)}  # fmt: skip
            if weights == "random" and VARIANTS[name].get("speed") and not args.no_speed:
                row.update(tokens_per_second(fp8, speed, budget))
            rows[name] = row
            del fp8
            print(weights, name, row, flush=True)
            save()
        if device == "cuda":
            torch.cuda.empty_cache()
    save()


if __name__ == "__main__":
    main()
