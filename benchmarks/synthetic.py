"""Synthetic nucleotide FASTA for examples and benchmarks: coding-rich sequences.

Most sequences are open reading frames (random sense codons, on either strand), so prepare
keeps frames as it does on real coding-dense viral/bacterial contigs; some are plain random
sequence, where stops occur everywhere and most chunks keep nothing.

    python benchmarks/synthetic.py --sequences 10000 --length 500 --seed 1 > input.fa
    python benchmarks/synthetic.py --sequences 40 --min-length 150 --max-length 1800 > mixed.fa

metagenome() makes a large assembly-like input fast (numpy): contigs of 1-500 kbp, many short
and few long, 20% random (benchmarks/memory.py writes ~1 Gbp of it).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator

SENSE_CODONS = [
    a + b + c
    for a in "ACGT"
    for b in "ACGT"
    for c in "ACGT"
    if a + b + c not in ("TAA", "TAG", "TGA")
]
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


def synthetic_sequence(rng: random.Random, length: int, coding: bool) -> str:
    if not coding:
        return "".join(rng.choice("ACGT") for _ in range(length))
    seq = "".join(rng.choice(SENSE_CODONS) for _ in range(length // 3 + 1))[:length]
    return seq.translate(_COMPLEMENT)[::-1] if rng.random() < 0.5 else seq


def metagenome(
    total_bp: int,
    seed: int = 1,
    min_length: int = 1_000,
    max_length: int = 500_000,
    random_fraction: float = 0.2,
    alpha: float = 0.79,
) -> Iterator[tuple[str, bytes]]:
    """(name, sequence) of contigs until ``total_bp`` bases: lengths from a Pareto law
    (exponent ``alpha``) cut to min..max (at the defaults ~98,000 contigs per Gbp, median
    2.3 kbp), a ``random_fraction`` of them plain random, the others coding on either strand."""
    import numpy as np

    rng = np.random.default_rng(seed)
    codons = np.frombuffer("".join(SENSE_CODONS).encode(), dtype=np.uint8).reshape(-1, 3)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    complement = bytes.maketrans(b"ACGT", b"TGCA")
    ratio = 1 - (min_length / max_length) ** alpha
    made, index = 0, 0
    while made < total_bp:
        index += 1
        length = int(min_length * (1 - rng.random() * ratio) ** (-1 / alpha))
        length = max(min_length, min(max_length, length))
        if rng.random() < random_fraction:
            seq = bases[rng.integers(0, 4, length)].tobytes()
        else:
            seq = codons[rng.integers(0, len(codons), length // 3 + 1)].ravel()[:length].tobytes()
            if rng.random() < 0.5:
                seq = seq.translate(complement)[::-1]
        made += length
        yield f"contig_{index}", seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=100)
    parser.add_argument("--length", type=int, help="fixed length (else min..max)")
    parser.add_argument("--min-length", type=int, default=150)
    parser.add_argument("--max-length", type=int, default=3000)
    parser.add_argument("--coding-fraction", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--width", type=int, default=70, help="line width of the FASTA")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = sys.stdout
    for i in range(1, args.sequences + 1):
        length = args.length or rng.randint(args.min_length, args.max_length)
        seq = synthetic_sequence(rng, length, rng.random() < args.coding_fraction)
        out.write(f">synthetic_{i} length={length}\n")
        for start in range(0, length, args.width):
            out.write(seq[start : start + args.width] + "\n")


if __name__ == "__main__":
    main()
