"""Does `virnucpro predict` on a GPU give the same features every run? Runs predict twice per
lane count on the GPU benchmark's input and random real-size models, keeps the work
directories, and compares every shard's feature file between the two runs.

    python benchmarks/predict_determinism.py --out results/ [--lanes 1 2] [--precision bf16]

Prints, per lane count, each feature tensor that differs and its largest difference; writes
predict_determinism.json. Needs a CUDA GPU (the lanes overlap only there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_benchmark import write_models_and_input  # noqa: E402

from virnucpro.models.files import resolve_models  # noqa: E402
from virnucpro.predict import predict  # noqa: E402


def features(outdir: Path) -> dict[str, dict]:
    return {
        str(path.relative_to(outdir)): load_file(path)
        for path in sorted(outdir.glob("**/*.safetensors"))
    }


def differences(first: Path, second: Path) -> dict[str, float]:
    """Per feature tensor that differs between the two runs: its largest difference."""
    found = {}
    theirs = features(second)
    for name, tensors in features(first).items():
        for key, value in tensors.items():
            other = theirs[name][key]
            if value.is_floating_point():
                diff = (value.float() - other.float()).abs().max().item()
            else:
                diff = float(not torch.equal(value, other))
            if diff:
                found[f"{name}:{key}"] = diff
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/virnucpro-determinism"))
    parser.add_argument("--sequences", type=int, default=600)
    parser.add_argument("--shard-size", type=int, default=300_000)
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fasta, _ = write_models_and_input(args.workdir, args.sequences)
    models = resolve_models(args.workdir / "models")
    results = {"precision": args.precision, "sequences": args.sequences, "lanes": {}}
    for lanes in args.lanes:
        runs = []
        for run in ("a", "b"):
            outdir = args.workdir / f"lanes{lanes}{run}"
            predict(fasta, outdir, models, precision=args.precision, shard_size=args.shard_size,
                    lanes=lanes, keep_work=True)  # fmt: skip
            runs.append(outdir)
        found = differences(*runs)
        files = len(list(runs[0].glob("**/*.safetensors")))
        results["lanes"][lanes] = {"files": files, "differing": found}
        print(f"lanes {lanes}: {len(found)} feature tensors differ {found}", flush=True)
    (args.out / "predict_determinism.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
