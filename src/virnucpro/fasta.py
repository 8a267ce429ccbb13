"""Streaming FASTA reading with the input checks users need."""

from __future__ import annotations

import codecs
import gzip
import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from virnucpro.errors import VirnucproError

# IUPAC nucleotide codes plus gaps; anything else (E, F, I, L, P, Q, ...) is not DNA/RNA.
_NON_NUCLEOTIDE = re.compile(r"[^ACGTUNRYSWKMBDHV\-.]")


@dataclass(frozen=True)
class Record:
    id: str
    sequence: str  # as written, whitespace removed


def _open_text(path: Path) -> io.TextIOWrapper:
    """Text lines of a plain or gzipped file; a UTF-8 byte-order mark (as some Windows
    editors write) is skipped, other non-ASCII bytes become U+FFFD and fail the checks."""
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
        stream = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    except IsADirectoryError:
        raise VirnucproError(f"{path}: is a directory, not a FASTA file") from None
    except FileNotFoundError:
        raise VirnucproError(f"{path}: no such file") from None
    except OSError as e:
        raise VirnucproError(f"{path}: cannot read ({e.strerror})") from None
    encoding = "utf-8-sig" if stream.peek(3)[:3] == codecs.BOM_UTF8 else "ascii"
    return io.TextIOWrapper(stream, encoding=encoding, errors="replace", newline=None)


def read_fasta(path: Path, nucleotide: bool = True, allow_empty: bool = False) -> Iterator[Record]:
    """Yield the records of a FASTA file (plain or gzip) one at a time.

    Checks as it goes: empty file, not FASTA, empty record or ID, duplicate IDs and,
    with ``nucleotide``, characters that are not IUPAC nucleotide codes. ``allow_empty``
    accepts a zero-byte file (a prepared shard in which no frame was kept). Every problem
    raises VirnucproError naming the file. Memory holds one record plus the set of IDs.
    """
    path = Path(path)
    seen: dict[str, int] = {}
    header: str | None = None
    parts: list[str] = []
    number = 0

    def finish() -> Record:
        record_id = header.split(maxsplit=1)[0] if header.strip() else ""
        if not record_id:
            raise VirnucproError(f"{path}: record {number} has an empty header (no ID)")
        if record_id in seen:
            raise VirnucproError(
                f"{path}: duplicate ID '{record_id}' (records {seen[record_id]} and {number})"
            )
        seen[record_id] = number
        sequence = "".join(parts)
        if not sequence:
            raise VirnucproError(f"{path}: record '{record_id}' has no sequence")
        if nucleotide:
            bad = _NON_NUCLEOTIDE.search(sequence.upper())
            if bad:
                raise VirnucproError(
                    f"{path}: record '{record_id}' has '{bad.group()}', which is not a "
                    "nucleotide code (protein or other non-nucleotide sequence?)"
                )
        return Record(record_id, sequence)

    try:
        with _open_text(path) as handle:
            for line_number, line in enumerate(handle, start=1):
                if line.startswith(">"):
                    if header is not None:
                        yield finish()
                    header, parts = line[1:].rstrip("\r\n"), []
                    number += 1
                elif header is None:
                    if line.strip():
                        raise VirnucproError(
                            f"{path}: not FASTA (line {line_number} comes before any '>' header)"
                        )
                else:
                    parts.append("".join(line.split()))  # whitespace removed; much faster than re
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise VirnucproError(f"{path}: cannot read ({e})") from None
    if header is None:
        if allow_empty and path.stat().st_size == 0:
            return
        raise VirnucproError(f"{path}: empty file (no FASTA records)")
    yield finish()


def count_records(path: Path) -> int | None:
    """How many records a plain FASTA file holds (lines starting with '>'), by a fast byte
    scan, for progress totals; None for a gzipped or unreadable file."""
    count, previous = 0, b"\n"
    try:
        with open(path, "rb") as handle:
            if handle.read(2) == b"\x1f\x8b":
                return None
            handle.seek(0)
            while block := handle.read(1 << 24):
                count += block.count(b"\n>") + (previous == b"\n" and block[:1] == b">")
                previous = block[-1:]
    except OSError:
        return None
    return count
