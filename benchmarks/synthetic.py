"""Synthetic nucleotide FASTA for examples and benchmarks: coding-rich sequences.

Most sequences are open reading frames (random sense codons, on either strand), so prepare
keeps frames as it does on real coding-dense viral/bacterial contigs; some are plain random
sequence, where stops occur everywhere and most chunks keep nothing.

    python benchmarks/synthetic.py --sequences 10000 --length 500 --seed 1 > input.fa
    python benchmarks/synthetic.py --sequences 40 --min-length 150 --max-length 1800 > mixed.fa
"""

from __future__ import annotations

import argparse
import random
import sys

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
