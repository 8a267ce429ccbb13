"""Memory benchmark: wall time and peak RSS of split, prepare, summarize and predict on a large
synthetic metagenome (~1 Gbp by default), each stage as its own `virnucpro` process.

- split and prepare (the whole file at once) run on the metagenome itself;
- summarize is fed shard outputs at the metagenome's real counts: the frame IDs prepare kept
  (every scored chunk of the run), cut into split's shards (its shards.tsv), with random
  softmax scores, in the formats prepare and classify write (.sequences.tsv, .scores.tsv,
  .scores.json); it runs with split's manifest, as the Nextflow pipeline runs it;
- predict (demo models, CPU) runs on the first ``--predict-sizes`` bases of the same
  metagenome, at two or more sizes, to show whether its memory grows with the input.

Peak RSS is reported twice: the largest single process (wait4's ru_maxrss, which includes
the descendants the process waited for) and the process tree's total RSS, sampled every
0.1 s from /proc (shared pages of forked workers counted in each).

    python benchmarks/memory.py --out benchmarks/results/             # ~1 Gbp, 20-40 min
    python benchmarks/memory.py --size 20e6 --predict-sizes 2e6,5e6    # a quick run
    python benchmarks/memory.py --stages summarize --work DIR --src OTHER/src   # another tree
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from synthetic import metagenome  # noqa: E402

from virnucpro.paths import SCORES_HEADER, SEQUENCES_HEADER  # noqa: E402

STAGES = ("split", "prepare", "summarize", "predict")
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1024 * 1024


def write_fasta(path: Path, total_bp: int, seed: int, width: int = 80) -> dict:
    contigs = bases = 0
    with open(path, "wb") as out:
        for name, seq in metagenome(total_bp, seed):
            contigs, bases = contigs + 1, bases + len(seq)
            out.write(f">{name} length={len(seq)}\n".encode())
            out.write(b"\n".join(seq[i : i + width] for i in range(0, len(seq), width)) + b"\n")
    return {"contigs": contigs, "bp": bases}


def tree_rss(root: int) -> int:
    """Total RSS (bytes) of ``root`` and all its descendants, from /proc."""
    parent, rss = {}, {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry.name)
            parent[pid], rss[pid] = int(fields[1]), int(fields[21]) * PAGE
    total, stack = 0, [root]
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run(args: list, env: dict | None = None, log: Path | None = None) -> dict:
    """One command: wall seconds, max RSS of its largest process, sampled peak of its tree."""
    started = time.perf_counter()
    with open(log or os.devnull, "w") as err:
        process = subprocess.Popen(list(map(str, args)), env=env, stderr=err,
                                   stdout=subprocess.DEVNULL)  # fmt: skip
        peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], tree_rss(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        detail = log.read_text()[-2000:] if log else ""
        raise SystemExit(f"failed ({status}): {' '.join(map(str, args))}\n{detail}")
    return {
        "wall_s": round(seconds, 1),
        "max_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "tree_rss_mib": round(peak[0] / MiB, 1),
    }


def shard_outputs(prepared: Path, manifest: Path, outdir: Path, seed: int = 7) -> dict:
    """Every shard's .sequences.tsv/.scores.tsv/.scores.json as classify would leave them for
    the frames prepare kept (whole file) and the shards split made; random softmax scores."""
    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = (line[1:].split()[0] for line in open(prepared / "all.protein.faa")
              if line.startswith(">"))  # fmt: skip
    table = open(prepared / "all.sequences.tsv")
    assert next(table) == SEQUENCES_HEADER
    shards: dict[str, list[str]] = {}
    with open(manifest) as handle:
        next(handle)
        for line in handle:
            shard, sequence_id, _ = line.rstrip("\n").split("\t")
            shards.setdefault(shard.removesuffix(".fa"), []).append(sequence_id)
    counts = {"shards": len(shards), "sequences": 0, "chunks_scored": 0, "frames": 0}
    version = subprocess.run(
        [sys.executable, "-c", "import virnucpro; print(virnucpro.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    for prefix, ids in shards.items():
        rows, ids_out = [], []
        for sequence_id in ids:
            row = next(table)
            assert row.split("\t", 1)[0] == sequence_id, (row, sequence_id)
            rows.append(row)
            fields = row.rstrip("\n").split("\t")
            ids_out.extend(next(frames) for _ in range(int(fields[4])))
            counts["chunks_scored"] += int(fields[3])
        counts["sequences"] += len(ids)
        counts["frames"] += len(ids_out)
        virus = rng.random(len(ids_out), dtype=np.float32)
        others = np.float32(1) - virus
        with open(outdir / f"{prefix}.sequences.tsv", "w") as out:
            out.write(SEQUENCES_HEADER)
            out.writelines(rows)
        with open(outdir / f"{prefix}.scores.tsv", "w") as out:
            out.write(SCORES_HEADER)
            for frame_id, s1, s2 in zip(ids_out, others, virus, strict=True):
                label = "virus" if s2 > s1 else "others"
                out.write(f"{frame_id}\t{label}\t{s1}\t{s2}\n")
        stage = {"model": "/models/MODEL", "model_sha256": "0" * 64, "device": "cpu",
                 "precision": "fp32", "compiled": False, "frames": len(ids_out),
                 "seconds": 1.0}  # fmt: skip
        record = {
            "virnucpro_version": version,
            "shard": prefix,
            "chunk_size": 500,
            "frames_scored": len(ids_out),
            "classifier": {"path": "/models/500_model.safetensors", "sha256": "0" * 64},
            "stages": {
                "embed-dna": {
                    "stage": "embed-dna",
                    **stage,
                    "model": "/models/dnabert-s",
                },  # fmt: skip
                "embed-protein": {
                    "stage": "embed-protein",
                    **stage,
                    "model": "/models/esm2.pt",
                },  # fmt: skip
                "classify": {"seconds": 0.5},
            },
        }
        with open(outdir / f"{prefix}.scores.json", "w") as out:
            json.dump(record, out, indent=2)
            out.write("\n")
    assert next(frames, None) is None and next(table, None) is None
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1e9, help="bases of the metagenome")
    parser.add_argument("--input", type=Path, help="use this FASTA instead of generating one")
    parser.add_argument("--predict-sizes", default="10e6,40e6",
                        help="bases of the metagenome's start given to predict")  # fmt: skip
    parser.add_argument("--shard-size", type=int, default=20_000_000, help="split's")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--work", type=Path, help="work directory (kept; default: a temporary "
                        "one, removed); files already there are reused")  # fmt: skip
    parser.add_argument("--src", type=Path, help="run virnucpro from this source tree")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the JSON record here (a directory)")
    parser.add_argument("--label", default="memory", help="name of the JSON record")
    args = parser.parse_args()
    stages = args.stages.split(",")
    if unknown := set(stages) - set(STAGES):
        parser.error(f"unknown stages {sorted(unknown)}")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join([str(args.src.resolve()), env.get("PYTHONPATH", "")])
    virnucpro = [sys.executable, "-m", "virnucpro"]
    work = args.work or Path(tempfile.mkdtemp(prefix="virnucpro-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    record: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
        },
        "commit": commit,
        "src": str(args.src) if args.src else None,
        "stages": {},
    }
    rows = []

    def measure(name: str, command: list, **info) -> dict:
        print(f"{time.strftime('%H:%M:%S')} {name} ...", flush=True)
        log = work / (re.sub(r"\W+", "_", name) + ".log")
        result = {**run(command, env, log), **info}
        print(f"{time.strftime('%H:%M:%S')} {name}: {result}", flush=True)
        record["stages"][name] = result
        rows.append((name, result))
        return result

    try:
        fasta = args.input or work / "metagenome.fa"
        if args.input is None and not fasta.exists():
            started = time.perf_counter()
            record["input"] = write_fasta(fasta, int(args.size), args.seed)
            record["input"]["generate_s"] = round(time.perf_counter() - started, 1)
        else:
            record["input"] = fasta_counts(fasta)
        record["input"]["path"] = str(fasta)
        print(f"input: {record['input']}", flush=True)
        shards, prepared = work / "shards", work / "prepare"
        if "split" in stages or ("summarize" in stages and not (shards / "shards.tsv").exists()):
            shutil.rmtree(shards, ignore_errors=True)
            measure("split", [*virnucpro, "-q", "split", fasta, "--shard-size", args.shard_size,
                              "--outdir", shards])  # fmt: skip
            record["stages"]["split"]["shards"] = len(list(shards.glob("shard_*.fa")))
        if "prepare" in stages or (
            "summarize" in stages and not (prepared / "all.sequences.tsv").exists()
        ):
            shutil.rmtree(prepared, ignore_errors=True)
            measure("prepare", [*virnucpro, "-q", "prepare", fasta, "--outdir", prepared,
                                "--prefix", "all"])  # fmt: skip
            record["stages"]["prepare"].update(frames_and_chunks(prepared))
        if "summarize" in stages:
            scores = work / "shard_scores"
            if not (scores / "counts.json").exists():
                shutil.rmtree(scores, ignore_errors=True)
                started = time.perf_counter()
                counts = shard_outputs(prepared, shards / "shards.tsv", scores)
                counts["generate_s"] = round(time.perf_counter() - started, 1)
                (scores / "counts.json").write_text(json.dumps(counts))
            counts = json.loads((scores / "counts.json").read_text())
            files = sorted(p for p in scores.iterdir() if p.name != "counts.json")
            out = work / "summary"
            shutil.rmtree(out, ignore_errors=True)
            measure("summarize", [*virnucpro, "summarize", *files, "--manifest",
                                  shards / "shards.tsv", "--outdir", out], **counts)  # fmt: skip
            # The same on the first quarter of the shards: memory should not depend on it.
            prefixes = sorted({p.name.split(".")[0] for p in files})[: max(1, len(files) // 12)]
            part = [p for p in files if p.name.split(".")[0] in prefixes]
            manifest = work / "shards_quarter.tsv"
            with open(shards / "shards.tsv") as full, open(manifest, "w") as cut:
                cut.writelines(line for i, line in enumerate(full)
                               if i == 0 or line.split(".fa\t", 1)[0] in prefixes)  # fmt: skip
            chunks = sum(int(line.split("\t")[3]) for p in part if p.name.endswith(".sequences.tsv")
                         for line in list(open(p))[1:])  # fmt: skip
            shutil.rmtree(out, ignore_errors=True)
            measure("summarize, first 1/4 of the shards", [*virnucpro, "summarize", *part,
                    "--manifest", manifest, "--outdir", out], shards=len(prefixes),
                    chunks_scored=chunks)  # fmt: skip
        if "predict" in stages:
            models = work / "models"
            if not (models / "esm2.pt").exists():
                subprocess.run([*virnucpro, "-q", "models", "demo", models], env=env, check=True)
            for size in (int(float(s)) for s in args.predict_sizes.split(",")):
                part = work / f"predict_{size}.fa"
                info = write_fasta(part, size, args.seed)
                out = work / f"predict_{size}"
                shutil.rmtree(out, ignore_errors=True)
                measure(f"predict {size / 1e6:g} Mbp", [*virnucpro, "predict", part, "--models",
                        models, "--device", "cpu", "--outdir", out], **info)  # fmt: skip
                run_json = json.loads((out / "run.json").read_text())
                record["stages"][f"predict {size / 1e6:g} Mbp"]["frames"] = run_json["counts"].get(
                    "frames_scored"
                )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{record['input']}; {record['machine']}; {record['date']}; {commit}\n")
    print("| stage | wall (s) | peak RSS, largest process (MiB) | peak RSS, process tree "
          "(MiB, sampled) | counts |\n|---|---|---|---|---|")  # fmt: skip
    for name, r in rows:
        extra = {k: v for k, v in r.items() if k not in ("wall_s", "max_rss_mib", "tree_rss_mib")}
        print(f"| {name} | {r['wall_s']} | {r['max_rss_mib']:.0f} | {r['tree_rss_mib']:.0f} | "
              f"{extra} |")  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"cpu_{record['date']}_{args.label}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nwritten: {path}")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def fasta_counts(path: Path) -> dict:
    contigs = bases = 0
    with open(path, "rb") as handle:
        for line in handle:
            if line.startswith(b">"):
                contigs += 1
            else:
                bases += len(line.strip())
    return {"contigs": contigs, "bp": bases}


def frames_and_chunks(prepared: Path) -> dict:
    chunks = frames = 0
    with open(prepared / "all.sequences.tsv") as handle:
        next(handle)
        for line in handle:
            fields = line.split("\t")
            chunks += int(fields[2])
            frames += int(fields[4])
    return {"chunks": chunks, "frames": frames}


if __name__ == "__main__":
    main()
