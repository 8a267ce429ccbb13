"""GPU benchmark: ESM-2 3B / DNABERT-S / predict throughput with anchors, in one run.

Real-size random-weight models (cost does not depend on the values), synthetic coding-rich
input of mixed lengths. Prints one table; writes results.json under --out.

    python benchmarks/gpu_benchmark.py --out results/   # on a CUDA machine with fair-esm

Anchors measured in the same run: the bf16 matmul peak, fair-esm fp32 at 2,048 tokens per
batch (the original VirNucPro settings) and fair-esm bf16 at 2,048 and 32,768 tokens.
"""

from __future__ import annotations

import argparse
import argparse as _argparse
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from synthetic import synthetic_sequence  # noqa: E402

from virnucpro.classify import score  # noqa: E402
from virnucpro.embed import Esm2Embedder, embed_file, load_embedder  # noqa: E402
from virnucpro.fasta import read_fasta  # noqa: E402
from virnucpro.features import read_features  # noqa: E402
from virnucpro.models.classifier import MLPClassifier, write_classifier  # noqa: E402
from virnucpro.models.demo import write_demo_dnabert, write_demo_esm2  # noqa: E402
from virnucpro.models.dnabert import DnaBert  # noqa: E402
from virnucpro.models.files import ModelPaths, prepare_models  # noqa: E402
from virnucpro.models.load import dnabert_hf_name, load_esm2, read_dnabert_config  # noqa: E402
from virnucpro.models.tokenizers import tokenize_protein  # noqa: E402
from virnucpro.prepare import prepare  # noqa: E402

ESM_3B = {"layers": 36, "dim": 2560, "heads": 40}
FLOP_PER_TOKEN_3B = 2 * 2.84e9  # 2 x parameters (matmuls); attention adds ~3% at 170 tokens


def sync() -> None:
    if torch.cuda.is_available():  # fp8_probe.py --tiny runs on the CPU
        torch.cuda.synchronize()


