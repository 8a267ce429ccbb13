"""CPU benchmark: the stages on 10,000 synthetic 500 bp coding sequences, demo models.

Each stage runs as its own `virnucpro` process, so its wall time and peak memory (max RSS,
from wait4) are its own; then `virnucpro predict` runs the whole thing in one process.

    python benchmarks/cpu_benchmark.py            # prints a Markdown table
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VIRNUCPRO = Path(sys.executable).parent / "virnucpro"


def timed(*args: object) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one virnucpro command."""
    started = time.perf_counter()
    process = subprocess.Popen([str(VIRNUCPRO), "-q", *map(str, args)])
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: virnucpro {' '.join(map(str, args))}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=10_000)
    parser.add_argument("--length", type=int, default=500)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="virnucpro-cpu-bench-"))
    try:
        fasta = work / "input.fa"
        with open(fasta, "w") as out:
            subprocess.run(
                [sys.executable, str(HERE / "synthetic.py"), "--sequences", str(args.sequences),
                 "--length", str(args.length), "--coding-fraction", "1.0", "--seed", "1"],
                stdout=out, check=True,
            )  # fmt: skip
        models = work / "models"
        rows = []

        def stage(name: str, *command: object) -> None:
            rows.append((name, *timed(*command)))

        cpu = ("--models", models, "--device", "cpu", "--outdir", work)
        stage("models demo", "models", "demo", models)
        stage("split", "split", fasta, "--outdir", work / "shards")
        shard = sorted((work / "shards").glob("shard_*.fa"))[0]
        stage("prepare", "prepare", shard, "--outdir", work, "--prefix", "s")
        stage("embed-dna", "embed-dna", work / "s.nucleotide.fa", *cpu)
        stage("embed-protein", "embed-protein", work / "s.protein.faa", *cpu)
        features = (work / "s.dnabert.safetensors", work / "s.esm2.safetensors")
        stage("classify", "classify", *features, "--models", models, "--outdir", work)
        shard_files = [
            work / f"s.{kind}" for kind in ("sequences.tsv", "scores.tsv", "scores.json")
        ]
        stage("summarize", "summarize", "--outdir", work / "summary", *shard_files)
        stage("predict (all stages, 1 worker)", "predict", fasta, "--models", models,
              "--device", "cpu", "--outdir", work / "predict")  # fmt: skip
        frames = sum(1 for line in open(work / "s.protein.faa") if line.startswith(">"))
        print(f"\n{args.sequences} x {args.length} bp synthetic coding sequences -> {frames} "
              f"kept frames; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}\n")  # fmt: skip
        print("| stage | wall (s) | peak RSS (MiB) |\n|---|---|---|")
        for name, wall, rss in rows:
            print(f"| {name} | {wall:.1f} | {rss:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
