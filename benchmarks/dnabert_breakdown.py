"""Where `virnucpro embed-dna` spends its time on the GPU: tokenizing, the model alone on
ready token lists (per batch budget, packed or one-length batches), and the product path,
on the benchmark input and on a default-size shard (the work of one pipeline task); then
the product path's timeline: each batch's launch and run, and the GPU's idle gaps; last,
`virnucpro embed-dna --compile` in fresh processes (a pass that is the process's first).

    python benchmarks/dnabert_breakdown.py --out results/   # on a CUDA machine

Same input and model shapes as gpu_benchmark.py (DNABERT-S 12 x 768, BPE vocabulary 4096,
random weights; the 500 bp frames of 4,000 synthetic sequences), compiled layers, bf16.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gpu_benchmark as bench
import torch

import virnucpro.embed as embed
from virnucpro.embed import embed_file, queue_tokens
from virnucpro.progress import StageProgress
from virnucpro.split import DEFAULT_SHARD_SIZE


def timed(run, *args) -> float:
    bench.sync()
    started = time.perf_counter()
    run(*args)
    bench.sync()
    return time.perf_counter() - started


def product_timeline(model, nucleotide: Path, outdir: Path) -> dict:
    """One `embed_file` pass with every batch's launch (host clock) and run (GPU clock, CUDA
    events) and every chunk's tokenizing recorded: where the GPU sat idle, and whether the
    host had launched the next batch by then. Times in ms from the pass's start."""
    batches: list[tuple] = []
    tokenized: list[tuple] = []
    written: list[float] = []
    run, tokenize, writer_class = model.run, model.tokenize, embed.FeatureWriter

    def timed_run(tokens: list[list[int]]) -> torch.Tensor:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        launched = time.perf_counter()
        start.record()
        out = run(tokens)
        end.record()
        batches.append((launched, time.perf_counter(), start, end, len(tokens)))
        return out

    def timed_tokenize(sequences: list[str]) -> list[list[int]]:
        began = time.perf_counter()
        ids = tokenize(sequences)
        tokenized.append((began, time.perf_counter(), len(sequences)))
        return ids

    class TimedWriter(writer_class):  # rows are written as blocks finish, then the IDs
        def append(self, *args, **kwargs) -> None:
            written.append(time.perf_counter())
            super().append(*args, **kwargs)
            written.append(time.perf_counter())

        def finish(self, *args, **kwargs) -> Path:
            written.append(time.perf_counter())
            path = super().finish(*args, **kwargs)
            written.append(time.perf_counter())
            return path

    model.run, model.tokenize = timed_run, timed_tokenize  # instance attributes shadow methods
    embed.FeatureWriter = TimedWriter
    try:
        bench.sync()
        origin = torch.cuda.Event(enable_timing=True)
        origin.record()
        bench.sync()
        t0 = time.perf_counter()
        embed_file(model, nucleotide, outdir, None, show_progress=False)
        bench.sync()
        total = time.perf_counter() - t0
    finally:
        del model.run, model.tokenize
        embed.FeatureWriter = writer_class

    def ms(host: float) -> float:
        return round(1000 * (host - t0), 2)

    rows = [{"rows": n, "host_launch": ms(a), "host_launched": ms(b),
             "gpu_start": round(origin.elapsed_time(start), 2),
             "gpu_end": round(origin.elapsed_time(end), 2)}
            for a, b, start, end, n in batches]  # fmt: skip
    gaps = [
        {"before_batch": i, "idle_ms": round(row["gpu_start"] - rows[i - 1]["gpu_end"], 2),
         "host_launched_after_gpu_ran_dry": row["host_launch"] > rows[i - 1]["gpu_end"],
         "previous_launch_ms": round(rows[i - 1]["host_launched"] - rows[i - 1]["host_launch"], 2)}
        for i, row in enumerate(rows) if i
    ]  # fmt: skip
    return {
        "seconds": total,
        "gpu_busy_ms": round(sum(r["gpu_end"] - r["gpu_start"] for r in rows), 1),
        "idle_before_first_ms": rows[0]["gpu_start"] if rows else None,
        "idle_between_ms": round(sum(g["idle_ms"] for g in gaps), 1),
        "host_launching_ms": round(sum(r["host_launched"] - r["host_launch"] for r in rows), 1),
        # after the GPU's last batch: features gathered to the host, then written (a file's
        # rows are written block by block, the IDs and header at the end)
        "gather_ms": round(ms(written[-4]) - rows[-1]["gpu_end"], 1) if rows else None,
        "write_ms": round(
            1000 * sum(b - a for a, b in zip(written[::2], written[1::2], strict=True)), 1
        ),
        "largest_gaps": sorted(gaps, key=lambda g: -g["idle_ms"])[:5],
        "tokenized": [{"frames": n, "from": ms(a), "to": ms(b)} for a, b, n in tokenized],
        "batches": rows,
    }


