"""Stage split: cut a FASTA into shards of about ``shard_size`` bases each.

Shards are contiguous runs of input records in input order (records are never cut), so
results concatenated in shard order are in input order, and names are deterministic:
shard_00001.fa, shard_00002.fa, ... A manifest, shards.tsv (shard, sequence_id, length), lists
every sequence of every shard: summarize reads it to know which sequences a run must account
for, so a shard that never finished cannot silently drop its sequences.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from virnucpro.errors import VirnucproError
from virnucpro.fasta import Record, read_fasta
from virnucpro.paths import MANIFEST, MANIFEST_HEADER, shard_name

DEFAULT_SHARD_SIZE = 20_000_000  # docs/usage.md: GPU task start-up vs. work


def group_records(records: Iterable[Record], shard_size: int) -> Iterator[list[Record]]:
    """Greedy contiguous groups: a group closes once it holds >= shard_size bases."""
    group: list[Record] = []
    bases = 0
    for record in records:
        group.append(record)
        bases += len(record.sequence)
        if bases >= shard_size:
            yield group
            group, bases = [], 0
    if group:
        yield group


def split(input_path: Path, shard_size: int, outdir: Path) -> list[Path]:
    """Stage entry: write the shards and their manifest; on any input error, write none."""
    if shard_size < 1:
        raise VirnucproError(f"--shard-size must be at least 1 base (got {shard_size})")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".split-", dir=outdir))
    try:
        names = []
        with open(staging / MANIFEST, "w") as manifest:
            manifest.write(MANIFEST_HEADER)
            for index, group in enumerate(group_records(read_fasta(input_path), shard_size), 1):
                name = shard_name(index)
                with open(staging / name, "w") as out:
                    for record in group:
                        out.write(f">{record.id}\n{record.sequence}\n")
                        manifest.write(f"{name}\t{record.id}\t{len(record.sequence)}\n")
                names.append(name)
        for name in names:
            (staging / name).replace(outdir / name)
        (staging / MANIFEST).replace(outdir / MANIFEST)
        return [outdir / name for name in names]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