def matmul_peak() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(True), torch.cuda.Event(True)
        start.record()
        a @ b
        end.record()
        sync()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * 8192**3 / times[len(times) // 2] / 1e12


def write_esm2_3b(path: Path) -> None:
    """A fair-esm hub-format checkpoint of ESM-2 3B's shapes, fp16 like the hub file."""
    layers, dim, heads = ESM_3B["layers"], ESM_3B["dim"], ESM_3B["heads"]
    write_demo_esm2(path, 0, layers, dim, heads, dtype=torch.float16, device="cuda")


def write_dnabert_s(directory: Path, training_fasta: Path) -> None:
    """DNABERT-S shapes (12 x 768, vocab 4096) with a BPE tokenizer trained on the input."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    write_demo_dnabert(directory)  # published config keys and file layout
    config = json.loads((directory / "config.json").read_text())
    config.update(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        vocab_size=4096,
    )
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=specials, show_progress=False)
    sequences = [r.sequence.upper() for r in read_fasta(training_fasta)][:2000]
    tokenizer.train_from_iterator(sequences, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    cfg = read_dnabert_config(directory / "config.json")
    torch.manual_seed(0)
    model = DnaBert(cfg)
    # the published key names, as the loader reads them
    hf = {dnabert_hf_name(k): v for k, v in model.state_dict().items()}
    state = {k: (torch.randn_like(v) * 0.02 + (1.0 if "LayerNorm.weight" in k else 0.0))
             for k, v in hf.items()}  # fmt: skip
    save_file(state, str(directory / "model.safetensors"))


def write_input(path: Path, sequences: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(sequences):
            length = rng.randint(300, 3000)
            seq = synthetic_sequence(rng, length, rng.random() < 0.9)
            out.write(f">s{i}\n{seq}\n")


def write_models_and_input(work: Path, sequences: int) -> tuple[Path, MLPClassifier]:
    """The benchmark input (work/input.fa, prepared with 500 and 300 bp chunks in work/c500
    and work/c300) and the real-size random-weight models in work/models; returns the input
    and the classifier."""
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    esm_path = models / "esm2_t36_3B_UR50D.pt"
    fasta = work / "input.fa"
    write_input(fasta, sequences, seed=1)
    if not esm_path.exists():
        write_esm2_3b(esm_path)
    write_dnabert_s(models / "dnabert-s", fasta)
    torch.manual_seed(0)
    classifier = MLPClassifier(768 + 2560).eval()
    with torch.no_grad():
        classifier.bn1.running_var.uniform_(0.5, 1.5)
    write_classifier(classifier, models / "classifier_500.safetensors")
    write_classifier(classifier, models / "classifier_300.safetensors")
    for size in (500, 300):
        prepare(fasta, size, work / f"c{size}", "input")
    # as `models fetch` leaves a models directory: checksums and the ESM-2 load copy made
    # once, so a run neither hashes 5.7 GB nor converts the checkpoint
    prepare_models(models)
    return fasta, classifier


def load_fair_esm(path: Path):
    import esm

    # the hub files hold argparse.Namespace; torch's weights_only default needs it allowlisted
    with torch.serialization.safe_globals([_argparse.Namespace]):
        return esm.pretrained.load_model_and_alphabet_local(str(path))


def fair_esm_throughput(path: Path, proteins: list[str], dtype, toks_per_batch: int) -> dict:
    """fair-esm's own model and batching (FastaBatchedDataset.get_batch_indices), timed."""
    import esm

    model, alphabet = load_fair_esm(path)
    model = model.to("cuda", dtype).eval()
    converter = alphabet.get_batch_converter()
    dataset = esm.FastaBatchedDataset([str(i) for i in range(len(proteins))], proteins)
    batches = dataset.get_batch_indices(toks_per_batch, extra_toks_per_seq=1)
    layer = model.num_layers
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        _, _, toks = converter([dataset[i] for i in batches[0]])
        model(toks.cuda(), repr_layers=[layer])  # warm-up
        sync()
        started = time.perf_counter()
        for batch in batches:
            labels, strs, toks = converter([dataset[i] for i in batch])
            out = model(toks.cuda(non_blocking=True), repr_layers=[layer])["representations"]
            reps = out[layer]
            means = [reps[i, 1 : len(s) + 1].float().mean(0) for i, s in enumerate(strs)]
            torch.stack(means).cpu()
        sync()
        seconds = time.perf_counter() - started
    tokens = sum(len(p) + 2 for p in proteins)
    del model
    torch.cuda.empty_cache()
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens,
            "sequences": len(proteins),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip


def product_embed(loaded, faa: Path, outdir: Path, batch: int | None) -> dict:
    torch.cuda.reset_peak_memory_stats()
    sync()
    started = time.perf_counter()
    out = embed_file(loaded, faa, outdir, batch, show_progress=False)
    seconds = time.perf_counter() - started
    info = json.loads(read_features(out)[2]["info"])
    return {"tokens_per_s": info["tokens"] / seconds, "seconds": seconds,
            "tokens": info["tokens"], "sequences": info["frames"],
            "batch_tokens": info["batch_tokens"], "read_s": info["read_seconds"],
            "embed_s": info["embed_seconds"], "load_s": info["load_seconds"],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "path": str(out)}  # fmt: skip


def uniform_batches(loaded, length: int = 168, rows: int = 390, repeats: int = 8) -> dict:
    """The model alone on ready-made uniform batches (no reading, tokenizing, batch planning
    or padding): the setting of the issue's bare layer-stack probe, as an anchor for how much
    the product path adds."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 24, (rows, length), generator=gen)
    ids[:, 0], ids[:, -1] = 0, 2  # BOS ... EOS
    batch = ids.tolist()
    with torch.inference_mode():
        loaded.run(batch)
        sync()
        started = time.perf_counter()
        for _ in range(repeats):
            loaded.run(batch)
        sync()
    seconds = time.perf_counter() - started
    return {"tokens_per_s": repeats * rows * length / seconds, "seconds": seconds,
            "tokens": repeats * rows * length, "sequences": repeats * rows,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process: equal before and after a timed run
    means nothing was compiled during it."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def predict_run(
    fasta: Path,
    work: Path,
    paths,
    use_compile: bool,
    esm_tokens: int,
    gpus: str | None = None,
    precision: str = "bf16",
) -> dict:
    """`predict` end to end (FASTA in, summary out) in this process's workers, on the GPUs
    listed (default: all)."""
    from virnucpro.predict import predict

    shutil.rmtree(work / "predict", ignore_errors=True)
    run = predict(fasta, work / "predict", paths, device="cuda", precision=precision,
                  compile=use_compile, gpus=gpus)  # fmt: skip
    record = json.loads(run.outputs["run"].read_text())
    wall = record["wall_seconds"]
    after_ready = wall["total"] - wall["workers_ready"]
    per_shard = record["shard_seconds"].values()
    shard_sums = {key: round(sum(s.get(key, 0) for s in per_shard), 2) for key in
                  ("prepare", "gpu_waited", "embed-dna", "embed-protein", "finish",
                   "device_idle")}  # fmt: skip
    devices = Counter(s["device"] for s in per_shard)
    return {"compiled": use_compile, "precision": precision, "stages": wall,
            "shard_sums": shard_sums,
            "shards": len(record["shard_seconds"]), "shards_per_device": dict(devices),
            "esm_tokens_per_s": esm_tokens / wall["total"],
            "esm_tokens_per_s_after_load": esm_tokens / after_ready}  # fmt: skip


def cli_embed(*args: str, output: Path) -> tuple[float, dict]:
    """`virnucpro -q ARGS` (an embed stage) in a fresh process: its wall time and the
    ``info`` record of the feature file it writes to ``output``."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "virnucpro", "-q", *args], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
    wall = time.perf_counter() - started
    return wall, json.loads(read_features(output)[2]["info"])


def cli_start_up(esm_path: Path, faa: Path, outdir: Path) -> dict:
    """Wall time and model load of `virnucpro embed-protein` in a fresh process."""
    output = outdir / faa.name.replace(".protein.faa", ".esm2.safetensors")
    wall, info = cli_embed("embed-protein", str(faa), "--esm-model", str(esm_path),
                           "--device", "cuda", "--outdir", str(outdir), output=output)  # fmt: skip
    return {"wall_s": wall, "load_s": info["load_seconds"]}


def fp8_against_bf16(
    esm_path: Path, faa: dict[int, Path], fasta: Path, paths: ModelPaths, work: Path, report
) -> dict:
    """--fp8: ESM-2 compiled in bf16 and in fp8 on the 500 and 300 bp inputs, then predict
    --compile in each precision, all in this one run; the precision order alternates."""
    results: dict = {}
    for precision in ("bf16", "fp8"):
        loaded = load_embedder("esm2", esm_path, "cuda:0", precision, compile=True)
        graphs = compiled_graphs()
        for size in (500, 300):
            key = f"{precision}_esm_{size}_compiled"
            results[key] = product_embed(loaded, faa[size], work / f"c{size}", None)
            report(key, results[key])
        results[f"{precision}_recompiles_in_timed_runs"] = compiled_graphs() - graphs
        del loaded
        # load_embedder froze the model out of the collector's reach (gc.freeze), and the
        # compiled methods hold it in a cycle: unfreeze so that it is freed before the next
        gc.unfreeze()
        gc.collect()
        torch.cuda.empty_cache()
    esm_tokens = results["bf16_esm_500_compiled"]["tokens"]
    for precision in ("fp8", "bf16"):
        results[f"predict_{precision}"] = predict_run(fasta, work, paths, True, esm_tokens,
                                                      precision=precision)  # fmt: skip
        report(f"predict {precision}", results[f"predict_{precision}"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnucpro-bench"))
    parser.add_argument("--sequences", type=int, default=4000)
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the compiled models (ESM-2 500 bp, DNABERT-S) and predict",
    )
    parser.add_argument(
        "--fp8",
        action="store_true",
        help="only ESM-2 compiled in bf16 and in fp8 (500 and 300 bp) and predict in each",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }

    def report(*parts: object) -> None:
        """Print a result and save everything so far: a run cut short keeps what it had."""
        print(*parts, flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))

    t = time.perf_counter()
    results["matmul_tflops"] = matmul_peak()
    report(f"matmul bf16 peak {results['matmul_tflops']:.0f} TFLOP/s")

    fasta, classifier = write_models_and_input(work, args.sequences)
    models = work / "models"
    esm_path = models / "esm2_t36_3B_UR50D.pt"
    report(f"setup {time.perf_counter() - t:.0f} s")

    faa500 = work / "c500" / "input.protein.faa"
    proteins = [r.sequence for r in read_fasta(faa500, nucleotide=False)]
    rng = random.Random(0)
    sample = rng.sample(proteins, len(proteins))

    # start-up of a fresh `virnucpro embed-protein` (first run writes the load cache)
    small = work / "small.protein.faa"
    small.write_text("".join(f">p{i}\n{p}\n" for i, p in enumerate(sample[:64])))
    nuc = work / "c500" / "input.nucleotide.fa"
    paths = ModelPaths(esm_path, models / "dnabert-s", models / "classifier_500.safetensors")
    faa = {size: work / f"c{size}" / "input.protein.faa" for size in (500, 300)}
    if args.fp8:
        results.update(fp8_against_bf16(esm_path, faa, fasta, paths, work, report))
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        return
    if args.quick:
        compiled = load_embedder("esm2", esm_path, "cuda:0", "bf16", compile=True)
        graphs = compiled_graphs()
        results["ours_esm_500_compiled"] = product_embed(compiled, faa[500], work / "c500", None)
        report("ESM-2 500 bp compiled", results["ours_esm_500_compiled"])
        del compiled
        torch.cuda.empty_cache()
        results["recompiles_in_timed_runs"] = compiled_graphs() - graphs
        dna_model = load_embedder("dnabert", models / "dnabert-s", "cuda:0", "bf16", compile=True)
        graphs = compiled_graphs()  # DNABERT-S's graphs are made at its load
        results["ours_dnabert_500_compiled"] = product_embed(dna_model, nuc, work / "c500", None)
        report("DNABERT-S compiled", results["ours_dnabert_500_compiled"])
        again = product_embed(dna_model, nuc, work / "c500", None)  # as in the full run
        results["ours_dnabert_500_compiled_again"] = again
        report("DNABERT-S compiled, again", results["ours_dnabert_500_compiled_again"])
        results["recompiles_in_timed_runs"] += compiled_graphs() - graphs
        del dna_model
        torch.cuda.empty_cache()
        esm_tokens = results["ours_esm_500_compiled"]["tokens"]
        results["predict"] = predict_run(fasta, work, paths, True, esm_tokens)
        report("predict", results["predict"])
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        return

    results["startup_first"] = cli_start_up(esm_path, small, work)
    results["startup_cached"] = cli_start_up(esm_path, small, work)
    report(f"start-up {results['startup_first']} then {results['startup_cached']}")

    # anchors: fair-esm
    results["fair_esm_fp32_2048"] = fair_esm_throughput(esm_path, sample[:400], torch.float32,
                                                        2048)  # fmt: skip
    report("fair-esm fp32 2048", results["fair_esm_fp32_2048"])
    for toks in (2048, 32768):
        key = f"fair_esm_bf16_{toks}"
        results[key] = fair_esm_throughput(esm_path, sample[:3000], torch.bfloat16, toks)
        report(key, results[key])

    # ours: the product path, eager
    check = sample[:256]  # frames for the correctness checks
    tokens = [tokenize_protein(p) for p in check]

    def means(model) -> torch.Tensor:
        embedder = Esm2Embedder(model)
        return torch.cat([embedder.run(tokens[i : i + 64]).cpu()
                          for i in range(0, len(tokens), 64)])  # fmt: skip

    loaded = load_embedder("esm2", esm_path, "cuda:0", "bf16")
    for size in (500, 300):
        product_embed(loaded, small, work, None)  # warm-up
        results[f"ours_esm_{size}"] = product_embed(loaded, faa[size], work / f"c{size}", None)
        report(f"ours {size}", results[f"ours_esm_{size}"])
    bf16 = means(loaded.model)
    del loaded
    torch.cuda.empty_cache()

    # the same with compiled layers (compiled and warmed up in load_embedder)
    compiled = load_embedder("esm2", esm_path, "cuda:0", "bf16", compile=True)
    results["esm_compile_load_s"] = compiled.load_seconds
    graphs = compiled_graphs()
    for size in (500, 300):
        key = f"ours_esm_{size}_compiled"
        results[key] = product_embed(compiled, faa[size], work / f"c{size}", None)
        report(f"ours {size} compiled", results[key])
    bf16_compiled = means(compiled.model)
    results["recompiles_in_timed_runs"] = compiled_graphs() - graphs
    results["uniform_168_compiled"] = uniform_batches(compiled)
    report("uniform batches compiled", results["uniform_168_compiled"])
    del compiled
    torch.cuda.empty_cache()

    # correctness on the 3B shapes: bf16 vs fp32 features and scores; fp32 vs fair-esm;
    # compiled vs eager (both bf16)
    fp32_model = load_esm2(esm_path, "cuda", torch.float32)
    fp32 = means(fp32_model)
    del fp32_model
    torch.cuda.empty_cache()
    ref_model, alphabet = load_fair_esm(esm_path)
    ref_model = ref_model.cuda().float().eval()
    converter = alphabet.get_batch_converter()
    ref = []
    with torch.inference_mode():
        for i in range(0, len(check), 64):
            _, strs, toks = converter([(str(j), p) for j, p in enumerate(check[i : i + 64])])
            reps = ref_model(toks.cuda(), repr_layers=[36])["representations"][36]
            ref += [reps[k, 1 : len(s) + 1].float().mean(0).cpu() for k, s in enumerate(strs)]
    ref = torch.stack(ref)
    del ref_model
    torch.cuda.empty_cache()
    dna = torch.randn(len(check), 768)
    p32 = score(classifier, torch.cat([dna, fp32], 1))[:, 1]
    p16 = score(classifier, torch.cat([dna, bf16], 1))[:, 1]
    p16c = score(classifier, torch.cat([dna, bf16_compiled], 1))[:, 1]
    results["correctness"] = {
        "fp32_vs_fair_esm_max_abs": (fp32 - ref).abs().max().item(),
        "bf16_vs_fp32_max_abs": (bf16 - fp32).abs().max().item(),
        "bf16_vs_fp32_min_cosine": torch.cosine_similarity(bf16, fp32).min().item(),
        "scores_bf16_vs_fp32_max_abs": (p16 - p32).abs().max().item(),
        "calls_changed": int(((p16 > 0.5) != (p32 > 0.5)).sum()),
        "compiled_vs_eager_bf16_max_abs": (bf16_compiled - bf16).abs().max().item(),
        "compiled_vs_eager_bf16_min_cosine":
            torch.cosine_similarity(bf16_compiled, bf16).min().item(),
        "compiled_vs_fp32_min_cosine": torch.cosine_similarity(bf16_compiled, fp32).min().item(),
        "scores_compiled_vs_fp32_max_abs": (p16c - p32).abs().max().item(),
        "calls_changed_compiled": int(((p16c > 0.5) != (p32 > 0.5)).sum()),
        "frames": len(check),
    }  # fmt: skip
    report("correctness", results["correctness"])

    # DNABERT-S, eager then compiled
    dna_model = load_embedder("dnabert", models / "dnabert-s", "cuda:0", "bf16")
    product_embed(dna_model, nuc, work / "c500", None)  # warm-up
    results["ours_dnabert_500"] = product_embed(dna_model, nuc, work / "c500", None)
    report("dnabert", results["ours_dnabert_500"])
    dna_eager = read_features(Path(results["ours_dnabert_500"]["path"]))[1]
    del dna_model
    dna_model = load_embedder("dnabert", models / "dnabert-s", "cuda:0", "bf16", compile=True)
    results["dnabert_compile_load_s"] = dna_model.load_seconds
    graphs = compiled_graphs()
    results["ours_dnabert_500_compiled"] = product_embed(dna_model, nuc, work / "c500", None)
    report("dnabert compiled", results["ours_dnabert_500_compiled"])
    # the compiled encoder against the eager one, both bf16, as written (float16 features)
    dna_compiled = read_features(Path(results["ours_dnabert_500_compiled"]["path"]))[1]
    results["correctness"]["dnabert_compiled_vs_eager_max_abs"] = (
        (dna_compiled - dna_eager).abs().max().item()
    )
    results["correctness"]["dnabert_compiled_vs_eager_min_cosine"] = (
        torch.cosine_similarity(dna_compiled, dna_eager).min().item()
    )
    # a second pass, timed as the eager row is (after an untimed one): the first pass after
    # load also pays cuBLAS's choice of a kernel per new matrix shape (README, run 21)
    results["ours_dnabert_500_compiled_again"] = product_embed(dna_model, nuc, work / "c500", None)
    results["recompiles_in_timed_runs"] += compiled_graphs() - graphs
    report("dnabert compiled, again", results["ours_dnabert_500_compiled_again"])
    del dna_model
    torch.cuda.empty_cache()

    if not args.skip_predict:
        use_compile = (
            results["ours_esm_500_compiled"]["tokens_per_s"]
            > results["ours_esm_500"]["tokens_per_s"]
        )
        esm_tokens = results["ours_esm_500"]["tokens"]
        results["predict"] = predict_run(fasta, work, paths, use_compile, esm_tokens)
        report("predict", results["predict"])

    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(r: dict) -> None:
    ceiling = r["matmul_tflops"] * 1e12 / FLOP_PER_TOKEN_3B
    rows = [("fair-esm fp32, 2,048 tok/batch (original)", r["fair_esm_fp32_2048"]),
            ("fair-esm bf16, 2,048 tok/batch", r["fair_esm_bf16_2048"]),
            ("fair-esm bf16, 32,768 tok/batch", r["fair_esm_bf16_32768"]),
            ("virnucpro embed-protein, 500 bp frames", r["ours_esm_500"]),
            ("virnucpro embed-protein, 300 bp frames", r["ours_esm_300"]),
            ("  the same, compiled layers, 500 bp", r["ours_esm_500_compiled"]),
            ("  the same, compiled layers, 300 bp", r["ours_esm_300_compiled"]),
            ("  compiled model alone, uniform 168 tokens", r["uniform_168_compiled"])]  # fmt: skip
    base = r["fair_esm_fp32_2048"]["tokens_per_s"]
    best = max(r[f"fair_esm_bf16_{n}"]["tokens_per_s"] for n in (2048, 32768))  # its best batch
    print(f"\n{r['gpu']}, torch {r['torch']}, {r['date']}")
    print(f"bf16 matmul peak {r['matmul_tflops']:.0f} TFLOP/s -> ESM-2 3B ceiling "
          f"{ceiling:,.0f} tokens/s")  # fmt: skip
    print(f"{'ESM-2 3B':44} {'tokens/s':>9} {'seq/s':>7} {'%peak':>6} {'xorig':>6} "
          f"{'xbf16':>6} {'GiB':>5}")  # fmt: skip
    for name, m in rows:
        tps = m["tokens_per_s"]
        print(f"{name:44} {tps:9,.0f} {m['sequences'] / m['seconds']:7,.0f} "
              f"{100 * tps / ceiling:5.1f}% {tps / base:6.2f} {tps / best:6.2f} "
              f"{m['peak_gib']:5.1f}")  # fmt: skip
    for name, key in (
        ("virnucpro embed-dna (DNABERT-S), 500 bp", "ours_dnabert_500"),
        ("  the same, compiled, first pass after load", "ours_dnabert_500_compiled"),
        ("  the same, compiled, second pass", "ours_dnabert_500_compiled_again"),
    ):
        d = r[key]
        print(f"{name:44} {d['tokens_per_s']:9,.0f} {d['sequences'] / d['seconds']:7,.0f}"
              f"   (first chunk read + tokenized {d['read_s']:.2f} s, the rest beside "
              f"the model {d['embed_s']:.2f} s)")  # fmt: skip
    for key in ("ours_esm_500", "ours_esm_500_compiled"):
        d = r[key]
        print(f"{key}: read+tokenize {d['read_s']:.2f} s, model {d['embed_s']:.2f} s, "
              f"all {d['seconds']:.2f} s")  # fmt: skip
    if "predict" in r:
        p = r["predict"]
        stage = r["ours_esm_500_compiled" if p["compiled"] else "ours_esm_500"]["tokens_per_s"]
        print(f"predict end to end, ESM tokens/s: {p['esm_tokens_per_s']:,.0f} = "
              f"{100 * p['esm_tokens_per_s'] / stage:.0f}% of the ESM stage; after the "
              f"workers' load {p['esm_tokens_per_s_after_load']:,.0f} = "
              f"{100 * p['esm_tokens_per_s_after_load'] / stage:.0f}%; {p['stages']}; "
              f"summed over {p['shards']} shards: {p['shard_sums']}")  # fmt: skip
    print(f"start-up embed-protein: first {r['startup_first']['load_s']:.1f} s load "
          f"({r['startup_first']['wall_s']:.1f} s wall), cached "
          f"{r['startup_cached']['load_s']:.1f} s load ({r['startup_cached']['wall_s']:.1f} s "
          "wall)")  # fmt: skip
    print(f"load with compile + warm-up: ESM-2 {r['esm_compile_load_s']:.0f} s, DNABERT-S "
          f"{r['dnabert_compile_load_s']:.0f} s; graphs compiled during timed runs: "
          f"{r['recompiles_in_timed_runs']}")  # fmt: skip
    print("correctness:", json.dumps(r["correctness"]))


if __name__ == "__main__":
    main()