def fresh_process(model_dir: Path, nucleotide: Path, outdir: Path, device: str = "cuda") -> dict:
    """`virnucpro embed-dna --compile` in a new process, as a pipeline task runs it: the pass
    is the process's first (no warm tokenizer pool, page-locked buffer or memory cache).
    tokens_per_s counts the file's read + embed seconds (its info), the load and write not."""
    output = outdir / nucleotide.name.replace(".nucleotide.fa", ".dnabert.safetensors")
    wall, info = bench.cli_embed("embed-dna", str(nucleotide), "--dnabert-model", str(model_dir),
                                 "--device", device, "--compile", "--outdir", str(outdir),
                                 output=output)  # fmt: skip
    return {"tokens_per_s": info["tokens"] / info["seconds"], "seconds": info["seconds"],
            "tokens": info["tokens"], "load_s": info["load_seconds"], "wall_s": wall}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnucpro-dnabert"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    fasta = work / "input.fa"
    bench.write_input(fasta, 4000, seed=1)
    bench.write_dnabert_s(work / "dnabert-s", fasta)
    bench.prepare(fasta, 500, work / "c500", "input")
    nucleotide = work / "c500" / "input.nucleotide.fa"
    model = bench.load_embedder("dnabert", work / "dnabert-s", "cuda:0", "bf16", compile=True)
    sequences = [r.sequence for r in bench.read_fasta(nucleotide)]
    results: dict = {"gpu": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d")}

    seconds = [timed(model.tokenize, sequences) for _ in range(2)]
    tokens = model.tokenize(sequences)
    count = sum(map(len, tokens))
    results["tokens"] = count
    results["tokenize_s"] = min(seconds)
    print(f"{len(tokens):,} frames, {count:,} tokens; tokenizing {min(seconds):.3f} s")

    quiet = StageProgress("DNABERT-S", 0, "frames", enabled=False)
    for budget in (65536, 131072, 218453):
        for one_length in (False, True):
            # the second of two passes: each new batch shape costs the compiled model once
            def model_alone(budget: int = budget, one_length: bool = one_length) -> None:
                queue_tokens(tokens, model.run, model.dim, budget, quiet, one_length).gather()

            runs = [timed(model_alone) for _ in range(2)]
            key = f"model_{budget}_{'one_length' if one_length else 'packed'}"
            results[key] = {"seconds": runs[1], "tokens_per_s": count / runs[1]}
            print(f"model alone, {budget:,} tokens/batch, "
                  f"{'one-length' if one_length else 'packed'} batches: {runs[1]:.3f} s = "
                  f"{count / runs[1]:,.0f} tokens/s")  # fmt: skip

    bench.product_embed(model, nucleotide, work / "c500", None)  # its first pass
    product = bench.product_embed(model, nucleotide, work / "c500", None)
    product.pop("path")
    results["product"] = product
    print(f"product path (embed_file, default budget {product['batch_tokens']:,}): "
          f"{product['seconds']:.3f} s = {product['tokens_per_s']:,.0f} tokens/s (first chunk "
          f"{product['read_s']:.3f} s, the rest read and tokenized beside the model "
          f"{product['embed_s']:.3f} s)")  # fmt: skip

    # a shard of split's default size: what one embed-dna task of the pipeline gets
    shard = work / "shard.fa"
    bench.write_input(shard, round(DEFAULT_SHARD_SIZE / 1650), seed=2)  # lengths average 1,650
    bench.prepare(shard, 500, work / "shard500", "shard")
    shard_nucleotide = work / "shard500" / "shard.nucleotide.fa"
    runs = []
    for _ in range(3):
        run = bench.product_embed(model, shard_nucleotide, work / "shard500", None)
        run.pop("path")
        runs.append(run)
    results["product_default_shard"] = runs
    speeds = sorted(run["tokens_per_s"] for run in runs)
    shown = ", ".join(f"{x:,.0f}" for x in speeds)
    print(f"product path on a default-size shard ({DEFAULT_SHARD_SIZE:,} bp: "
          f"{runs[0]['sequences']:,} frames, {runs[0]['tokens']:,} tokens), 3 runs: "
          f"{shown} tokens/s (median {speeds[1]:,.0f})")  # fmt: skip

    # the same product passes taken apart in time, twice each
    results["timelines"] = []
    for path in (nucleotide, nucleotide, shard_nucleotide, shard_nucleotide):
        line = product_timeline(model, path, path.parent)
        line["input"] = path.name
        results["timelines"].append(line)
        late = {True: " (launched after the GPU ran dry)", False: ""}
        largest = ", ".join(f"{g['idle_ms']:.0f} ms{late[g['host_launched_after_gpu_ran_dry']]}"
                            for g in line["largest_gaps"][:3])  # fmt: skip
        print(f"timeline of {path.name}: {line['seconds']:.3f} s; GPU busy "
              f"{line['gpu_busy_ms']:.0f} ms, idle before the first batch "
              f"{line['idle_before_first_ms']:.0f} ms and between "
              f"batches {line['idle_between_ms']:.0f} ms; host launching "
              f"{line['host_launching_ms']:.0f} ms; largest gaps {largest}; then gathering "
              f"{line['gather_ms']:.0f} ms, writing {line['write_ms']:.0f} ms")  # fmt: skip

    # the first pass of a fresh process, twice per input
    results["fresh_process"] = {}
    for path in (nucleotide, shard_nucleotide):
        runs = [fresh_process(work / "dnabert-s", path, work / "fresh") for _ in range(2)]
        results["fresh_process"][path.name] = runs
        print(f"fresh `virnucpro embed-dna --compile` on {path.name}: "
              + ", ".join(f"{r['tokens_per_s']:,.0f}" for r in runs)
              + " tokens/s (read + embed; load and write not counted)")  # fmt: skip
    (args.out / "dnabert_breakdown.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
