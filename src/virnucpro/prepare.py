"""Stage prepare: chunk each sequence, translate six frames, keep frames without a stop.

Reproduces the original VirNucPro scripts exactly (units.py split_fasta_chunk and
identify_seq as used by prediction.py), quirks included; docs/method.md explains each rule.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from virnucpro.fasta import Record, read_fasta
from virnucpro.fileio import atomic_writer
from virnucpro.paths import CHUNK_SIZE_NOTE, SEQUENCES_HEADER, fasta_stem, prepared_files

_BASES = "TCAG"
_AMINO_ACIDS = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
# Standard genetic code; a codon with any other letter is absent and so dropped.
CODON_TABLE = {
    "".join(codon): aa
    for codon, aa in zip(itertools.product(_BASES, repeat=3), _AMINO_ACIDS, strict=True)
}
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


@dataclass(frozen=True)
class Frame:
    id: str
    nucleotide: str
    protein: str


@dataclass(frozen=True)
class PreparedSequence:
    id: str
    length: int
    chunks: int
    chunks_with_frames: int
    frames: list[Frame]


def chunk_bounds(length: int, chunk_size: int) -> list[tuple[int, int]]:
    """Start/end of each chunk, as the original split_fasta_chunk computes them.

    The overlap R is spread as floor(R/n) per gap (divided by n, not n-1) with the
    remainder on the first gaps, so the last chunk may end short of chunk_size.
    """
    n = math.ceil(length / chunk_size)
    surplus = n * chunk_size - length
    low = surplus // n
    need = surplus - low * (n - 1)
    gaps = [low + 1] * need + [low] * max(0, n - 1 - need) + [0]
    bounds = []
    start = 0
    for k in range(n):
        if k:
            start = k * chunk_size - sum(gaps[:k])
        bounds.append((start, min(start + chunk_size, length)))
    return bounds


def translate(seq: str, frame: int) -> str:
    """Translate from offset ``frame``; codons with non-ACGT letters are dropped."""
    return "".join(CODON_TABLE.get(seq[i : i + 3], "") for i in range(frame, len(seq) - 2, 3))


def reverse_complement(seq: str) -> str:
    """A<->T, C<->G only; other letters stay as they are (as in the original)."""
    return seq.translate(_COMPLEMENT)[::-1]


def kept_frames(chunk_id: str, chunk: str) -> list[Frame]:
    """The frames F1..F3, R1..R3 of an upper-case chunk whose protein has no stop."""
    frames = []
    for strand, seq in (("F", chunk), ("R", reverse_complement(chunk))):
        for f in (1, 2, 3):
            protein = translate(seq, f - 1)
            if protein and "*" not in protein:
                # One base more than the codons: the original's slice [f-1 : f + 3*len].
                nucleotide = seq[f - 1 : f + 3 * len(protein)]
                frames.append(Frame(f"{chunk_id}{strand}{f}", nucleotide, protein))
    return frames


def prepare_record(record: Record, chunk_size: int) -> PreparedSequence:
    """Chunk and translate one sequence."""
    sequence = record.sequence.upper()
    frames: list[Frame] = []
    bounds = chunk_bounds(len(sequence), chunk_size)
    with_frames = 0
    for k, (start, end) in enumerate(bounds, start=1):
        chunk_frames = kept_frames(f"{record.id}_chunk_{k}", sequence[start:end])
        with_frames += bool(chunk_frames)
        frames.extend(chunk_frames)
    return PreparedSequence(record.id, len(sequence), len(bounds), with_frames, frames)


def prepare_records(records: Iterable[Record], chunk_size: int) -> Iterator[PreparedSequence]:
    for record in records:
        yield prepare_record(record, chunk_size)


@dataclass
class PrepareCounts:
    sequences: int = 0
    chunks: int = 0
    frames_kept: int = 0


def write_prepared(
    prepared: Iterable[PreparedSequence], outdir: Path, prefix: str, chunk_size: int | None = None
) -> PrepareCounts:
    """Write the kept frames (one line per sequence) and the per-sequence table. With
    ``chunk_size``, each frame's header says it after the ID (`>ID chunk_size=500`): the
    embed stages record it in the feature files, and classify checks it."""
    note = " " + CHUNK_SIZE_NOTE.format(chunk_size=chunk_size) if chunk_size else ""
    outdir.mkdir(parents=True, exist_ok=True)
    nuc_path, prot_path, table_path = prepared_files(outdir, prefix)
    counts = PrepareCounts()
    with (
        atomic_writer(nuc_path) as nuc,
        atomic_writer(prot_path) as prot,
        atomic_writer(table_path) as table,
    ):
        table.write(SEQUENCES_HEADER)
        for seq in prepared:
            counts.sequences += 1
            counts.chunks += seq.chunks
            counts.frames_kept += len(seq.frames)
            table.write(
                f"{seq.id}\t{seq.length}\t{seq.chunks}\t{seq.chunks_with_frames}\t"
                f"{len(seq.frames)}\n"
            )
            for frame in seq.frames:
                nuc.write(f">{frame.id}{note}\n{frame.nucleotide}\n")
                prot.write(f">{frame.id}{note}\n{frame.protein}\n")
    return counts


def prepare(
    input_path: Path, chunk_size: int, outdir: Path, prefix: str | None = None
) -> PrepareCounts:
    """Stage entry: FASTA in, kept frames and the per-sequence table out."""
    prefix = prefix or fasta_stem(input_path)
    records = read_fasta(Path(input_path))
    prepared = prepare_records(records, chunk_size)
    return write_prepared(prepared, Path(outdir), prefix, chunk_size)
