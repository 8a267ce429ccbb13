"""The Nextflow pipeline's gpu profile against `virnucpro predict`, same input, same GPU host.

    python benchmarks/pipeline_gpu.py --nextflow DIR/nextflow --out results/

Real-size random-weight models and the synthetic input of gpu_benchmark.py, cut into at least
8 shards. Runs `virnucpro predict` and `nextflow run . -profile gpu` (local executor, no
container) on the same input and shard size, while a sampler counts the processes holding
the GPU every 0.2 s; records both wall times, the trace's per-task times, on which device
each embedding task ran, and whether the two runs made the same calls.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import gpu_benchmark as bench

ROOT = Path(__file__).resolve().parents[1]


def virnucpro_on_path(work: Path) -> dict[str, str]:
    """An environment whose `virnucpro` runs this checkout (tasks call it by name)."""
    bin_dir = work / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    launcher = bin_dir / "virnucpro"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m virnucpro "$@"\n')
    launcher.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(ROOT / "src")
    env["NXF_ANSI_LOG"] = "false"
    return env


class GpuSampler(threading.Thread):
    """How many compute processes hold the GPU, sampled with nvidia-smi."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        query = ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"]
        while not self.stopped.is_set():
            out = subprocess.run(query, capture_output=True, text=True).stdout
            self.samples.append((time.time(), len([x for x in out.split() if x.strip()])))
            time.sleep(self.interval)

    def summary(self) -> dict:
        counts = [n for _, n in self.samples]
        busy = [n for n in counts if n > 0]
        total = max(len(counts), 1)
        return {"samples": len(counts), "max_processes": max(counts, default=0),
                "fraction_with_a_process": len(busy) / total,
                "fraction_with_two_or_more": sum(n >= 2 for n in counts) / total}  # fmt: skip


def timed(cmd: list[str], env: dict, cwd: Path, log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(log.read_text()[-6000:], flush=True)
        raise SystemExit(f"{cmd[:3]} exited {done.returncode}")
    return seconds


def seconds(text: str) -> float:
    """A trace duration ('1m 26s', '4.8s', '350ms', '1h 2m') in seconds."""
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    return sum(float(part.rstrip("mshd")) * units[part.lstrip("0123456789.")]
               for part in text.split())  # fmt: skip


def trace_summary(trace: Path) -> dict:
    """Per process: tasks, CPUs asked, sum and max of realtime (s), from the trace."""
    with open(trace, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    per = defaultdict(list)
    for row in rows:
        per[row["process"].split(":")[-1]].append(row)
    summary = {}
    for process, items in per.items():
        real = [seconds(r["realtime"]) for r in items]
        summary[process] = {"tasks": len(items), "status": sorted({r["status"] for r in items}),
                            "cpus": sorted({r["cpus"] for r in items}),
                            "realtime_sum_s": round(sum(real), 1),
                            "realtime_max_s": round(max(real), 1)}  # fmt: skip
    return summary


def calls(outdir: Path) -> tuple[list[list[str]], dict[str, float]]:
    rows = [
        line.split("\t") for line in (outdir / "virnucpro_summary.tsv").read_text().splitlines()
    ]
    frames = {}
    for line in (outdir / "prediction_results.txt").read_text().splitlines()[1:]:
        frame, _, _, score2 = line.split("\t")
        frames[frame] = float(score2)
    return [[r[0], r[-1]] for r in rows], frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nextflow", type=Path, required=True, help="the nextflow launcher")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnucpro-pipeline"))
    parser.add_argument("--sequences", type=int, default=8000)
    parser.add_argument("--shard-size", type=int, default=1_500_000)
    parser.add_argument("--precision", help="passed to both (default: theirs, auto)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    env = virnucpro_on_path(work)
    precision = ["--precision", args.precision] if args.precision else []
    t = time.perf_counter()
    fasta, _ = bench.write_models_and_input(work, args.sequences)
    models = work / "models"
    subprocess.run([sys.executable, "-m", "virnucpro", "models", "prepare", str(models)],
                   env=env, check=True)  # fmt: skip
    bases = sum(len(r.sequence) for r in bench.read_fasta(fasta))
    results: dict = {"date": time.strftime("%Y-%m-%d"), "gpu": bench.torch.cuda.get_device_name(0),
                     "setup_s": round(time.perf_counter() - t, 1), "shard_size": args.shard_size,
                     "input_bases": bases,
                     "precision": args.precision or "auto"}  # fmt: skip

    predict_out = work / "predict"
    shutil.rmtree(predict_out, ignore_errors=True)
    sampler = GpuSampler()
    sampler.start()
    results["predict_s"] = timed(
        [sys.executable, "-m", "virnucpro", "predict", str(fasta), "--models", str(models),
         "--outdir", str(predict_out), "--shard-size", str(args.shard_size), *precision],
        env, work, args.out / "predict.log")  # fmt: skip
    sampler.stopped.set()
    results["predict_gpu"] = sampler.summary()
    print(json.dumps(results), flush=True)

    launch = work / "nf"
    shutil.rmtree(launch, ignore_errors=True)
    launch.mkdir()
    sampler = GpuSampler()
    sampler.start()
    results["pipeline_s"] = timed(
        [str(args.nextflow.resolve()), "run", str(ROOT), "-profile", "gpu", "--input", str(fasta),
         "--models", str(models), "--shard_size", str(args.shard_size), "--outdir", "results",
         "--trace_report_suffix", "gpu", *precision],
        env, launch, args.out / "pipeline.log")  # fmt: skip
    sampler.stopped.set()
    results["pipeline_gpu"] = sampler.summary()
    results["pipeline_over_predict"] = round(results["pipeline_s"] / results["predict_s"], 2)

    sample = fasta.name.removesuffix(".fa")
    trace = launch / "results" / "pipeline_info" / "execution_trace_gpu.txt"
    shutil.copy(trace, args.out / "execution_trace_gpu.txt")
    results["tasks"] = trace_summary(trace)
    run = json.loads((launch / "results" / "pipeline_info" / f"run_{sample}.json").read_text())
    results["pipeline_devices"] = run["device"]
    results["pipeline_shards"] = run["shards"]
    ours, our_frames = calls(launch / "results" / sample)
    theirs, their_frames = calls(predict_out)
    results["same_sequence_calls"] = ours == theirs
    results["same_frames"] = our_frames.keys() == their_frames.keys()
    results["max_virus_score_difference"] = max(
        abs(our_frames[f] - their_frames[f]) for f in our_frames if f in their_frames
    )
    print(json.dumps(results, indent=2), flush=True)
    (args.out / "pipeline_gpu.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
