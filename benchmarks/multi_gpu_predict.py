"""`virnucpro predict` on one GPU and on every GPU of the machine, same input: ESM-2 tokens
per second after the workers' load, the scaling, and how the shards spread.

    python benchmarks/multi_gpu_predict.py --out results/   # on a machine with 2+ GPUs

Same models (real-size, random weights) and input as gpu_benchmark.py, compiled, bf16.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import gpu_benchmark as bench
import torch

from virnucpro.models.files import ModelPaths
from virnucpro.predict import predict


def run(fasta: Path, outdir: Path, paths: ModelPaths, gpus: str, esm_tokens: int) -> dict:
    shutil.rmtree(outdir, ignore_errors=True)
    result = predict(fasta, outdir, paths, device="cuda", precision="bf16", compile=True,
                     gpus=gpus)  # fmt: skip
    record = json.loads(result.outputs["run"].read_text())
    wall = record["wall_seconds"]
    devices = Counter(stats["device"] for stats in record["shard_seconds"].values())
    return {"gpus": gpus, "wall": wall, "shards_per_device": dict(devices),
            "esm_tokens_per_s_after_load": esm_tokens / (wall["total"] - wall["workers_ready"]),
            "esm_tokens_per_s": esm_tokens / wall["total"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnucpro-multi"))
    parser.add_argument("--sequences", type=int, default=8000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.workdir
    (work / "models").mkdir(parents=True, exist_ok=True)
    fasta, esm_path = work / "input.fa", work / "models" / "esm2_t36_3B_UR50D.pt"
    bench.write_input(fasta, args.sequences, seed=1)
    bench.write_esm2_3b(esm_path)
    bench.write_dnabert_s(work / "models" / "dnabert-s", fasta)
    torch.manual_seed(0)
    bench.write_classifier(bench.MLPClassifier(768 + 2560).eval(),
                           work / "models" / "classifier_500.safetensors")  # fmt: skip
    bench.prepare(fasta, 500, work / "c500", "input")
    proteins = bench.read_fasta(work / "c500" / "input.protein.faa", nucleotide=False)
    esm_tokens = sum(len(r.sequence) + 2 for r in proteins)
    bench.sha256(esm_path)  # the checksum (cached beside the model) is not what we time
    paths = ModelPaths(esm_path, work / "models" / "dnabert-s",
                       work / "models" / "classifier_500.safetensors")  # fmt: skip
    count = torch.cuda.device_count()
    results = {"gpu": torch.cuda.get_device_name(0), "gpus": count, "esm_tokens": esm_tokens,
               "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    for gpus in ("0", ",".join(map(str, range(count)))):
        results[f"gpus_{gpus}"] = run(fasta, work / f"out_{gpus}", paths, gpus, esm_tokens)
        print(json.dumps(results[f"gpus_{gpus}"]), flush=True)
    one, every = results["gpus_0"], results[f"gpus_{','.join(map(str, range(count)))}"]
    ratio = every["esm_tokens_per_s_after_load"] / one["esm_tokens_per_s_after_load"]
    print(f"{count} GPUs: {every['esm_tokens_per_s_after_load']:,.0f} ESM-2 tokens/s after the "
          f"load = {ratio:.2f}x one GPU ({one['esm_tokens_per_s_after_load']:,.0f}); whole "
          f"command {every['wall']['total']:.1f} s against "
          f"{one['wall']['total']:.1f} s")  # fmt: skip
    (args.out / "multi_gpu_predict.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
