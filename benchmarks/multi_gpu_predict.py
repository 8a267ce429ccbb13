"""`virnucpro predict` on one GPU and on every GPU of the machine, same input: ESM-2 tokens
per second after the workers' load, the scaling, and how the shards spread.

    python benchmarks/multi_gpu_predict.py --out results/   # on a machine with 2+ GPUs

Same models (real-size, random weights) and input as gpu_benchmark.py, compiled, bf16.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gpu_benchmark as bench
import torch

from virnucpro.models.files import ModelPaths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnucpro-multi"))
    parser.add_argument("--sequences", type=int, default=8000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.workdir
    fasta, _ = bench.write_models_and_input(work, args.sequences)
    proteins = bench.read_fasta(work / "c500" / "input.protein.faa", nucleotide=False)
    esm_tokens = sum(len(r.sequence) + 2 for r in proteins)
    models = work / "models"
    paths = ModelPaths(models / "esm2_t36_3B_UR50D.pt", models / "dnabert-s",
                       models / "classifier_500.safetensors")  # fmt: skip
    every_gpu = ",".join(map(str, range(torch.cuda.device_count())))
    results = {"gpu": torch.cuda.get_device_name(0), "gpus": every_gpu, "esm_tokens": esm_tokens,
               "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    for gpus in ("0", every_gpu):
        results[f"gpus_{gpus}"] = bench.predict_run(fasta, work, paths, True, esm_tokens, gpus)
        print(json.dumps(results[f"gpus_{gpus}"]), flush=True)
    one, every = results["gpus_0"], results[f"gpus_{every_gpu}"]
    ratio = every["esm_tokens_per_s_after_load"] / one["esm_tokens_per_s_after_load"]
    print(f"GPUs {every_gpu}: {every['esm_tokens_per_s_after_load']:,.0f} ESM-2 tokens/s after "
          f"the load = {ratio:.2f}x one GPU ({one['esm_tokens_per_s_after_load']:,.0f}); whole "
          f"command {every['stages']['total']:.1f} s against "
          f"{one['stages']['total']:.1f} s")  # fmt: skip
    (args.out / "multi_gpu_predict.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
